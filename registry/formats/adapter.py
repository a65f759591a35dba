"""Static inspection of an adapter's file set: paths, formats, limits, config, tensor manifest."""

from __future__ import annotations

import os
import re
import stat
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from registry.errors import (
    InvalidAdapter,
    InvalidAdapterConfig,
    InvalidPath,
    TooLarge,
    UnsafeFormat,
)
from registry.formats.peft import AdapterConfig, check_tensors, parse_adapter_config
from registry.formats.safetensors import (
    ParsedHeader,
    ReadAt,
    TensorInfo,
    check_header_size,
    read_header,
)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
SAFETENSORS_SUFFIX = ".safetensors"
MAX_PATH_CHARS = 1024
# The usual per-name limit of filesystems (ext4, XFS, APFS, NTFS in UTF-16 units): a longer
# segment is accepted by a database but cannot be written by a pull.
MAX_SEGMENT_BYTES = 255

# Directories list_local_files leaves out: VCS metadata and the download cache that
# `huggingface_hub` writes into a local_dir; neither is part of an adapter.
SKIPPED_DIRS: tuple[str, ...] = (".git", ".cache/huggingface")
# The manifest `pull` writes at the top of its directory (registry/clientside/manifest.py):
# what the registry says about the files, never one of them, so a pulled directory pushed
# again has the same files.
PULL_MANIFEST = ".adapter-registry.json"

