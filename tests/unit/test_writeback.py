"""registry.storage.writeback: writeback starts in steps while a file is written."""

from __future__ import annotations

import ctypes
import errno
import os

from registry.storage import writeback
from registry.storage.writeback import Writeback


def test_writeback_starts_in_steps_and_leaves_the_file_intact(tmp_path):
    path = tmp_path / "f.bin"
    data = os.urandom(3 * 1024 * 1024 + 7)
    with path.open("wb", buffering=0) as f:
        wb = Writeback(f.fileno(), every=1024 * 1024)
        starts = []
        for i in range(0, len(data), 256 * 1024):
            chunk = data[i : i + 256 * 1024]
            f.write(chunk)
            wb.wrote(len(chunk))
            starts.append(wb.started)
        os.fsync(f.fileno())
    assert wb.written == len(data)
    if writeback._sync_file_range is not None:  # Linux with glibc: started in 1 MiB steps
        assert sorted(set(starts)) == [0, 1024 * 1024, 2 * 1024 * 1024, 3 * 1024 * 1024]
    else:
        assert set(starts) == {0}
    assert path.read_bytes() == data


def test_writeback_on_a_closed_descriptor_is_harmless(tmp_path):
    fd = os.open(tmp_path / "g.bin", os.O_WRONLY | os.O_CREAT)
    os.close(fd)
    wb = Writeback(fd, every=1)
    ctypes.set_errno(0)
    wb.wrote(10)  # EBADF from the kernel is ignored: fsync is what makes a file durable
    if writeback._sync_file_range is None:  # nothing to call: nothing started
        assert wb.started == 0
        return
    # The call was made (and failed with EBADF), and the failure did not escape; the next
    # range starts after it, as after a successful call.
    assert ctypes.get_errno() == errno.EBADF
    assert wb.started == 10
    wb.wrote(5)
    assert (wb.written, wb.started) == (15, 15)
