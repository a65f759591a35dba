"""Merged export writing: the output shards, streamed from memory-mapped base shards.

Tensors are copied or merged block by block on the main thread while one background thread
writes and another hashes, so the three overlap and memory stays a few blocks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import mmap
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from registry.formats.adapter import normalize_path
from registry.merge.edits import MergePlan
from registry.merge.files import CONFIG, SAFE_INDEX, SAFE_WEIGHTS, BaseFiles, Entry
from registry.merge.layout import FLOAT_DTYPES, OutShard, OutTensor

CHUNK_BYTES = 8 * 1024 * 1024
BLOCK_BYTES_F32 = {"cpu": 4 * 1024 * 1024, "cuda": 64 * 1024 * 1024}
# Bytes handed to the writer thread but not yet written; one larger item is always let through.
MAX_INFLIGHT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ExportedFile:
    """One file of the export: its relative path, "sha256:<hex>" digest and size in bytes."""

    path: str
    digest: str
    size: int


# --- output shards ----------------------------------------------------------------------------


def _shard_name(i: int, n: int) -> str:
    return SAFE_WEIGHTS if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def _header_bytes(shard: OutShard) -> bytes:
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


class Writer:
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


class Sources:
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


# --- the merge loop ---------------------------------------------------------------------------


@contextlib.contextmanager
def compute_threads(dev: torch.device) -> Iterator[None]:
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


def write_shards(
    shards: list[OutShard],
    merge_plan: MergePlan,
    sources: Sources,
    writer: Writer,
    tmp: Path,
    dev: torch.device,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Write every output shard into `tmp`: header first, then each tensor copied or merged."""
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
            if t.name not in merge_plan.edits and t.out_dtype == src.dtype:
                _copy_raw(src, sources, writer)
            else:
                _merge_tensor(t, merge_plan, sources, writer, dev, buffers)
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


def _copy_raw(src: Entry, sources: Sources, writer: Writer) -> None:
    pos = 0
    while pos < src.nbytes:
        n = min(CHUNK_BYTES, src.nbytes - pos)
        view = sources.view(src.file, src.offset + pos, n)
        writer.copy(sources.fd, src.offset + pos, view, sources.dropper(src.offset + pos, n))
        pos += n


def _merge_tensor(
    t: OutTensor,
    merge_plan: MergePlan,
    sources: Sources,
    writer: Writer,
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
    step = max(1, buffers.block_bytes // (4 * row_elems)) if merge_plan.rowwise(t.name) else rows
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
        merged = merge_plan.apply(t.name, work, start, stop)
        out, release = buffers.out(n * out_dtype.itemsize)
        out.view(out_dtype).view(block_shape).copy_(merged)
        writer.write(out, release)


def write_index(shards: list[OutShard], writer: Writer, tmp: Path) -> None:
    """Write model.safetensors.index.json when there are several shards."""
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


def copy_files(
    base: BaseFiles,
    paths: list[str],
    writer: Writer,
    tmp: Path,
    config: dict[str, Any],
    new_config: dict[str, Any],
) -> None:
    """Copy the base's other files into `tmp`; config.json is rewritten if it changed."""
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
