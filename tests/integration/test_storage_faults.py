"""A blob store that goes away answers 503 storage_unavailable with a generic detail: the
endpoint, bucket and upload id stay in the server log, out of the response."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from registry.config import Settings
from registry.context import RegistryContext
from tests.integration.helpers import digest_of, put_blob, serve
from tests.integration.tcp_proxy import TcpProxy

MiB = 1024 * 1024


def _leaks(text: str, proxy: TcpProxy, bucket: str) -> list[str]:
    return [secret for secret in (str(proxy.port), "127.0.0.1", bucket, "uploadId", "http://")
            if secret in text]


def test_a_store_gone_mid_upload_is_a_generic_503(tmp_path, monkeypatch, pg_migrated,
                                                  s3_bucket, s3_endpoint):
    target = urlsplit(s3_endpoint)
    proxy = TcpProxy((target.hostname or "127.0.0.1", target.port or 80))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    settings = Settings(home=tmp_path / "home", database_url=pg_migrated, auto_migrate=False,
                        blob_url=f"s3://{s3_bucket}/t-{uuid.uuid4().hex[:12]}",
                        s3_part_bytes=5 * MiB)
    context = RegistryContext.open(settings)
    try:
        with serve(context) as base:
            stored = b"stored before the outage"
            assert put_blob(base, stored).status_code == 201
            assert httpx.get(f"{base}/readyz", timeout=30).status_code == 200

            data = bytes(range(256)) * (64 * 1024)  # 16 MiB: parts of 5 MiB

            def body() -> Iterator[bytes]:
                # The server writes in 4 MiB batches: two of them make a first 5 MiB part,
                # which opens a multipart upload (so the next failure names its upload id).
                yield data[: 10 * MiB]
                time.sleep(1)
                proxy.hang_up()
                yield data[10 * MiB :]

            r = httpx.put(f"{base}/api/v1/blobs/{digest_of(data)}", content=body(), timeout=120)
            assert r.status_code == 503, r.text
            assert r.json() == {"error": "storage_unavailable",
                                "detail": "the blob store is unavailable; try again later"}
            assert not _leaks(r.text, proxy, s3_bucket), r.text

            r = httpx.get(f"{base}/api/v1/blobs/{digest_of(stored)}", timeout=60)
            assert r.status_code == 503 and r.json()["error"] == "storage_unavailable", r.text
            assert not _leaks(r.text, proxy, s3_bucket), r.text

            ready = httpx.get(f"{base}/readyz", timeout=60)
            assert ready.status_code == 503
            assert ready.json()["checks"]["blob_store"] == "error: storage_unavailable"
            assert not _leaks(ready.text, proxy, s3_bucket), ready.text

            proxy.forward()
            assert httpx.get(f"{base}/readyz", timeout=30).status_code == 200
            assert put_blob(base, data).status_code == 201
            assert httpx.head(f"{base}/api/v1/blobs/{digest_of(data)}").status_code == 200
    finally:
        context.close()
        proxy.close()


@pytest.mark.parametrize("error", ["EndpointConnectionError", "ConnectionClosedError"])
def test_s3_error_messages_drop_urls(error):
    import botocore.exceptions

    from registry.storage.s3 import _translate

    url = "http://10.1.2.3:9000/bucket/blobs/sha256/ab?uploadId=XYZ&partNumber=2"
    exc = getattr(botocore.exceptions, error)(endpoint_url=url)
    assert "uploadId=XYZ" in str(exc)  # what botocore says
    translated = _translate(exc, "upload")
    assert translated.detail.startswith(f"S3 upload failed: {error}: ")
    assert "uploadId" not in translated.detail and "10.1.2.3" not in translated.detail
