"""Start writing a file's dirty pages to disk while it is still being written.

A blob or a pulled file is fsync'ed before it becomes visible. Without help the kernel keeps the
whole file dirty until that fsync, which then waits for all of it; starting writeback every
32 MiB lets the disk work while the data streams in, so the final fsync waits only for the tail.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

WRITEBACK_EVERY = 32 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2


def _load() -> Callable[[int, int, int], object] | None:
    """Linux's sync_file_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE), which starts writeback
    of a range without waiting. The standard library has no binding; None where libc lacks it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return lambda fd, offset, nbytes: func(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)


_sync_file_range = _load()


class Writeback:
    """Tracks what was appended to a file descriptor and starts writeback in 32 MiB steps.

    Best effort only (errors are ignored; where the call is missing it does nothing): the fsync
    at the end is what makes the file durable.
    """

    def __init__(self, fd: int, *, every: int = WRITEBACK_EVERY) -> None:
        self.fd = fd
        self.every = every
        self.written = 0
        self.started = 0

    def wrote(self, nbytes: int) -> None:
        self.written += nbytes
        if _sync_file_range is not None and self.written - self.started >= self.every:
            _sync_file_range(self.fd, self.started, self.written - self.started)
            self.started = self.written
