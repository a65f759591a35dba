"""Digest parsing and streaming file hashing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from registry.errors import InvalidDigest
from registry.storage.base import DIGEST_RE, parse_digest, sha256_file

EMPTY = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_parse_digest_returns_hex() -> None:
    assert parse_digest(EMPTY) == EMPTY.removeprefix("sha256:")
    assert DIGEST_RE.match(EMPTY)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "sha256:",
        "sha256:" + "A" * 64,
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha512:" + "a" * 64,
        "a" * 64,
        EMPTY + "\n",
        " " + EMPTY,
        "sha256:../../" + "a" * 58,
        "sha256:" + "a" * 60 + "/../",
    ],
)
def test_parse_digest_rejects(bad: str) -> None:
    with pytest.raises(InvalidDigest):
        parse_digest(bad)


def test_parse_digest_rejects_non_strings() -> None:
    with pytest.raises(InvalidDigest):
        parse_digest(None)  # type: ignore[arg-type]


def test_sha256_file_streams(tmp_path: Path) -> None:
    data = bytes(range(256)) * 41
    path = tmp_path / "f"
    path.write_bytes(data)
    expected = "sha256:" + hashlib.sha256(data).hexdigest()
    # A chunk size that does not divide the length exercises the tail read.
    assert sha256_file(path, chunk=1000) == (expected, len(data))
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty) == (EMPTY, 0)
