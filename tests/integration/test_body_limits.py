"""The JSON body limit holds on the bytes actually read: a chunked body (no Content-Length) over
8 MiB is a 413 ``too_large`` read in constant memory; blob uploads keep their own limit."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from registry.api.app import MAX_JSON_BODY
from tests.integration.helpers import (
    digest_of,
    put_blob,
    read_dir,
    start_server,
    stop_server,
    version_count,
)

MiB = 1024 * 1024

# Every route that parses a JSON body (blob uploads under /api/v1/blobs/ stream instead).
JSON_ROUTES = [
    "/api/v1/adapters/x/versions",
    "/api/v1/base-models",
    "/api/v1/exports",
    "/api/v1/admin/gc",
]


def chunked(total: int, chunk: int = MiB, fill: bytes = b" ") -> Iterator[bytes]:
    """A body httpx sends with Transfer-Encoding: chunked (a generator has no length)."""
    yield b"{"
    block = fill * chunk
    sent = 1
    while sent < total - 1:
        part = block[: min(chunk, total - 1 - sent)]
        sent += len(part)
        yield part
    yield b"}"


@pytest.mark.parametrize("route", JSON_ROUTES)
def test_chunked_body_over_the_limit_is_413(live_server, route):
    r = httpx.post(live_server.url + route, content=chunked(MAX_JSON_BODY + 4 * MiB),
                   headers={"content-type": "application/json"}, timeout=60)
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in r.request.headers
    assert r.status_code == 413, r.text
    assert r.json() == {"error": "too_large",
                        "detail": f"request body over {MAX_JSON_BODY} bytes"}
    assert httpx.get(f"{live_server.url}/api/v1/adapters").json() == []
    assert httpx.get(f"{live_server.url}/healthz").status_code == 200


def test_chunked_body_under_the_limit_still_works(live_server, adapters_dir):
    files = read_dir(adapters_dir["lora"])
    for data in files.values():
        assert put_blob(live_server.url, data).status_code == 201
    body = httpx.Request("POST", "/", json={
        "files": {p: digest_of(d) for p, d in files.items()}}).content
    # Padded with JSON whitespace to a few MiB, sent in 64 KiB chunks without a length.
    padded = body[:-1] + b" " * (3 * MiB) + b"}"
    pieces = (padded[i : i + 65536] for i in range(0, len(padded), 65536))
    r = httpx.post(f"{live_server.url}/api/v1/adapters/chunky/versions", content=pieces,
                   headers={"content-type": "application/json"}, timeout=60)
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 201, r.text
    assert version_count(live_server.url, "chunky") == 1


def test_chunked_blob_upload_is_not_held_to_the_json_limit(live_server):
    data = os.urandom(MAX_JSON_BODY + 3 * MiB)
    pieces = (data[i : i + MiB] for i in range(0, len(data), MiB))
    r = httpx.put(f"{live_server.url}/api/v1/blobs/{digest_of(data)}", content=pieces,
                  timeout=60)
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 201, r.text
    head = httpx.head(f"{live_server.url}/api/v1/blobs/{digest_of(data)}")
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(data)





def test_a_200_mib_chunked_body_leaves_the_server_rss_flat(tmp_path: Path):
    """A server process (embedded shape) gets a 200 MiB chunked JSON body: it answers 413 and its
    resident memory, sampled all along, grows by at most a few times the limit."""
    import psutil

    server, url = start_server({**os.environ, "REGISTRY_HOME": str(tmp_path / "home")},
                               "--host", "127.0.0.1")
    try:
        # Warm up every code path the big request takes, so the baseline includes them.
        for _ in range(3):
            httpx.post(f"{url}/api/v1/adapters/x/versions", content=chunked(2 * MiB),
                       headers={"content-type": "application/json"}, timeout=60)
            httpx.post(f"{url}/api/v1/adapters/x/versions", content=chunked(MAX_JSON_BODY + MiB),
                       headers={"content-type": "application/json"}, timeout=60)
        proc = psutil.Process(server.pid)
        time.sleep(0.5)
        baseline = proc.memory_info().rss
        peak = baseline
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, proc.memory_info().rss)
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            r = httpx.post(f"{url}/api/v1/adapters/x/versions", content=chunked(200 * MiB),
                           headers={"content-type": "application/json"}, timeout=120)
        finally:
            stop.set()
            sampler.join()
        assert r.status_code == 413 and r.json()["error"] == "too_large", r.text
        growth = peak - baseline
        assert growth <= 4 * MAX_JSON_BODY, f"RSS grew by {growth / MiB:.0f} MiB"
        # The server still works afterwards.
        assert httpx.get(f"{url}/api/v1/adapters").json() == []
    finally:
        stop_server(server)
