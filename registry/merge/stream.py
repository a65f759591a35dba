"""Streaming merged export: fold an adapter into a base checkpoint tensor by tensor, to a new dir.

Memory: the base is never loaded as a model. All safetensors headers are read first (they are
small), which lets the exporter check the adapter against every base shape before writing
anything, plan the output shards, and write each output shard's header before its data. Then
the base shards are opened one at a time and memory-mapped; each range is dropped from the
process's RSS (madvise DONTNEED) as soon as it is used, so the mapping never holds more than a
block. Tensors the adapter does not touch are copied in 8 MiB chunks by the kernel
(copy_file_range, as `cp` does; a plain write where the filesystem cannot), hashed from the
mapping. Touched tensors are merged in blocks of rows of about 4 MiB of float32 (the whole
tensor only for the few edits whose rows are not independent: DoRA on Conv1D or embeddings),
converted once to the output dtype into pooled buffers. One thread writes and another hashes
(sha256) while the main thread merges the next block. Peak memory is therefore a few blocks,
or the largest non-row-wise tensor, plus the adapter, whatever the model's size or shard count.

Atomicity: everything is written to a hidden temporary directory next to `out_dir`, which is
renamed into place only when complete; on any error (or an exception from `progress`) it is
removed. Files are not fsync'ed: the recorded sha256 digests let a consumer verify them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import mmap
import os
import queue
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from safetensors.torch import load_file

from registry.errors import InvalidBaseModel, InvalidInput
from registry.formats.adapter import PICKLE_SUFFIXES, normalize_path
from registry.formats.peft import AdapterConfig
from registry.formats.safetensors import parse_header
from registry.merge.deltas import MergePlan, check_mergeable, plan_merge
from registry.merge.errors import OutputExists, QuantizedBase

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
CONFIG = "config.json"
MAX_HEADER_BYTES = 100 * 1024 * 1024

CHUNK_BYTES = 8 * 1024 * 1024
BLOCK_BYTES_F32 = {"cpu": 4 * 1024 * 1024, "cuda": 64 * 1024 * 1024}
# Bytes handed to the writer thread but not yet written; one larger item is always let through.
MAX_INFLIGHT_BYTES = 64 * 1024 * 1024

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
# Safetensors dtype names <-> torch, for the floating types that can be merged or converted.
FLOAT_DTYPES: dict[str, torch.dtype] = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}
_ST_NAME = {v: k for k, v in FLOAT_DTYPES.items()}
_TORCH_NAME = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}

# Files of other weight formats are never copied: next to merged weights they would be stale.
_WEIGHT_SUFFIXES = (
    ".safetensors", ".h5", ".msgpack", ".gguf", ".onnx", ".onnx_data", *PICKLE_SUFFIXES
)
_WEIGHT_INDEXES = (".safetensors.index.json", ".bin.index.json", ".pt.index.json")
_SKIPPED_DIRS = frozenset({".git", ".cache"})
# Input embeddings a tied output head can share, when transformers cannot tell us the pair.
_INPUT_EMBEDDING_SUFFIXES = (
    "embed_tokens.weight",
    "wte.weight",
    "word_embeddings.weight",
    "embed_in.weight",
    "shared.weight",
)


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


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportedFile:
    """One file of the export: its relative path, "sha256:<hex>" digest and size in bytes."""

    path: str
    digest: str
    size: int


@dataclass(frozen=True)
class MergeResult:
    """What merge_to_dir wrote.

    `dtype` is the output dtype of the floating weights ("mixed" if they keep several dtypes);
    `merged_modules` counts base modules the adapter changed (modules_to_save included).
    """

    files: list[ExportedFile]
    merged_modules: int
    dtype: str
    shards: int


# --- safetensors headers ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    file: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute offset of the data in the file
    nbytes: int


def _header(base: BaseFiles, path: str) -> dict[str, _Entry]:
    """Parse one shard's header (validated like the registry validates adapters)."""

    def parse(read_at: Callable[[int, int], bytes], size: int) -> dict[str, _Entry]:
        infos = parse_header(read_at, file_size=size, max_header_bytes=MAX_HEADER_BYTES, name=path)
        header_len = int.from_bytes(read_at(0, 8), "little")
        raw = json.loads(read_at(8, header_len))
        base_offset = 8 + header_len
        return {
            name: _Entry(
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


def _read_json(base: BaseFiles, path: str) -> Any:
    with base.local_path(path) as local:
        try:
            return json.loads(local.read_bytes())
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidBaseModel(f"base {path} is not valid JSON: {exc}") from None


def _weight_files(
    base: BaseFiles, files: list[str]
) -> tuple[list[str], set[str], dict[str, str] | None]:
    """(shard files in order, files of any weight format (never copied), the index's map)."""
    present = set(files)
    skipped = {
        f for f in files if f.lower().endswith(_WEIGHT_SUFFIXES) or f.endswith(_WEIGHT_INDEXES)
    }
    if SAFE_INDEX in present:
        index = _read_json(base, SAFE_INDEX)
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


# --- tied embeddings --------------------------------------------------------------------------


def _tie_enabled(config: dict[str, Any]) -> bool:
    if "tie_word_embeddings" in config:
        return bool(config["tie_word_embeddings"])
    with contextlib.suppress(Exception):
        from transformers import AutoConfig

        cfg = AutoConfig.for_model(**config)
        return bool(getattr(cfg, "tie_word_embeddings", False))
    return False


def _tied_pairs(config: dict[str, Any], names: Mapping[str, _Entry]) -> dict[str, str]:
    """Tied target -> source tensor names (e.g. lm_head.weight -> model.embed_tokens.weight)."""
    pairs: dict[str, str] = {}
    with contextlib.suppress(Exception):
        # The model class knows its tied keys; building it on the meta device costs no memory.
        import transformers

        arch = (config.get("architectures") or [None])[0]
        cls = getattr(transformers, str(arch), None)
        if cls is not None:
            cfg = transformers.AutoConfig.for_model(**config)
            with torch.device("meta"):
                model = cls(cfg)
            tied = getattr(model, "all_tied_weights_keys", None) or getattr(
                model, "_tied_weights_keys", None
            )
            if isinstance(tied, dict):
                pairs = {str(k): str(v) for k, v in tied.items()}
    if not pairs:
        source = next((n for n in sorted(names) if n.endswith(_INPUT_EMBEDDING_SUFFIXES)), None)
        if source is not None:
            pairs = {"lm_head.weight": source}
    return {t: s for t, s in pairs.items() if s in names or t in names}


# --- output planning --------------------------------------------------------------------------


@dataclass
class _OutTensor:
    name: str
    source: _Entry
    out_dtype: str
    nbytes: int
    shard: int = 0
    offset: int = 0  # within the shard's data section


@dataclass
class _OutShard:
    tensors: list[_OutTensor] = field(default_factory=list)
    size: int = 0


def _pack(tensors: list[_OutTensor], max_bytes: int) -> list[_OutShard]:
    shards: list[_OutShard] = [_OutShard()]
    for t in tensors:
        cur = shards[-1]
        # A tensor larger than the limit gets a shard of its own, as transformers does.
        if cur.tensors and cur.size + t.nbytes > max_bytes:
            cur = _OutShard()
            shards.append(cur)
        t.shard = len(shards) - 1
        t.offset = cur.size
        cur.tensors.append(t)
        cur.size += t.nbytes
    return shards


def _shard_name(i: int, n: int) -> str:
    return SAFE_WEIGHTS if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def _header_bytes(shard: _OutShard) -> bytes:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    for t in shard.tensors:
        header[t.name] = {
            "dtype": t.out_dtype,
            "shape": list(t.source.shape),
            "data_offsets": [t.offset, t.offset + t.nbytes],
        }
    raw = json.dumps(header, separators=(",", ":")).encode()
    # The safetensors library pads the header with spaces to 8 bytes so data stays aligned.
    return raw + b" " * (-len(raw) % 8)


# --- writing ----------------------------------------------------------------------------------


class _Writer:
    """Writes output files on one background thread and hashes them (sha256) on another.

    Items: open a file; write bytes (a buffer or a CPU tensor); copy a byte range of a base shard
    (copied in the kernel with copy_file_range where the filesystem allows, hashed from its
    mapping); close. Each item passes through the write thread, then the hash thread, in order;
    its `release` callback runs once both are done, also after an error, so pooled buffers
    always come back. Two threads because hashing and writing each take about as long as the
    merge itself; this way the three overlap.
    """

    def __init__(self) -> None:
        self._wq: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._hq: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._cond = threading.Condition()
        self._inflight = 0
        self._error: BaseException | None = None
        self._fd = -1
        self._size = 0
        self._hash: Any = None
        self._rel = ""
        self._done: list[ExportedFile] = []
        self._kernel_copy = hasattr(os, "copy_file_range")
        self._threads = [
            threading.Thread(target=self._run_write, name="merge-write", daemon=True),
            threading.Thread(target=self._run_hash, name="merge-hash", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # -- write thread --

    def _run_write(self) -> None:
        while True:
            kind, item = self._wq.get()
            try:
                if self._error is None and kind != "stop":
                    self._write_item(kind, item)
            except BaseException as exc:
                self._error = exc
            finally:
                self._hq.put((kind, item))
                # Drop our reference now: views of a base shard's mapping keep it from closing.
                item = None
                self._wq.task_done()
            if kind == "stop":
                return

    def _write_item(self, kind: str, item: Any) -> None:
        if kind == "open":
            self._fd = os.open(item[0], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._size = 0
        elif kind == "data":
            self._pwrite(_as_bytes(item[0]))
        elif kind == "copy":
            src_fd, src_offset, view, _release = item
            self._copy(src_fd, src_offset, view)
        elif kind == "close":
            size = self._size
            os.close(self._fd)
            self._fd = -1
            item.append(size)

    def _pwrite(self, view: memoryview) -> None:
        done = 0
        while done < len(view):
            done += os.pwrite(self._fd, view[done:], self._size + done)
        self._size += len(view)

    def _copy(self, src_fd: int, src_offset: int, view: memoryview) -> None:
        n, done = len(view), 0
        if self._kernel_copy:
            try:
                while done < n:
                    k = os.copy_file_range(
                        src_fd, self._fd, n - done, src_offset + done, self._size + done
                    )
                    if k <= 0:
                        break
                    done += k
            except OSError:
                # EXDEV, EINVAL, ENOSYS...: this filesystem pair cannot; write from the mapping.
                self._kernel_copy = False
        self._size += done
        if done < n:
            self._pwrite(view[done:])

    # -- hash thread --

    def _run_hash(self) -> None:
        while True:
            kind, item = self._hq.get()
            try:
                if kind == "stop":
                    return
                if self._error is None:
                    self._hash_item(kind, item)
            except BaseException as exc:
                self._error = exc
            finally:
                if kind in ("data", "copy"):
                    release = item[-1]
                    if release is not None:
                        with contextlib.suppress(Exception):
                            release()
                    if kind == "data":
                        with self._cond:
                            self._inflight -= _nbytes(item[0])
                            self._cond.notify_all()
                item = None
                self._hq.task_done()

    def _hash_item(self, kind: str, item: Any) -> None:
        if kind == "open":
            self._hash = hashlib.sha256()
        elif kind == "data":
            self._hash.update(_as_bytes(item[0]))
        elif kind == "copy":
            self._hash.update(item[2])
        elif kind == "close":
            rel, size = item
            self._done.append(ExportedFile(rel, f"sha256:{self._hash.hexdigest()}", size))

    # -- main thread --

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def open(self, path: Path, rel: str) -> None:
        self._check()
        self._rel = rel
        self._wq.put(("open", (path, rel)))

    def write(self, data: Any, release: Callable[[], None] | None = None) -> None:
        """Queue `data` (bytes-like or a CPU tensor) to be written; `release` runs after."""
        n = _nbytes(data)
        with self._cond:
            while self._inflight and self._inflight + n > MAX_INFLIGHT_BYTES:
                self._check()
                self._cond.wait(0.5)
            self._inflight += n
        self._check()
        self._wq.put(("data", (data, release)))

    def copy(
        self, src_fd: int, src_offset: int, view: memoryview, release: Callable[[], None] | None
    ) -> None:
        """Queue a copy of `view` (bytes at `src_offset` of the open file `src_fd`)."""
        self._check()
        self._wq.put(("copy", (src_fd, src_offset, view, release)))

    def close_file(self) -> None:
        self._wq.put(("close", [self._rel]))

    def drain(self) -> None:
        """Wait until every queued item is written and hashed."""
        self._wq.join()
        self._hq.join()
        self._check()

    def finish(self) -> list[ExportedFile]:
        self._wq.put(("stop", None))
        for thread in self._threads:
            thread.join()
        self._check()
        return list(self._done)

    def abort(self) -> None:
        if self._error is None:
            self._error = RuntimeError("aborted")
        if any(t.is_alive() for t in self._threads):
            self._wq.put(("stop", None))
            for thread in self._threads:
                thread.join()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


def _nbytes(data: Any) -> int:
    if isinstance(data, torch.Tensor):
        return data.numel() * data.element_size()
    return len(memoryview(data).cast("B"))


def _as_bytes(data: Any) -> memoryview:
    if isinstance(data, torch.Tensor):
        flat = data.reshape(-1)
        if flat.dtype != torch.uint8:
            flat = flat.view(torch.uint8)
        return flat.numpy().data.cast("B")
    return memoryview(data).cast("B")


def _dontneed(mm: mmap.mmap, offset: int, length: int) -> None:
    """Drop a range of a read-only file mapping from this process's RSS (re-read on access)."""
    if not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    start = offset - offset % mmap.PAGESIZE
    with contextlib.suppress(ValueError, OSError):
        mm.madvise(mmap.MADV_DONTNEED, start, min(length + offset - start, len(mm) - start))


class _Sources:
    """Keeps exactly one base shard open, memory-mapped; ranges leave the RSS once used.

    Mapped pages count in a process's RSS while mapped, so every range is dropped (madvise
    DONTNEED) as soon as it has been merged or written: memory stays about one block. Before a
    shard is closed (and a temporary download removed), the writer is drained, since it may
    still be reading from the mapping.
    """

    def __init__(self, base: BaseFiles, drain: Callable[[], None]) -> None:
        self.base = base
        self.drain = drain
        self.stack = contextlib.ExitStack()
        self.current: str | None = None
        self.fd = -1
        self.mm: mmap.mmap | None = None

    def _switch(self, file: str) -> mmap.mmap:
        if file != self.current:
            self.close()
            local = self.stack.enter_context(self.base.local_path(file))
            f = self.stack.enter_context(open(local, "rb"))  # noqa: SIM115 - closed by the stack
            self.fd = f.fileno()
            # ACCESS_COPY (a private mapping) is writable, so torch.frombuffer takes it without
            # a warning; nothing ever writes to it, so no page is copied.
            self.mm = mmap.mmap(self.fd, 0, access=mmap.ACCESS_COPY)
            self.current = file
        assert self.mm is not None
        return self.mm

    def view(self, file: str, offset: int, length: int) -> memoryview:
        return memoryview(self._switch(file))[offset : offset + length]

    def tensor(self, file: str, offset: int, count: int, dtype: torch.dtype) -> torch.Tensor:
        mm = self._switch(file)
        if offset % dtype.itemsize == 0:
            return torch.frombuffer(mm, dtype=dtype, count=count, offset=offset)
        # Misaligned data (after an odd-sized tensor) cannot be viewed in place; copy it.
        raw = torch.empty(count * dtype.itemsize, dtype=torch.uint8)
        raw.numpy()[:] = memoryview(mm)[offset : offset + raw.numel()]
        return raw.view(dtype)

    def dropper(self, offset: int, length: int) -> Callable[[], None]:
        mm = self.mm
        assert mm is not None
        return lambda: _dontneed(mm, offset, length)

    def close(self, *, drain: bool = True) -> None:
        """Close the open shard; `drain=False` only once the writer thread has stopped."""
        if self.current is None:
            return
        if drain:
            self.drain()
        if self.mm is not None:
            with contextlib.suppress(BufferError):
                # A view still referenced elsewhere keeps the mapping until it goes.
                self.mm.close()
        self.mm = None
        self.stack.close()
        self.stack = contextlib.ExitStack()
        self.current = None


class _BufferPool:
    def __init__(self, count: int, size: int) -> None:
        self.free: queue.Queue[torch.Tensor] = queue.Queue()
        for _ in range(count):
            self.free.put(torch.empty(size, dtype=torch.uint8))

    def get(self) -> torch.Tensor:
        return self.free.get()

    def put(self, buf: torch.Tensor) -> None:
        self.free.put(buf)


# --- the export -------------------------------------------------------------------------------


def _check_args(dtype: str | None, device: str, max_shard_bytes: int) -> torch.device:
    if dtype is not None and dtype not in DTYPES:
        raise InvalidInput(f"dtype must be one of {', '.join(DTYPES)} or None, got {dtype!r}")
    if max_shard_bytes <= 0:
        raise InvalidInput(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidInput(f"device must be 'cpu' or 'cuda', got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise InvalidInput(f"device must be 'cpu' or 'cuda', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput("device 'cuda' was requested but torch finds no CUDA device")
    return dev


@contextlib.contextmanager
def _compute_threads(dev: torch.device) -> Iterator[None]:
    """Leave one core to the writer thread while merging on the CPU.

    torch's intra-op threads busy-wait between operations; sharing every core with the thread
    that hashes and writes made the merge several times slower on small machines. The setting
    is process-wide, so it is restored afterwards (and never raised).
    """
    if dev.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, min(before, (cores or 2) - 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_out_dir(out_dir: Path, *, force: bool, hint: str = "force=True") -> None:
    """Refuse an output path that is not a directory, or a non-empty one unless ``force``."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise OutputExists(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise OutputExists(f"{out_dir} exists and is not empty; pass {hint} to replace it")


def merge_to_dir(
    *,
    base: BaseFiles,
    adapter_config: AdapterConfig,
    adapter_weights: Path,
    out_dir: Path,
    dtype: str | None = None,
    max_shard_bytes: int = 5 * 1024**3,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    force: bool = False,
) -> MergeResult:
    """Merge an adapter into a base checkpoint, streaming, into a new HF-format directory.

    Every check runs before anything is written. The output has the base's tensors (same
    names, in the base's order) with the adapter folded in, as `model.safetensors` or
    `model-0000i-of-0000N.safetensors` + `model.safetensors.index.json`, plus every other
    base file (config, tokenizer, generation config, ...) except weight files of any format.

    Args:
        base: Where the base checkpoint's files come from.
        adapter_config: The adapter's parsed adapter_config.json.
        adapter_weights: The adapter's adapter_model.safetensors (loaded whole: it is small).
        out_dir: The directory to create; must not exist or be empty (see `force`).
        dtype: "float32", "float16", "bfloat16" for every floating tensor, or None to keep
            each base tensor's dtype. Merges compute in float32 and cast once.
        max_shard_bytes: Largest output shard (a single larger tensor gets its own shard).
        device: "cpu" or "cuda" (merge arithmetic on the GPU).
        progress: Called as progress(bytes_done, bytes_total) after each tensor; an exception
            it raises aborts the export, leaving nothing behind.
        force: Replace a non-empty `out_dir`.

    Returns:
        The files written (with sha256 and size), modules merged, output dtype, shard count.

    Raises:
        InvalidInput: A bad dtype, device, or max_shard_bytes.
        OutputExists: `out_dir` is not empty and `force` is False.
        Unmergeable: Prompt learning or another method or layer merged export cannot fold.
        QuantizedBase: The base is quantized (quantization_config, or integer/fp8/fp4 weights
            where the adapter applies).
        IncompatibleBase: Modules missing from the base or shapes that do not fit.
        InvalidBaseModel: No safetensors weights (pickle only), or a malformed checkpoint.
    """
    dev = _check_args(dtype, device, max_shard_bytes)
    out_dir = Path(out_dir)
    check_out_dir(out_dir, force=force)
    check_mergeable(adapter_config)

    files = base.list_files()
    shard_files, weight_like, weight_map = _weight_files(base, files)
    config: dict[str, Any] = _read_json(base, CONFIG) if CONFIG in files else {}
    if not isinstance(config, dict):
        raise InvalidBaseModel(f"base {CONFIG} is not a JSON object")
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "unknown")
        raise QuantizedBase(
            f"the base model is quantized (quantization_config, quant_method={method!r}); "
            f"merge into the unquantized base model instead"
        )

    entries: dict[str, _Entry] = {}
    for shard in shard_files:
        for name, entry in _header(base, shard).items():
            if name in entries:
                raise InvalidBaseModel(f"base tensor {name} is in both {entries[name].file} and "
                                       f"{shard}")
            entries[name] = entry
    if weight_map is not None:
        wrong = sorted(n for n in entries if weight_map.get(n) != entries[n].file)
        wrong += sorted(n for n in weight_map if n not in entries)
        if wrong:
            raise InvalidBaseModel(
                f"base {SAFE_INDEX} does not match the shards' contents (first: {wrong[0]})"
            )

    # Tied output embeddings are usually absent from the checkpoint; expose them to the plan so
    # an adapter on lm_head resolves, and materialise them only if the pair diverges.
    tied = _tied_pairs(config, entries) if _tie_enabled(config) else {}
    shapes: dict[str, tuple[int, ...]] = {n: e.shape for n, e in entries.items()}
    for target, source in tied.items():
        if target not in shapes and source in shapes:
            shapes[target] = shapes[source]

    adapter = load_file(str(adapter_weights))
    plan = plan_merge(adapter_config, adapter, base_shapes=shapes, device=dev)
    del adapter

    diverged = {t for t, s in tied.items() if t in plan.edits or s in plan.edits}
    for name, edits in plan.edits.items():
        found = entries.get(name) or entries.get(tied.get(name, ""))
        if found is not None and found.dtype not in FLOAT_DTYPES:
            raise QuantizedBase(
                f"base tensor {name} ({edits[0].method} on module {edits[0].module!r}) is "
                f"{found.dtype}; adapters can only be merged into float16/bfloat16/float32 "
                f"weights, not quantized ones"
            )

    # Output tensors in base order (shard by shard, by offset); a diverged tied target that the
    # checkpoint lacks is written right after its source.
    out_tensors: list[_OutTensor] = []
    synthesized = {tied[t]: t for t in diverged if t not in entries and tied[t] in entries}
    shard_order = {f: i for i, f in enumerate(shard_files)}
    for name, entry in sorted(entries.items(), key=lambda kv: (shard_order[kv[1].file],
                                                               kv[1].offset)):
        for out_name in (name, synthesized.get(name)):
            if out_name is None:
                continue
            out_dtype = entry.dtype
            if dtype is not None and entry.dtype in FLOAT_DTYPES:
                out_dtype = _ST_NAME[DTYPES[dtype]]
            nbytes = entry.nbytes
            if out_dtype != entry.dtype:
                nbytes = math.prod(entry.shape) * FLOAT_DTYPES[out_dtype].itemsize
            out_tensors.append(_OutTensor(out_name, entry, out_dtype, nbytes))
    shards = _pack(out_tensors, max_shard_bytes)

    new_config = dict(config)
    if diverged:
        new_config["tie_word_embeddings"] = False
    if dtype is not None:
        keys = [k for k in ("dtype", "torch_dtype") if k in new_config] or ["torch_dtype"]
        for k in keys:
            new_config[k] = dtype
    float_out = {t.out_dtype for t in out_tensors if t.out_dtype in FLOAT_DTYPES}
    result_dtype = dtype or (_TORCH_NAME[float_out.pop()] if len(float_out) == 1 else "mixed")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    writer = _Writer()
    sources = _Sources(base, writer.drain)
    try:
        with _compute_threads(dev):
            _write_shards(shards, plan, sources, writer, tmp, dev, progress)
        sources.close()
        copied = [f for f in files if f not in weight_like and f not in shard_files]
        _write_index(shards, writer, tmp)
        _copy_files(base, copied, writer, tmp, config, new_config)
        exported = writer.finish()
        _move_into_place(tmp, out_dir, force)
    except BaseException:
        writer.abort()
        sources.close(drain=False)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return MergeResult(
        files=sorted(exported, key=lambda f: f.path),
        merged_modules=len(plan.modules),
        dtype=result_dtype,
        shards=len(shards),
    )


def _write_shards(
    shards: list[_OutShard],
    plan: MergePlan,
    sources: _Sources,
    writer: _Writer,
    tmp: Path,
    dev: torch.device,
    progress: Callable[[int, int], None] | None,
) -> None:
    total = sum(s.size for s in shards)
    done = 0
    buffers = _Buffers(BLOCK_BYTES_F32["cuda" if dev.type == "cuda" else "cpu"])
    for i, shard in enumerate(shards):
        rel = _shard_name(i, len(shards))
        writer.open(tmp / rel, rel)
        header = _header_bytes(shard)
        writer.write(len(header).to_bytes(8, "little") + header)
        for t in shard.tensors:
            src = t.source
            if t.name not in plan.edits and t.out_dtype == src.dtype:
                _copy_raw(src, sources, writer)
            else:
                _merge_tensor(t, plan, sources, writer, dev, buffers)
            done += t.nbytes
            if progress is not None:
                progress(done, total)
        writer.close_file()


class _Buffers:
    """Buffers reused for every block, so the loop does not fault in fresh pages each time.

    `work` (the float32 block) belongs to the main thread; `pool` buffers carry merged bytes
    to the writer thread, which hands each back once written.
    """

    def __init__(self, block_bytes: int) -> None:
        self.block_bytes = block_bytes
        self.pool_size = max(CHUNK_BYTES, 2 * block_bytes)
        self.pool = _BufferPool(4, self.pool_size)
        self.work = torch.empty(block_bytes // 4, dtype=torch.float32)

    def out(self, nbytes: int) -> tuple[torch.Tensor, Callable[[], None] | None]:
        if nbytes > self.pool_size:
            return torch.empty(nbytes, dtype=torch.uint8), None
        buf = self.pool.get()
        return buf[:nbytes], lambda: self.pool.put(buf)


def _copy_raw(src: _Entry, sources: _Sources, writer: _Writer) -> None:
    pos = 0
    while pos < src.nbytes:
        n = min(CHUNK_BYTES, src.nbytes - pos)
        view = sources.view(src.file, src.offset + pos, n)
        writer.copy(sources.fd, src.offset + pos, view, sources.dropper(src.offset + pos, n))
        pos += n


def _merge_tensor(
    t: _OutTensor,
    plan: MergePlan,
    sources: _Sources,
    writer: _Writer,
    dev: torch.device,
    buffers: _Buffers,
) -> None:
    src = t.source
    in_dtype = FLOAT_DTYPES[src.dtype]
    out_dtype = FLOAT_DTYPES[t.out_dtype]
    shape = src.shape
    rows = shape[0] if shape else 1
    numel = math.prod(shape)
    if rows == 0 or numel == 0:
        return
    row_elems = numel // rows
    # Row-wise edits run on ~block_bytes of float32 at a time; the others need every row.
    step = max(1, buffers.block_bytes // (4 * row_elems)) if plan.rowwise(t.name) else rows
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        n = (stop - start) * row_elems
        block_shape = (stop - start, *shape[1:]) if shape else ()
        offset = src.offset + start * row_elems * in_dtype.itemsize
        block = sources.tensor(src.file, offset, n, in_dtype).view(block_shape)
        if dev.type == "cpu" and n <= buffers.work.numel():
            work = buffers.work[:n].view(block_shape)
            work.copy_(block)
        else:
            work = block.to(device=dev, dtype=torch.float32, copy=True)
        del block
        sources.dropper(offset, n * in_dtype.itemsize)()
        # Edits may update `work` in place; it is ours (a buffer, or a copy).
        merged = plan.apply(t.name, work, start, stop)
        out, release = buffers.out(n * out_dtype.itemsize)
        out.view(out_dtype).view(block_shape).copy_(merged)
        writer.write(out, release)


def _write_index(shards: list[_OutShard], writer: _Writer, tmp: Path) -> None:
    if len(shards) == 1:
        return
    weight_map = {
        t.name: _shard_name(i, len(shards)) for i, s in enumerate(shards) for t in s.tensors
    }
    params = sum(math.prod(t.source.shape) for s in shards for t in s.tensors)
    index = {
        "metadata": {"total_parameters": params, "total_size": sum(s.size for s in shards)},
        "weight_map": dict(sorted(weight_map.items())),
    }
    writer.open(tmp / SAFE_INDEX, SAFE_INDEX)
    writer.write((json.dumps(index, indent=2) + "\n").encode())
    writer.close_file()


def _copy_files(
    base: BaseFiles,
    paths: list[str],
    writer: _Writer,
    tmp: Path,
    config: dict[str, Any],
    new_config: dict[str, Any],
) -> None:
    for rel in paths:
        dest = tmp / normalize_path(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        writer.open(dest, rel)
        if rel == CONFIG and new_config != config:
            writer.write((json.dumps(new_config, indent=2, sort_keys=True) + "\n").encode())
        else:
            with base.local_path(rel) as local, local.open("rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    writer.write(chunk)
        writer.close_file()


def _move_into_place(tmp: Path, out_dir: Path, force: bool) -> None:
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise OutputExists(f"{out_dir} was filled while the export ran")
        trash = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:12]}"
        out_dir.rename(trash)
        tmp.rename(out_dir)
        shutil.rmtree(trash, ignore_errors=True)
        return
    if out_dir.is_dir():
        out_dir.rmdir()
    tmp.rename(out_dir)