_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Bidirectional formatting characters (embeddings and overrides U+202A-U+202E, isolates
# U+2066-U+2069, the marks U+200E/U+200F and U+061C): they make a listed name read differently
# from what is written ("model\u202egnp.exe" shows as "modelexe.png").
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def normalize_path(path: str) -> str:
    """Validate a relative POSIX path inside an adapter; it is returned unchanged, never rewritten.

    Args:
        path: The path as given by a client or the filesystem.

    Returns:
        `path` itself.

    Raises:
        InvalidPath: Empty, over 1024 characters, a segment over 255 bytes (UTF-8), absolute
            (including "C:" drive forms), with a backslash, a C0/C1 control character or a
            bidirectional formatting character, or with an empty, "." or ".." segment.
    """
    if not path:
        raise InvalidPath("empty file path")
    if len(path) > MAX_PATH_CHARS:
        raise InvalidPath(f"file path is {len(path)} characters; the limit is {MAX_PATH_CHARS}")
    # repr() escapes every character matched below, so the message shows what is really there.
    if _CONTROL.search(path):
        raise InvalidPath(f"file path {path!r} contains a NUL or control character")
    if _BIDI.search(path):
        raise InvalidPath(
            f"file path {path!r} contains a bidirectional formatting character, which makes "
            "the name display differently from what it is"
        )
    if "\\" in path:
        raise InvalidPath(f"file path {path!r} contains a backslash; use '/' separators")
    if path.startswith("/") or _DRIVE.match(path):
        raise InvalidPath(f"file path {path!r} is absolute; paths must be relative")
    for segment in path.split("/"):
        if segment == "":
            raise InvalidPath(f"file path {path!r} has an empty segment")
        if segment in (".", ".."):
            raise InvalidPath(f"file path {path!r} has a {segment!r} segment")
        size = len(segment.encode("utf-8", "surrogatepass"))
        if size > MAX_SEGMENT_BYTES:
            raise InvalidPath(
                f"file path {path[:80]!r}… has a {size}-byte name; filesystems allow at most "
                f"{MAX_SEGMENT_BYTES} bytes per name"
            )
    return path


def _fold(path: str) -> str:
    # How case-insensitive filesystems (macOS APFS/HFS+, Windows NTFS) compare names: case and
    # Unicode normalization do not count. Case folding is a little broader than either ("ß"
    # folds to "ss"); refusing such a pair costs nothing, accepting a colliding one loses a file.
    return unicodedata.normalize("NFC", path).casefold()


def check_paths(paths: Iterable[str]) -> None:
    """Validate every path and the set as a whole: that it can be written to any filesystem.

    Used wherever a file set enters the registry (push, base registration, export records) and
    where one leaves it (pull, export download), so a set accepted once can always be pulled.

    Args:
        paths: Relative paths of one adapter, checkpoint or export.

    Raises:
        InvalidPath: A path fails `normalize_path`; a path is listed twice; two paths differ
            only by case or Unicode normalization; a path is also a directory of another
            ("x" and "x/y"), including when they differ only by case.
    """
    seen: dict[str, str] = {}
    for path in paths:
        normalize_path(path)
        key = _fold(path)
        other = seen.get(key)
        if other == path:
            raise InvalidPath(f"file path {path!r} is listed twice")
        if other is not None:
            raise InvalidPath(
                f"file paths {other!r} and {path!r} differ only by case or Unicode "
                "normalization; they collide on macOS and Windows"
            )
        seen[key] = path
    for key, path in seen.items():
        parts = key.split("/")
        for i in range(1, len(parts)):
            directory = seen.get("/".join(parts[:i]))
            if directory is not None:
                raise InvalidPath(
                    f"file path {directory!r} is also a directory of {path!r}; a checkout "
                    "cannot hold both"
                )


class FileAccess(Protocol):
    """Random read access to the files of one adapter, by relative path."""

    def size(self, path: str) -> int:
        """Size of the file in bytes."""
        ...

    def read(self, path: str, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset` (fewer only at end of file)."""
        ...


@runtime_checkable
class KeepsHeaders(Protocol):
    """A FileAccess that keeps parsed safetensors headers (stored blobs: content-addressed, so
    a blob's header is parsed once); inspect_adapter uses a kept one instead of reading."""

    def kept_header(self, path: str) -> ParsedHeader | None: ...

    def keep_header(self, path: str, header: ParsedHeader) -> None: ...


@dataclass(frozen=True)
class Limits:
    """Size limits enforced by inspect_adapter."""

    max_file_bytes: int
    max_files: int
    max_config_bytes: int
    max_header_bytes: int


@dataclass(frozen=True)
class AdapterInspection:
    """What the static checks learned about an adapter."""

    config: AdapterConfig
    tensors: dict[str, TensorInfo]

    def summary(self) -> dict[str, Any]:
        """The headline config fields, JSON-ready."""
        c = self.config
        target = c.target_modules
        return {
            "peft_type": c.peft_type,
            "task_type": c.task_type,
            "r": c.r,
            "lora_alpha": c.lora_alpha,
            "target_modules": list(target) if isinstance(target, list) else target,
            "base_model_name_or_path": c.base_model_name_or_path,
        }

    def manifest_json(self) -> dict[str, dict[str, Any]]:
        """Tensor name -> {"dtype", "shape"} for adapter_model.safetensors, sorted by name."""
        return {name: self.tensors[name].to_json() for name in sorted(self.tensors)}


def _pickle_message(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return (
        f"{path} is a pickle file; pickle weights are refused. Convert it: "
        f'`python -c "import torch; from safetensors.torch import save_file; '
        f"save_file(torch.load('{base}', weights_only=True), '{WEIGHTS_FILE}')\"` "
        f"or re-save with save_pretrained(..., safe_serialization=True)"
    )


def _reader(files: FileAccess, path: str) -> ReadAt:
    def read_at(offset: int, length: int) -> bytes:
        return files.read(path, offset, length)

    return read_at


def inspect_adapter(
    paths: Sequence[str], files: FileAccess, *, limits: Limits
) -> AdapterInspection:
    """Run every static check on an adapter's files, raising the first failure.

    Order: file count, each path and the set as a whole (`check_paths`), pickle suffixes, file
    sizes, config presence and size, weights presence, config parsing, safetensors headers
    (adapter_model.safetensors and any other *.safetensors), tensors against the config.

    Args:
        paths: Relative paths of every file of the adapter.
        files: Reads those files.
        limits: Size limits.

    Returns:
        The parsed config and the tensor manifest of adapter_model.safetensors.

    Raises:
        TooLarge: Too many files, a file, the config or a safetensors header is too large.
        InvalidPath: A path is not a clean relative path, or the set cannot be written to a
            filesystem (see `check_paths`).
        UnsafeFormat: A pickle-based weight file is present.
        InvalidAdapterConfig: adapter_config.json is missing or invalid.
        InvalidAdapter: adapter_model.safetensors is missing.
        InvalidSafetensors: A safetensors file is malformed.
        TensorMismatch: The tensors do not fit the config.
    """
    if len(paths) > limits.max_files:
        raise TooLarge(f"adapter has {len(paths)} files; the limit is {limits.max_files}")
    check_paths(paths)
    for path in paths:
        if path.lower().endswith(PICKLE_SUFFIXES):
            raise UnsafeFormat(_pickle_message(path))
    sizes: dict[str, int] = {}
    for path in paths:
        sizes[path] = files.size(path)
        if sizes[path] > limits.max_file_bytes:
            raise TooLarge(
                f"{path} is {sizes[path]} bytes; the per-file limit is {limits.max_file_bytes}"
            )
    if CONFIG_FILE not in sizes:
        raise InvalidAdapterConfig(f"missing {CONFIG_FILE}")
    if sizes[CONFIG_FILE] > limits.max_config_bytes:
        raise TooLarge(
            f"{CONFIG_FILE} is {sizes[CONFIG_FILE]} bytes; the limit is {limits.max_config_bytes}"
        )
    if WEIGHTS_FILE not in sizes:
        raise InvalidAdapter(
            f"missing {WEIGHTS_FILE}; PEFT adapters must ship their weights as {WEIGHTS_FILE}"
        )
    config = parse_adapter_config(files.read(CONFIG_FILE, 0, sizes[CONFIG_FILE]), name=CONFIG_FILE)
    manifests: dict[str, dict[str, TensorInfo]] = {}
    for path in [WEIGHTS_FILE, *sorted(p for p in paths if p != WEIGHTS_FILE)]:
        if path.lower().endswith(SAFETENSORS_SUFFIX):
            manifests[path] = _header(files, path, sizes[path], limits)
    tensors = manifests[WEIGHTS_FILE]
    check_tensors(config, tensors)
    return AdapterInspection(config=config, tensors=tensors)


def _header(files: FileAccess, path: str, size: int, limits: Limits) -> dict[str, TensorInfo]:
    def parse() -> ParsedHeader:
        return read_header(_reader(files, path), file_size=size,
                           max_header_bytes=limits.max_header_bytes, name=path)

    if not isinstance(files, KeepsHeaders):
        return parse().tensors
    kept = files.kept_header(path)
    if kept is not None:
        # Validated when it was kept; only the limit (configuration) may have changed since.
        check_header_size(kept.header_bytes, max_header_bytes=limits.max_header_bytes,
                          name=path)
        return kept.tensors
    header = parse()
    files.keep_header(path, header)
    return header.tensors


class LocalDirAccess:
    """FileAccess over a local directory; refuses paths that are unclean or leave the root."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def _resolve(self, path: str) -> Path:
        full = (self.root / normalize_path(path)).resolve()
        if not full.is_relative_to(self.root):
            raise InvalidPath(f"file path {path!r} resolves outside {self.root}")
        return full

    def size(self, path: str) -> int:
        """Size of the file in bytes."""
        return self._resolve(path).stat().st_size

    def read(self, path: str, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset`."""
        with self._resolve(path).open("rb") as f:
            f.seek(offset)
            return f.read(length)


def list_local_files(root: Path) -> list[str]:
    """Relative POSIX paths of the regular files under `root`, sorted.

    Symlinks to regular files inside `root` are listed under the link's path. Directories in
    SKIPPED_DIRS (relative to `root`, or `.git` at any depth) and a pull's manifest at the top
    (PULL_MANIFEST) are left out; nothing else is.

    Args:
        root: The adapter directory.

    Returns:
        Sorted relative paths.

    Raises:
        InvalidPath: A symlink points outside `root` or at a directory, or an entry is not a
            regular file (FIFO, socket, device).
    """
    root = Path(root)
    real_root = root.resolve()
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        kept = []
        for d in sorted(dirnames):
            rel = f"{rel_dir}/{d}" if rel_dir else d
            if d == ".git" or rel in SKIPPED_DIRS:
                continue
            if (Path(dirpath) / d).is_symlink():
                raise InvalidPath(f"{rel} is a symlink to a directory; directory links are refused")
            kept.append(d)
        dirnames[:] = kept
        for name in filenames:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if rel == PULL_MANIFEST:
                continue
            full = Path(dirpath) / name
            if full.is_symlink():
                if not full.exists():
                    raise InvalidPath(f"{rel} is a broken symlink")
                if not full.resolve().is_relative_to(real_root):
                    raise InvalidPath(f"{rel} is a symlink pointing outside {root}")
            mode = full.stat().st_mode
            if not stat.S_ISREG(mode):
                raise InvalidPath(f"{rel} is not a regular file")
            out.append(rel)
    return sorted(out)
