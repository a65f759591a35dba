"""Malformed requests to every route get their specific 4xx with {"error", "detail"}, never a 500.

Each case names the error it must get: a case that stopped at "not found" before reaching its
malformed part would otherwise pass for the wrong reason. Cases whose malformed part lies behind
a lookup run against a registry holding what they look up (`stocked`).
"""

from __future__ import annotations

import httpx
import pytest

from tests.integration.helpers import digest_of, push_raw, read_dir

Z = "sha256:" + "0" * 64
EXPORT = {"name": "x", "version": 1, "base": "b", "base_revision": "r", "dtype": "float32"}

# (method, path, JSON body, headers, status, error code) against an empty registry.
JUNK_REQUESTS = [
    ("GET", "/api/v1/adapters/x/versions/0", None, None, 422, "invalid_input"),
    ("GET", "/api/v1/adapters/x/versions/abc", None, None, 422, "invalid_input"),
    ("GET", "/api/v1/adapters/x/versions/99999999999999999999", None, None, 422, "invalid_input"),
    ("GET", "/api/v1/adapters/Bad%20Name/versions/1", None, None, 422, "invalid_name"),
    ("GET", "/api/v1/adapters/x/versions/0/lineage", None, None, 422, "invalid_input"),
    ("GET", "/api/v1/adapters/x/versions/latest/lineage", None, None, 422, "invalid_input"),
    ("GET", "/api/v1/adapters/Bad%20Name/versions/1/lineage", None, None, 422, "invalid_name"),
    ("GET", "/api/v1/adapters/x/versions/-1/compat", None, None, 422, "invalid_reference"),
    ("GET", "/api/v1/adapters/x/versions/1/exports?dtype=int4", None, None, 422,
     "invalid_input"),
    ("GET", "/api/v1/compat", None, None, 422, "invalid_input"),
    ("GET", "/api/v1/compat?base=nope", None, None, 404, "base_model_not_found"),
    ("GET", "/api/v1/compat?base=" + "x" * 500, None, None, 422, "invalid_input"),
    ("GET", "/api/v1/base-models/nope", None, None, 404, "base_model_not_found"),
    ("POST", "/api/v1/base-models", {"name": "b", "source": "hf://../etc"}, None, 422,
     "invalid_input"),
    ("POST", "/api/v1/base-models", {"name": "b", "source": "gopher://x"}, None, 422,
     "invalid_input"),
    ("POST", "/api/v1/base-models", {"name": "b", "source": "s3://"}, None, 422,
     "invalid_input"),
    ("POST", "/api/v1/base-models", {"name": "b", "source": "file:///x", "files": {}}, None, 422,
     "invalid_input"),
    ("POST", "/api/v1/base-models",
     {"name": "b", "source": "file:///x", "files": {"../config.json": Z}}, None, 422,
     "invalid_path"),
    ("POST", "/api/v1/base-models",
     {"name": "b", "source": "file:///x", "files": {"model.bin": Z}}, None, 422, "unsafe_format"),
    ("POST", "/api/v1/base-models",
     {"name": "b", "source": "file:///x", "files": {"config.json": Z, "Config.json": Z}}, None,
     422, "invalid_path"),
    ("POST", "/api/v1/base-models", {"name": "B B", "source": "hf://a/b"}, None, 422,
     "invalid_name"),
    ("POST", "/api/v1/base-models", {"name": "b", "source": "hf://a/b", "revision": "a b"}, None,
     422, "invalid_input"),
    # A revision reaches Hugging Face cache paths (refs/<revision>): nothing path-like.
    ("POST", "/api/v1/base-models", {"name": "b", "source": "hf://a/b", "revision": "../../x"},
     None, 422, "invalid_input"),
    ("POST", "/api/v1/base-models", {"name": "b", "source": "hf://a/b@../../x"}, None, 422,
     "invalid_input"),
    ("POST", "/api/v1/base-models", {"name": "b", "source": "file:///x", "revision": "a/b",
                                     "files": {"config.json": Z}}, None, 422, "invalid_input"),
    # Referenced sources are read with the server's credentials: none is allowed by default.
    ("POST", "/api/v1/base-models", {"name": "b", "source": "s3://any-bucket/prefix"}, None, 403,
     "source_not_allowed"),
    ("POST", "/api/v1/base-models", {"name": "b", "source": "hf://acme/private-model"}, None,
     403, "source_not_allowed"),
    ("POST", "/api/v1/base-models", [], None, 422, "invalid_input"),
    ("POST", "/api/v1/exports", {**EXPORT, "files": {"../x": Z}}, None, 422, "invalid_path"),
    ("POST", "/api/v1/exports", {**EXPORT, "files": {"config.json": Z}}, None, 422,
     "invalid_input"),
    ("POST", "/api/v1/exports", {**EXPORT, "version": 0, "dtype": "int8", "files": {}}, None,
     422, "invalid_input"),
    ("POST", "/api/v1/exports",
     {**EXPORT, "files": {"config.json": Z, "model.safetensors": Z, "MODEL.safetensors": Z}},
     None, 422, "invalid_path"),
    # Who recorded an export is the server's to say, never the client's.
    ("POST", "/api/v1/exports",
     {**EXPORT, "files": {"config.json": Z, "model.safetensors": Z}, "created_by": "release"},
     None, 422, "invalid_input"),
    ("POST", "/api/v1/admin/gc", {"grace_seconds": -1}, None, 422, "invalid_input"),
    ("POST", "/api/v1/admin/gc", {"dry_run": "maybe"}, None, 422, "invalid_input"),
    ("POST", "/api/v1/adapters/x/versions", {"files": {"a": Z}, "idempotency_key": "a b"}, None,
     422, "invalid_input"),
    ("POST", "/api/v1/adapters/x/versions", {"files": {"a": Z}, "git_commit": "zzz"}, None, 422,
     "invalid_input"),
    ("POST", "/api/v1/adapters/x/versions", {"files": {"a": Z}, "ci_run_url": "ftp://x"}, None,
     422, "invalid_input"),
    ("POST", "/api/v1/adapters/x/versions", {"files": {"a": Z}, "metadata": {"k": 1}}, None, 422,
     "invalid_input"),
    ("POST", "/api/v1/adapters/x/versions", {"files": {"a": Z, "a/b": Z}}, None, 422,
     "invalid_path"),
    ("HEAD", "/api/v1/blobs/sha256:abc", None, None, 422, None),
    ("PUT", "/api/v1/blobs/md5:abc", None, None, 422, "invalid_digest"),
    ("GET", "/api/v1/blobs/sizes/99999999999999999999", None, None, 422, "invalid_input"),
    ("GET", "/api/v1/blobs/sizes/-5", None, None, 422, "invalid_input"),
    ("DELETE", "/api/v1/adapters", None, None, 405, "method_not_allowed"),
]


