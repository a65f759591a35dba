"""A download sink that writes each chunk to a file at once and hashes it on a helper thread."""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import Future, ThreadPoolExecutor

from registry.storage.base import format_digest
from registry.storage.writeback import Writeback


class HashingFileSink:
    """Writes chunks to an unbuffered file and hashes them (sha256) on a helper thread.

    sha256 releases the GIL on large buffers, so on a machine with two cores hashing a chunk
    overlaps receiving and writing the next one (hashing is the slowest of the three). At most
    one chunk is being hashed: ``write`` returns once its chunk is written, and the caller may
    reuse that buffer from its next-but-one ``write`` on, which lets a downloader alternate
    between two buffers without copying. Writeback starts as the file grows
    (registry.storage.writeback); the caller still fsyncs.

    Call :meth:`close` when done, also on errors (``contextlib.closing``): it stops the thread.
    """

    def __init__(self, out: io.FileIO) -> None:
        self._out = out
        self._writeback = Writeback(out.fileno())
        self._sha = hashlib.sha256()
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
        self._pending: Future[None] | None = None
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        n = len(view)
        while view:
            view = view[self._out.write(view) :]
        self._wait()  # the previous chunk is hashed before this one starts: order, one pending
        self._pending = self._hasher.submit(self._sha.update, data)
        self.size += n
        self._writeback.wrote(n)
        return n

    def digest(self) -> str:
        """``sha256:<hex>`` of everything written so far (waits for the hashing)."""
        self._wait()
        return format_digest(self._sha.hexdigest())

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        self._hasher.shutdown(wait=True)
