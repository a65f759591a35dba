"""sha256 on a helper thread, one chunk behind the caller, and a download sink built on it."""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import Future, ThreadPoolExecutor

from registry.storage.base import format_digest
from registry.storage.writeback import Writeback


class BackgroundSha256:
    """sha256 of a stream of chunks, computed on a helper thread while the caller moves on.

    sha256 releases the GIL on large buffers, so on a machine with two cores hashing a chunk
    overlaps whatever the caller does next (reading, sending or writing the next chunk). At most
    one chunk is being hashed: ``update`` waits for the previous chunk first, so the caller may
    reuse a buffer from its next-but-one ``update`` on (bytes objects need no care at all).

    Call :meth:`close` when done, also on errors (``contextlib.closing``): it stops the thread.
    """

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
        self._pending: Future[None] | None = None

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._wait()  # chunks are hashed in order, one at a time
        self._pending = self._hasher.submit(self._sha.update, data)

    def hexdigest(self) -> str:
        """Hex sha256 of every chunk so far (waits for the hashing)."""
        self._wait()
        return self._sha.hexdigest()

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        self._hasher.shutdown(wait=True)


class HashingFileSink:
    """Writes chunks to an unbuffered file and hashes them with :class:`BackgroundSha256`.

    Hashing a chunk overlaps receiving and writing the next one (hashing is the slowest of the
    three). ``write`` returns once its chunk is written; the caller may reuse that buffer from
    its next-but-one ``write`` on, which lets a downloader alternate between two buffers without
    copying. Writeback starts as the file grows (registry.storage.writeback); the caller still
    fsyncs.

    Call :meth:`close` when done, also on errors (``contextlib.closing``): it stops the thread.
    """

    def __init__(self, out: io.FileIO) -> None:
        self._out = out
        self._writeback = Writeback(out.fileno())
        self._sha = BackgroundSha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        n = len(view)
        while view:
            view = view[self._out.write(view) :]
        self._sha.update(data)
        self.size += n
        self._writeback.wrote(n)
        return n

    def digest(self) -> str:
        """``sha256:<hex>`` of everything written so far (waits for the hashing)."""
        return format_digest(self._sha.hexdigest())

    def close(self) -> None:
        self._sha.close()
