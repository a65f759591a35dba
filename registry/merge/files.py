"""Base checkpoint files for a merged export: where they come from, and their safetensors headers.

Only headers and small JSON files are read here; tensor data is read later, one shard at a
time, by the writer.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from registry.errors import InvalidBaseModel
from registry.formats.adapter import PICKLE_SUFFIXES, normalize_path
from registry.formats.safetensors import parse_header

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
CONFIG = "config.json"
MAX_HEADER_BYTES = 100 * 1024 * 1024

# Files of other weight formats are never copied: next to merged weights they would be stale.
_WEIGHT_SUFFIXES = (
    ".safetensors", ".h5", ".msgpack", ".gguf", ".onnx", ".onnx_data", *PICKLE_SUFFIXES
)
_WEIGHT_INDEXES = (".safetensors.index.json", ".bin.index.json", ".pt.index.json")
_SKIPPED_DIRS = frozenset({".git", ".cache"})


# --- where base files come from ---------------------------------------------------------------


class BaseFiles(Protocol):
    """Where base checkpoint files come from; one file is materialised locally at a time."""

    def list_files(self) -> list[str]:
        """Relative POSIX paths of every file of the checkpoint."""
        ...

    def local_path(self, path: str) -> AbstractContextManager[Path]:
        """A local copy of `path` for the duration of the context (the real file when local)."""
        ...


@runtime_checkable
class RangeReadable(Protocol):
    """Optional: BaseFiles that can read byte ranges let headers be read without a download."""

    def size(self, path: str) -> int:
        """Size of the file in bytes."""
        ...

    def read(self, path: str, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset`."""
        ...


class LocalDirFiles:
    """BaseFiles over a local HF-format directory (a plain directory or an HF cache snapshot)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InvalidBaseModel(f"base model directory {self.root} does not exist")

    def list_files(self) -> list[str]:
        """Relative paths of the regular files under the root; .git and .cache are skipped.

        Symlinked files are listed (an HF cache snapshot links every file to a blob outside
        the snapshot directory).

        Returns:
            Sorted relative POSIX paths.
        """
        out: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                full = Path(dirpath) / name
                if full.is_file():
                    out.append(name if rel_dir == "." else f"{rel_dir}/{name}")
        return sorted(out)

    def _path(self, path: str) -> Path:
        return self.root / normalize_path(path)

    @contextlib.contextmanager
    def local_path(self, path: str) -> Iterator[Path]:
        """The file itself: nothing is copied.

        Args:
            path: Relative path in the checkpoint.

        Yields:
            Its local path.
        """
        yield self._path(path)

    def size(self, path: str) -> int:
        """Size of the file in bytes."""
        return self._path(path).stat().st_size

    def read(self, path: str, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset`."""
        with self._path(path).open("rb") as f:
            f.seek(offset)
            return f.read(length)


# --- safetensors headers ----------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One base tensor: the shard it is in, its dtype and shape, and where its bytes are."""

    file: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute offset of the data in the file
    nbytes: int


def read_header(base: BaseFiles, path: str) -> dict[str, Entry]:
    """Parse one shard's header (validated like the registry validates adapters)."""

    def parse(read_at: Callable[[int, int], bytes], size: int) -> dict[str, Entry]:
        infos = parse_header(read_at, file_size=size, max_header_bytes=MAX_HEADER_BYTES, name=path)
        header_len = int.from_bytes(read_at(0, 8), "little")
        raw = json.loads(read_at(8, header_len))
        base_offset = 8 + header_len
        return {
            name: Entry(
                file=path,
                dtype=info.dtype,
                shape=info.shape,
                offset=base_offset + raw[name]["data_offsets"][0],
                nbytes=raw[name]["data_offsets"][1] - raw[name]["data_offsets"][0],
            )
            for name, info in infos.items()
        }

    if isinstance(base, RangeReadable):
        reader = base

        def read_at(offset: int, length: int) -> bytes:
            return reader.read(path, offset, length)

        return parse(read_at, reader.size(path))
    with base.local_path(path) as local, local.open("rb") as f:

        def read_local(offset: int, length: int) -> bytes:
            f.seek(offset)
            return f.read(length)

        return parse(read_local, os.fstat(f.fileno()).st_size)


def read_json(base: BaseFiles, path: str) -> Any:
    """A JSON file of the base, parsed; InvalidBaseModel if it is not JSON."""
    with base.local_path(path) as local:
        try:
            return json.loads(local.read_bytes())
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidBaseModel(f"base {path} is not valid JSON: {exc}") from None


def weight_files(
    base: BaseFiles, files: list[str]
) -> tuple[list[str], set[str], dict[str, str] | None]:
    """(shard files in order, files of any weight format (never copied), the index's map)."""
    present = set(files)
    skipped = {
        f for f in files if f.lower().endswith(_WEIGHT_SUFFIXES) or f.endswith(_WEIGHT_INDEXES)
    }
    if SAFE_INDEX in present:
        index = read_json(base, SAFE_INDEX)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise InvalidBaseModel(f"base {SAFE_INDEX} has no weight_map")
        shards = sorted({str(v) for v in weight_map.values()})
        missing = [s for s in shards if s not in present]
        if missing:
            raise InvalidBaseModel(
                f"base {SAFE_INDEX} names shards that are not in the checkpoint: "
                f"{', '.join(missing[:5])}"
            )
        return shards, skipped, {str(k): str(v) for k, v in weight_map.items()}
    if SAFE_WEIGHTS in present:
        return [SAFE_WEIGHTS], skipped, None
    pickles = sorted(f for f in files if f.lower().endswith(PICKLE_SUFFIXES))
    if pickles:
        raise InvalidBaseModel(
            f"the base checkpoint has only pickle weights ({', '.join(pickles[:3])}); pickle "
            f"files are refused. Re-save the base with save_pretrained(..., "
            f"safe_serialization=True) to get {SAFE_WEIGHTS}"
        )
    raise InvalidBaseModel(f"the base checkpoint has no {SAFE_WEIGHTS} or {SAFE_INDEX}")
