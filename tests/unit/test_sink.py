"""registry.storage.sink: sha256 on a helper thread, in order (BackgroundSha256), and the
download sink built on it (HashingFileSink: write now, hash behind)."""

from __future__ import annotations

import hashlib
import os
from contextlib import closing

import pytest

from registry.storage.sink import BackgroundSha256, HashingFileSink


def _feed_two_buffers_in_turn(data: bytes, chunk: int, consume) -> None:  # type: ignore[no-untyped-def]
    """Pass ``data`` to ``consume`` chunk by chunk through two buffers that alternate, each
    refilled right after the call that follows its own (a downloader's pattern)."""
    buffers = (bytearray(chunk), bytearray(chunk))
    turn = 0
    for i in range(0, len(data), chunk):
        piece = data[i : i + chunk]
        buffers[turn][: len(piece)] = piece
        consume(memoryview(buffers[turn])[: len(piece)])
        turn ^= 1


def test_digest_and_file_match_with_two_buffers_in_turn(tmp_path):
    """The downloader's pattern: two buffers alternate, each refilled right after the write
    that follows its own. Order and content must survive the overlap."""
    data = os.urandom(5 * 1024 * 1024 + 12345)
    path = tmp_path / "out.bin"
    with path.open("wb", buffering=0) as out, closing(HashingFileSink(out)) as sink:
        _feed_two_buffers_in_turn(data, 256 * 1024 + 7, sink.write)
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


def test_background_sha256_matches_hashlib_over_many_chunks():
    chunks = [os.urandom(n) for n in (0, 1, 4096, 1 << 20, 3 * (1 << 20) + 5, 17)]
    with closing(BackgroundSha256()) as sha:
        for c in chunks:
            sha.update(c)
        middle = sha.hexdigest()  # waits, and the stream can go on afterwards
        sha.update(b"tail")
        end = sha.hexdigest()
    assert middle == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert end == hashlib.sha256(b"".join(chunks) + b"tail").hexdigest()


def test_background_sha256_lets_the_caller_refill_a_buffer_two_updates_later():
    """The contract: after update(b) returns, b may be refilled from the next-but-one update on
    (update waits for the previous chunk before it queues the next)."""
    data = os.urandom(4 * 1024 * 1024 + 99)
    with closing(BackgroundSha256()) as sha:
        _feed_two_buffers_in_turn(data, 300_001, sha.update)
        assert sha.hexdigest() == hashlib.sha256(data).hexdigest()


def test_background_sha256_close_stops_its_thread():
    sha = BackgroundSha256()
    sha.update(b"abc")
    sha.close()
    assert all(not t.is_alive() for t in sha._hasher._threads)