def _check(url: str, method: str, path: str, body, headers, status: int, code: str | None):
    r = httpx.request(method, url + path, json=body, headers=headers, timeout=30)
    assert r.status_code == status, (r.status_code, r.text)
    if method != "HEAD":
        assert set(r.json()) == {"error", "detail"}, r.text
        assert r.json()["error"] == code, r.text


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "code"),
                         JUNK_REQUESTS,
                         ids=[f"{c[0]} {c[1][:40]} {str(c[2])[:40]}" for c in JUNK_REQUESTS])
def test_junk_is_a_clear_4xx(live_server, method, path, body, headers, status, code):
    _check(live_server.url, method, path, body, headers, status, code)
    assert httpx.get(f"{live_server.url}/api/v1/adapters").json() == []
    assert httpx.get(f"{live_server.url}/api/v1/base-models").json() == []


TINY = b"tiny!"  # a stored 5-byte blob
CONFIG = b'{"model_type": "llama"}'  # a stored config.json, with no weights beside it

# Cases whose malformed part is reached only when what they name exists: adapter x:1 and base
# model b are registered, TINY and CONFIG are stored (placeholders: "<tiny>", "<config>").
JUNK_BEHIND_LOOKUPS = [
    ("GET", "/api/v1/adapters/x/versions/2/tensors", None, None, 404, "version_not_found"),
    ("GET", "/api/v1/adapters/x/versions/2/lineage", None, None, 404, "version_not_found"),
    ("GET", "/api/v1/adapters/x/versions/latest/compat?base=b&base_revision=nope", None, None,
     404, "base_model_not_found"),
    ("GET", "/api/v1/adapters/x/versions/1/compat?base=Bad%20Base", None, None, 422,
     "invalid_name"),
    ("GET", "/api/v1/base-models/b/tensors?revision=r", None, None, 404, "base_model_not_found"),
    ("POST", "/api/v1/base-models",
     {"name": "c", "source": "file:///x", "files": {"config.json": "<config>"}}, None, 422,
     "invalid_base_model"),
    ("GET", "/api/v1/blobs/<tiny>", None, {"Range": "bytes=10-20"}, 416,
     "range_not_satisfiable"),
]


@pytest.fixture
def stocked(live_server, adapters_dir, base_dirs) -> dict[str, str]:
    url = live_server.url
    r = push_raw(url, "x", read_dir(adapters_dir["lora"]))
    assert r.status_code == 201, r.text
    files = read_dir(base_dirs["llama"])
    for data in [*files.values(), TINY, CONFIG]:
        assert httpx.put(f"{url}/api/v1/blobs/{digest_of(data)}", content=data).status_code in (
            200, 201)
    r = httpx.post(f"{url}/api/v1/base-models", json={
        "name": "b", "source": "file:///b", "files": {p: digest_of(d) for p, d in files.items()}})
    assert r.status_code == 201, r.text
    return {"<tiny>": digest_of(TINY), "<config>": digest_of(CONFIG)}


def _fill(value, names: dict[str, str]):
    if isinstance(value, str):
        for placeholder, digest in names.items():
            value = value.replace(placeholder, digest)
        return value
    if isinstance(value, dict):
        return {k: _fill(v, names) for k, v in value.items()}
    return value


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "code"),
                         JUNK_BEHIND_LOOKUPS,
                         ids=[f"{c[0]} {c[1][:50]} {str(c[2])[:30]}" for c in JUNK_BEHIND_LOOKUPS])
def test_junk_behind_lookups_is_a_clear_4xx(live_server, stocked, method, path, body, headers,
                                            status, code):
    _check(live_server.url, method, _fill(path, stocked), _fill(body, stocked), headers, status,
           code)
    assert [a["name"] for a in httpx.get(f"{live_server.url}/api/v1/adapters").json()] == ["x"]
    assert [b["name"] for b in httpx.get(f"{live_server.url}/api/v1/base-models").json()] == ["b"]


def test_ranges_on_a_stored_blob(live_server):
    data = bytes(range(256)) * 40

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
