"""Static inspection of an adapter's file set: paths, formats, limits, config, tensor manifest."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
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

# Directories list_local_files leaves out: VCS metadata and the download cache that
# `huggingface_hub` writes into a local_dir; neither is part of an adapter.
SKIPPED_DIRS: tuple[str, ...] = (".git", ".cache/huggingface")

_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def normalize_path(path: str) -> str:
    """Validate a relative POSIX path inside an adapter; it is returned unchanged, never rewritten.

    Args:
        path: The path as given by a client or the filesystem.

    Returns:
        `path` itself.

    Raises:
        InvalidPath: Empty, over 1024 characters, absolute (including "C:" drive forms), with a
            backslash, NUL or control character, or with an empty, "." or ".." segment.
    """
    if not path:
        raise InvalidPath("empty file path")
    if len(path) > MAX_PATH_CHARS:
        raise InvalidPath(f"file path is {len(path)} characters; the limit is {MAX_PATH_CHARS}")
    if _CONTROL.search(path):
        raise InvalidPath(f"file path {path!r} contains a NUL or control character")
    if "\\" in path:
        raise InvalidPath(f"file path {path!r} contains a backslash; use '/' separators")
    if path.startswith("/") or _DRIVE.match(path):
        raise InvalidPath(f"file path {path!r} is absolute; paths must be relative")
    for segment in path.split("/"):
        if segment == "":
            raise InvalidPath(f"file path {path!r} has an empty segment")
        if segment in (".", ".."):
            raise InvalidPath(f"file path {path!r} has a {segment!r} segment")
    return path


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

    Order: file count, each path, duplicates, pickle suffixes, file sizes, config presence and
    size, weights presence, config parsing, safetensors headers (adapter_model.safetensors and
    any other *.safetensors), tensors against the config.

    Args:
        paths: Relative paths of every file of the adapter.
        files: Reads those files.
        limits: Size limits.

    Returns:
        The parsed config and the tensor manifest of adapter_model.safetensors.

    Raises:
        TooLarge: Too many files, a file, the config or a safetensors header is too large.
        InvalidPath: A path is not a clean relative path, or is listed twice.
        UnsafeFormat: A pickle-based weight file is present.
        InvalidAdapterConfig: adapter_config.json is missing or invalid.
        InvalidAdapter: adapter_model.safetensors is missing.
        InvalidSafetensors: A safetensors file is malformed.
        TensorMismatch: The tensors do not fit the config.
    """
    if len(paths) > limits.max_files:
        raise TooLarge(f"adapter has {len(paths)} files; the limit is {limits.max_files}")
    for path in paths:
        normalize_path(path)
    seen: set[str] = set()
    for path in paths:
        if path in seen:
            raise InvalidPath(f"file path {path!r} is listed twice")
        seen.add(path)
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
    SKIPPED_DIRS (relative to `root`, or `.git` at any depth) are left out; nothing else is.

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
