"""Range requests on GET /api/v1/blobs/{digest}: the RFC 9110 forms of one byte range are served
(206 with the right Content-Range); several ranges or another unit get the whole blob (200);
what lies outside the blob is a 416 with ``Content-Range: bytes */SIZE``."""

from __future__ import annotations

import os

import httpx
import pytest

from tests.integration.helpers import digest_of, put_blob

DATA = bytes(range(256)) * 40  # 10,240 bytes
SIZE = len(DATA)


@pytest.fixture
def blob(live_server) -> str:
    assert put_blob(live_server.url, DATA).status_code == 201
    return f"{live_server.url}/api/v1/blobs/{digest_of(DATA)}"


@pytest.mark.parametrize(("header", "first", "last"), [
    ("bytes=10-19", 10, 19),
    ("bytes=10200-99999", 10200, SIZE - 1),  # a last position past the end is cut to the end
    (f"bytes={SIZE - 30}-", SIZE - 30, SIZE - 1),  # from a position to the end
    ("bytes=0-", 0, SIZE - 1),
    ("bytes=-25", SIZE - 25, SIZE - 1),  # the last 25 bytes
    (f"bytes=-{SIZE * 2}", 0, SIZE - 1),  # a suffix longer than the blob is the whole blob
    ("bytes=7-7", 7, 7),
])
def test_one_byte_range_is_206(blob, header, first, last):
    r = httpx.get(blob, headers={"Range": header})
    assert r.status_code == 206, r.text
    assert r.content == DATA[first : last + 1]
    assert r.headers["content-range"] == f"bytes {first}-{last}/{SIZE}"
    assert int(r.headers["content-length"]) == last - first + 1


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "bytes=-5, 10-", "items=0-1", "lines=3-"])
def test_several_ranges_or_another_unit_get_the_whole_blob(blob, header):
    r = httpx.get(blob, headers={"Range": header})
    assert r.status_code == 200, r.text
    assert r.content == DATA
    assert "content-range" not in r.headers


@pytest.mark.parametrize("header", [
    f"bytes={SIZE}-", f"bytes={SIZE}-{SIZE + 10}", "bytes=20-10", "bytes=-0", "bytes=abc",
    "bytes=-", "bytes=1-2-3",
])
def test_an_unsatisfiable_range_is_416(blob, header):
    r = httpx.get(blob, headers={"Range": header})
    assert r.status_code == 416, (header, r.text)
    assert r.json()["error"] == "range_not_satisfiable"
    assert r.headers["content-range"] == f"bytes */{SIZE}"


def test_ranges_of_an_empty_blob_are_416(live_server):
    assert put_blob(live_server.url, b"").status_code == 201
    url = f"{live_server.url}/api/v1/blobs/{digest_of(b'')}"
    for header in ("bytes=0-", "bytes=-5", "bytes=0-0"):
        r = httpx.get(url, headers={"Range": header})
        assert r.status_code == 416 and r.headers["content-range"] == "bytes */0", header
    assert httpx.get(url).content == b""


def test_a_range_larger_than_one_read_is_streamed_whole(live_server):
    data = os.urandom(8 * 1024 * 1024 + 12345)  # over the 8 MiB a range is read in at once
    assert put_blob(live_server.url, data).status_code == 201
    url = f"{live_server.url}/api/v1/blobs/{digest_of(data)}"
    r = httpx.get(url, headers={"Range": "bytes=3-"}, timeout=60)
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes 3-{len(data) - 1}/{len(data)}"
    assert int(r.headers["content-length"]) == len(data) - 3 and r.content == data[3:]
    r = httpx.get(url, headers={"Range": f"bytes=-{len(data) - 1}"}, timeout=60)
    assert r.status_code == 206 and r.content == data[1:]
