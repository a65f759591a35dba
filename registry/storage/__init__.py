"""Blob storage: the BlobStore contract, its local and S3 implementations, and open_blob_store()."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from registry.errors import InvalidInput
from registry.storage.base import (
    DEFAULT_CHUNK,
    DIGEST_RE,
    BlobStat,
    BlobStore,
    BlobWriter,
    MiB,
    manifest_digest,
    parse_digest,
    sha256_file,
)
from registry.storage.local import LocalBlobStore, LocalBlobWriter

# boto3 takes a quarter of a second to import: the S3 parts load on first use, so commands that
# never touch S3 (most CLI calls) start faster.
DEFAULT_PART_BYTES = 8 * MiB
_LAZY = {"S3BlobStore", "S3BlobWriter"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from registry.storage import s3  # imports boto3: on first use, not at start-up

        return getattr(s3, name)
    raise AttributeError(name)

__all__ = [
    "DEFAULT_CHUNK",
    "DIGEST_RE",
    "BlobStat",
    "BlobStore",
    "BlobWriter",
    "LocalBlobStore",
    "LocalBlobWriter",
    "MiB",
    "S3BlobStore",
    "S3BlobWriter",
    "make_s3_client",
    "manifest_digest",
    "open_blob_store",
    "parse_digest",
    "sha256_file",
]


def make_s3_client(endpoint_url: str | None = None) -> Any:
    """Build a boto3 S3 client from the standard AWS environment.

    Credentials and region come from the usual chain (AWS_ACCESS_KEY_ID, AWS_PROFILE, instance
    roles, ...).

    Args:
        endpoint_url: An S3-compatible endpoint (MinIO, moto); defaults to AWS_ENDPOINT_URL_S3,
            then AWS_ENDPOINT_URL, then AWS itself.

    Returns:
        A boto3 S3 client with retries, using path-style addressing when an endpoint is set.
    """
    # Recent boto3 reads these variables itself; reading them here as well tells us whether
    # the target is S3-compatible, which needs path-style addressing.
    endpoint = (
        endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or None
    )
    # boto3 takes a quarter of a second to import: on first use, not at start-up.
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        s3={"addressing_style": "path"} if endpoint else None,
    )
    # A fresh session per client: the default session is not thread-safe.
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)


def open_blob_store(url: str, *, part_bytes: int = DEFAULT_PART_BYTES,
                    upload_idle_seconds: float = 600.0) -> BlobStore:
    """Open the blob store a URL names.

    Args:
        url: ``file:///abs/dir``, a plain absolute path, or ``s3://bucket[/prefix]``.
        part_bytes: S3 multipart part size (at least 5 MiB); ignored for local stores.
        upload_idle_seconds: S3 only: how long a multipart upload may send nothing before
            gc takes it as abandoned (a local store knows its live uploads by their locks).

    Returns:
        A LocalBlobStore or an S3BlobStore; nothing is contacted or created yet.

    Raises:
        InvalidInput: for any other URL, a relative path, or an S3 URL without a bucket.
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidInput("blob store URL is empty")
    url = url.strip()
    if url.startswith("/"):
        return LocalBlobStore(Path(url))
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidInput(f"blob store URL {url!r}: file URLs must not name a remote host")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise InvalidInput(f"blob store URL {url!r}: the path must be absolute")
        return LocalBlobStore(Path(path))
    if scheme == "s3":
        if not parts.netloc:
            raise InvalidInput(f"blob store URL {url!r}: expected s3://bucket[/prefix]")
        if parts.query or parts.fragment:
            raise InvalidInput(f"blob store URL {url!r}: query strings are not supported")
        from registry.storage.s3 import S3BlobStore  # imports boto3: only for s3:// stores

        return S3BlobStore(
            make_s3_client(),
            bucket=parts.netloc,
            prefix=unquote(parts.path).strip("/"),
            part_bytes=part_bytes,
            upload_idle_seconds=upload_idle_seconds,
        )
    raise InvalidInput(
        f"unsupported blob store URL {url!r}; use file:///absolute/dir, /absolute/dir "
        "or s3://bucket/prefix"
    )
