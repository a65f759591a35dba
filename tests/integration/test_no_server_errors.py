"""Malformed requests to every route get a 4xx with {"error", "detail"}, never a 500."""

from __future__ import annotations

import httpx
import pytest

Z = "sha256:" + "0" * 64
JUNK_REQUESTS = [
    ("GET", "/api/v1/adapters/x/versions/0", None, None),
    ("GET", "/api/v1/adapters/x/versions/abc", None, None),
    ("GET", "/api/v1/adapters/x/versions/99999999999999999999", None, None),
    ("GET", "/api/v1/adapters/Bad%20Name/versions/1", None, None),
    ("GET", "/api/v1/adapters/x/versions/1/tensors", None, None),
    ("GET", "/api/v1/adapters/x/versions/1/lineage", None, None),
    ("GET", "/api/v1/adapters/x/versions/0/lineage", None, None),
    ("GET", "/api/v1/adapters/x/versions/latest/lineage", None, None),
    ("GET", "/api/v1/adapters/Bad%20Name/versions/1/lineage", None, None),
    ("GET", "/api/v1/adapters/x/versions/latest/compat", None, None),
    ("GET", "/api/v1/adapters/x/versions/-1/compat", None, None),
    ("GET", "/api/v1/adapters/x/versions/1/compat?base=Bad%20Base", None, None),
    ("GET", "/api/v1/adapters/x/versions/1/exports?dtype=int4", None, None),
    ("GET", "/api/v1/compat", None, None),
    ("GET", "/api/v1/compat?base=nope", None, None),
    ("GET", "/api/v1/compat?base=" + "x" * 500, None, None),
    ("GET", "/api/v1/base-models/nope", None, None),
    ("GET", "/api/v1/base-models/nope/tensors?revision=r", None, None),
    ("POST", "/api/v1/base-models", {"name": "b", "source": "hf://../etc"}, None),
    ("POST", "/api/v1/base-models", {"name": "b", "source": "gopher://x"}, None),
    ("POST", "/api/v1/base-models", {"name": "b", "source": "s3://"}, None),
    ("POST", "/api/v1/base-models", {"name": "b", "source": "file:///x", "files": {}}, None),
    ("POST", "/api/v1/base-models",
     {"name": "b", "source": "file:///x", "files": {"../config.json": Z}}, None),
    ("POST", "/api/v1/base-models",
     {"name": "b", "source": "file:///x", "files": {"model.bin": Z}}, None),
    ("POST", "/api/v1/base-models",
     {"name": "b", "source": "file:///x", "files": {"config.json": Z}}, None),
    ("POST", "/api/v1/base-models", {"name": "B B", "source": "hf://a/b"}, None),
    ("POST", "/api/v1/base-models", {"name": "b", "source": "hf://a/b", "revision": "a b"}, None),
    ("POST", "/api/v1/base-models", [], None),
    ("POST", "/api/v1/exports", {"name": "x", "version": 1, "base": "b", "base_revision": "r",
                                 "dtype": "float32", "files": {"../x": Z}}, None),
    ("POST", "/api/v1/exports", {"name": "x", "version": 1, "base": "b", "base_revision": "r",
                                 "dtype": "float32", "files": {"config.json": Z}}, None),
    ("POST", "/api/v1/exports", {"name": "x", "version": 0, "base": "b", "base_revision": "r",
                                 "dtype": "int8", "files": {}}, None),
    ("POST", "/api/v1/admin/gc", {"grace_seconds": -1}, None),
    ("POST", "/api/v1/admin/gc", {"dry_run": "maybe"}, None),
    ("POST", "/api/v1/adapters/x/versions", {"files": {"a": Z}, "idempotency_key": "a b"}, None),
    ("POST", "/api/v1/adapters/x/versions", {"files": {"a": Z}, "git_commit": "zzz"}, None),
    ("POST", "/api/v1/adapters/x/versions", {"files": {"a": Z}, "ci_run_url": "ftp://x"}, None),
    ("POST", "/api/v1/adapters/x/versions", {"files": {"a": Z}, "metadata": {"k": 1}}, None),
    ("GET", f"/api/v1/blobs/{Z}", None, {"Range": "bytes=0-10"}),
    ("HEAD", "/api/v1/blobs/sha256:abc", None, None),
    ("PUT", "/api/v1/blobs/md5:abc", None, None),
    ("GET", "/api/v1/blobs/sizes/99999999999999999999", None, None),
    ("GET", "/api/v1/blobs/sizes/-5", None, None),
    ("DELETE", "/api/v1/adapters", None, None),
]


@pytest.mark.parametrize(("method", "path", "body", "headers"), JUNK_REQUESTS,
                         ids=[f"{m} {p[:60]}" for m, p, _, _ in JUNK_REQUESTS])
def test_junk_is_a_clear_4xx(live_server, method, path, body, headers):
    r = httpx.request(method, live_server.url + path, json=body, headers=headers, timeout=30)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    if method != "HEAD":
        assert set(r.json()) == {"error", "detail"}, r.text


def test_ranges_on_a_stored_blob(live_server):
    data = bytes(range(256)) * 40
    from tests.integration.helpers import digest_of

    d = digest_of(data)
    httpx.put(f"{live_server.url}/api/v1/blobs/{d}", content=data)
    ok = httpx.get(f"{live_server.url}/api/v1/blobs/{d}", headers={"Range": "bytes=10-19"})
    assert ok.status_code == 206 and ok.content == data[10:20]
    tail = httpx.get(f"{live_server.url}/api/v1/blobs/{d}", headers={"Range": "bytes=10200-99999"})
    assert tail.status_code == 206 and tail.content == data[10200:]
    # Several ranges and other units are served whole (200): tests/integration/test_blob_ranges.py.
    for bad in ("bytes=20-10", "bytes=99999-100000"):
        r = httpx.get(f"{live_server.url}/api/v1/blobs/{d}", headers={"Range": bad})
        assert r.status_code in (416, 422), (bad, r.status_code)
        assert set(r.json()) == {"error", "detail"}
