"""registry.storage.sink.HashingFileSink: write now, hash on a helper thread, in order."""

from __future__ import annotations

import hashlib
import os
from contextlib import closing

import pytest

from registry.storage.sink import HashingFileSink


def test_digest_and_file_match_with_two_buffers_in_turn(tmp_path):
    """The downloader's pattern: two buffers alternate, each refilled right after the write
    that follows its own. Order and content must survive the overlap."""
    data = os.urandom(5 * 1024 * 1024 + 12345)
    chunk = 256 * 1024 + 7
    buffers = (bytearray(chunk), bytearray(chunk))
    path = tmp_path / "out.bin"
    with path.open("wb", buffering=0) as out, closing(HashingFileSink(out)) as sink:
        turn = 0
        for i in range(0, len(data), chunk):
            piece = data[i : i + chunk]
            buffers[turn][: len(piece)] = piece
            sink.write(memoryview(buffers[turn])[: len(piece)])
            turn ^= 1
        digest = sink.digest()
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert sink.size == len(data)
    assert path.read_bytes() == data


def test_empty_download(tmp_path):
    with (tmp_path / "e").open("wb", buffering=0) as out, closing(HashingFileSink(out)) as sink:
        assert sink.digest() == "sha256:" + hashlib.sha256(b"").hexdigest()


def test_a_failing_write_raises_and_close_still_stops_the_thread(tmp_path):
    out = (tmp_path / "f").open("wb", buffering=0)
    sink = HashingFileSink(out)
    sink.write(b"x" * 10_000)
    out.close()
    with pytest.raises(ValueError):  # writing to a closed file
        sink.write(b"y" * 10_000)
    sink.close()
    assert sink.digest() == "sha256:" + hashlib.sha256(b"x" * 10_000).hexdigest()
