"""S3BlobStore: blobs as S3 objects, published by completing a multipart upload once verified.

Layout in the bucket::

    <prefix>/blobs/sha256/<hex>    one object per blob, named by its 64 hex digits

(``blobs/sha256/<hex>`` when the prefix is empty). Uploads in progress are S3 multipart uploads
on that same key; S3 creates the object only when ``complete_multipart_upload`` is called,
which happens only after the digest matched, so a blob is never visible unverified.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from registry.errors import BlobNotFound, InsufficientStorage, InvalidInput, StorageError
from registry.storage.base import (
    DEFAULT_CHUNK,
    BlobStat,
    ChunkIterator,
    HashingWriter,
    MiB,
    check_chunk_size,
    check_range,
    format_digest,
    parse_digest,
    put_file_via_writer,
)

log = logging.getLogger(__name__)

MIN_PART_BYTES = 5 * MiB  # S3's minimum for every part but the last
MAX_PARTS = 10_000  # S3's limit on parts per upload
DEFAULT_PART_BYTES = 8 * MiB
DEFAULT_UPLOAD_IDLE_SECONDS = 600.0

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
# MinIO answers 507 XMinioStorageFull when its disks are full.
_FULL_CODES = frozenset({"XMinioStorageFull", "QuotaExceeded", "XMinioAdminBucketQuotaExceeded"})


_URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _translate(exc: Exception, action: str, digest: str | None = None) -> Exception:
    """Map a botocore exception to a RegistryError with a one-line message."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        if digest is not None and code in _NOT_FOUND_CODES:
            return BlobNotFound(f"blob {digest} not found")
        if code == "NoSuchBucket":
            bucket = error.get("BucketName", "")
            return StorageError(_one_line(f"S3 {action} failed: bucket {bucket!r} does not exist"))
        message = error.get("Message") or ""
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        cls = InsufficientStorage if status == 507 or code in _FULL_CODES else StorageError
        return cls(_one_line(f"S3 {action} failed: {code} {message}"))
    if isinstance(exc, BotoCoreError | OSError):
        # botocore puts the request URL in its messages: endpoint, bucket, key, upload id.
        reason = _URL.sub("<url>", str(exc)).replace('"<url>"', "<url>")
        return StorageError(_one_line(f"S3 {action} failed: {type(exc).__name__}: {reason}"))
    return exc


@contextlib.contextmanager
def _s3_errors(action: str, digest: str | None = None) -> Iterator[None]:
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise _translate(exc, action, digest) from exc


class S3BlobWriter(HashingWriter):
    """Buffers up to one part while the previous part uploads on a background thread.

    A multipart upload starts once a full part is ready. At most one part is in flight, so
    memory stays at two parts whatever the blob's size, and receiving the next part overlaps
    sending the last one (boto3 clients are thread-safe). An upload error surfaces at the next
    part or at commit, and aborts the upload.
    """

    def __init__(self, store: S3BlobStore, digest: str, *, max_size: int | None = None) -> None:
        super().__init__(digest, max_size=max_size)
        self._store = store
        self._client = store.client
        self._bucket = store.bucket
        self._key = store.key_for(digest)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._next_part = 1
        self._sender: ThreadPoolExecutor | None = None
        self._inflight: Future[dict[str, Any]] | None = None

    def _write(self, data: bytes) -> None:
        part_bytes = self._store.part_bytes
        self._buffer += data
        while len(self._buffer) >= part_bytes:
            part = self._buffer[:part_bytes]
            del self._buffer[:part_bytes]
            self._upload_part(part)

    def _upload_part(self, body: bytearray) -> None:
        if self._next_part > MAX_PARTS:
            raise StorageError(
                f"blob {self.digest} needs more than {MAX_PARTS} parts of "
                f"{self._store.part_bytes} bytes; raise the S3 part size"
            )
        if self._upload_id is None:
            with _s3_errors("upload"):
                resp = self._client.create_multipart_upload(Bucket=self._bucket, Key=self._key)
            self._upload_id = resp["UploadId"]
        self._wait_for_part()
        if self._sender is None:
            self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3-part")
        self._inflight = self._sender.submit(self._send_part, self._upload_id,
                                             self._next_part, body)
        self._next_part += 1

    def _send_part(self, upload_id: str, number: int, body: bytearray) -> dict[str, Any]:
        with _s3_errors("upload"):
            resp = self._client.upload_part(
                Bucket=self._bucket, Key=self._key, UploadId=upload_id, PartNumber=number,
                Body=body,
            )
        return {"PartNumber": number, "ETag": resp["ETag"]}

    def _wait_for_part(self) -> None:
        """Wait for the part in flight, if any; raises its error."""
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            self._parts.append(inflight.result())

    def _stop_sender(self) -> None:
        if self._sender is not None:
            self._sender.shutdown(wait=True)
            self._sender = None

    def _seal(self) -> None:
        # Every part but a small blob's only one is sent now; publishing completes the upload.
        if self._upload_id is not None:
            if self._buffer:
                self._upload_part(self._buffer)
                self._buffer = bytearray()
            self._wait_for_part()
            self._stop_sender()

    def _publish(self) -> None:
        assert self.digest is not None  # S3 uploads always name their digest up front
        if self._store.exists(self.digest):
            # Same digest, same bytes: keep the existing object, drop our upload.
            self._discard()
            return
        if self._upload_id is None:
            # Smaller than one part: a single PUT is atomic too.
            with _s3_errors("upload"):
                self._client.put_object(Bucket=self._bucket, Key=self._key, Body=self._buffer)
        else:
            with _s3_errors("upload"):
                self._client.complete_multipart_upload(
                    Bucket=self._bucket,
                    Key=self._key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
            self._upload_id = None
        self._buffer = bytearray()

    def _discard(self) -> None:
        self._buffer = bytearray()
        # Let a part in flight finish (its error, if any, is not the one to report) before
        # the abort, so no part lands after it.
        with contextlib.suppress(Exception):
            self._wait_for_part()
        self._stop_sender()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None:
            return
        try:
            self._client.abort_multipart_upload(
                Bucket=self._bucket, Key=self._key, UploadId=upload_id
            )
        except (ClientError, BotoCoreError) as exc:
            # Never mask the error that led here; cleanup_temp() retries later.
            log.warning(
                "could not abort S3 upload %s of %s: %s",
                upload_id,
                self._key,
                _translate(exc, "abort"),
            )


class S3BlobStore:
    """A BlobStore in an S3 (or S3-compatible) bucket, using the boto3 client it is given."""

    def __init__(
        self,
        client: Any,
        *,
        bucket: str,
        prefix: str = "",
        part_bytes: int = DEFAULT_PART_BYTES,
        upload_idle_seconds: float = DEFAULT_UPLOAD_IDLE_SECONDS,
    ) -> None:
        """Create a store over an existing bucket.

        Args:
            client: A boto3 S3 client; the store never creates its own.
            bucket: The bucket; it must already exist (see :meth:`check`).
            prefix: Key prefix, so one bucket can hold several registries.
            part_bytes: Multipart part size, and the most an upload buffers in memory.
            upload_idle_seconds: A multipart upload that has sent no part for this long is
                taken as abandoned by :meth:`cleanup_temp`, whatever age it is asked for (S3
                cannot tell a live upload from a dead one otherwise).

        Raises:
            InvalidInput: for an empty bucket name or a part size under 5 MiB.
        """
        if not bucket:
            raise InvalidInput("an S3 blob store needs a bucket name")
        if part_bytes < MIN_PART_BYTES:
            raise InvalidInput(f"S3 part size must be at least {MIN_PART_BYTES} bytes")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_bytes = part_bytes
        self.upload_idle_seconds = upload_idle_seconds
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._blob_prefix = f"{self.prefix}/blobs/sha256/" if self.prefix else "blobs/sha256/"

    def __repr__(self) -> str:
        return f"S3BlobStore({self.url!r})"

    def key_for(self, digest: str) -> str:
        """Return the object key of a blob, whether or not it exists.

        Args:
            digest: The blob's digest.

        Returns:
            ``<prefix>/blobs/sha256/<hex>``.

        Raises:
            InvalidDigest: if the digest is malformed.
        """
        return self._blob_prefix + parse_digest(digest)

    def exists(self, digest: str) -> bool:
        """Report whether a committed blob exists.

        Args:
            digest: The blob's digest.

        Returns:
            True if the object exists.

        Raises:
            InvalidDigest: if the digest is malformed.
            StorageError: if S3 fails (a missing bucket also reads as "no such blob" here,
                because HEAD responses carry no error code; :meth:`check` tells them apart).
        """
        try:
            self.stat(digest)
        except BlobNotFound:
            return False
        return True

    def stat(self, digest: str) -> BlobStat:
        """Return a blob's size and modification time.

        Args:
            digest: The blob's digest.

        Returns:
            The blob's BlobStat.

        Raises:
            InvalidDigest: if the digest is malformed.
            BlobNotFound: if no such blob is stored.
            StorageError: if S3 fails.
        """
        key = self.key_for(digest)
        with _s3_errors("head", digest):
            resp = self.client.head_object(Bucket=self.bucket, Key=key)
        return BlobStat(digest, int(resp["ContentLength"]), _utc(resp["LastModified"]))

    def writer(self, digest: str, *, max_size: int | None = None) -> S3BlobWriter:
        """Start an upload; nothing is visible until the writer's commit() verifies the digest.

        Args:
            digest: The digest the content must hash to.
            max_size: Abort with TooLarge once more than this many bytes are written.

        Returns:
            An S3BlobWriter (also a context manager that aborts unless committed).

        Raises:
            InvalidDigest: if the digest is malformed.
        """
        return S3BlobWriter(self, digest, max_size=max_size)

    # Objects are keyed by digest from the first part on; naming one after the upload would
    # mean a temporary key and a server-side copy of the whole object. Clients hash first.
    digest_after_upload = False

    def new_blob_writer(self, *, max_size: int | None = None) -> S3BlobWriter:
        """Not supported: an S3 upload needs its digest (its key) before the first part.

        Raises:
            InvalidInput: always; upload with ``writer(digest)`` instead.
        """
        raise InvalidInput(
            "this registry's blob store (S3) needs each blob's digest before its upload: "
            "hash the file and PUT /api/v1/blobs/{digest}"
        )

    def put_file(self, digest: str, path: Path, *, max_size: int | None = None) -> int:
        """Upload a file, streaming it through :meth:`writer`.

        Args:
            digest: The digest the file must hash to.
            path: The file to upload.
            max_size: Refuse files larger than this.

        Returns:
            The blob's size in bytes.

        Raises:
            InvalidDigest, DigestMismatch, TooLarge, StorageError: see :meth:`writer`.
            OSError: if the source file cannot be read.
        """
        return put_file_via_writer(self.writer(digest, max_size=max_size), path)

    def iter_chunks(self, digest: str, *, chunk_size: int = DEFAULT_CHUNK) -> ChunkIterator:
        """Stream a blob; the GET is sent now, so a missing blob raises here, not mid-stream.

        Args:
            digest: The blob's digest.
            chunk_size: Maximum bytes per chunk.

        Returns:
            An iterator of chunks that releases the connection at EOF or on ``close()``.

        Raises:
            InvalidDigest: if the digest is malformed.
            BlobNotFound: if no such blob is stored.
            StorageError: if S3 fails (also while iterating).
        """
        check_chunk_size(chunk_size)
        key = self.key_for(digest)
        with _s3_errors("download", digest):
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
        return ChunkIterator(resp["Body"], chunk_size, lambda exc: _translate(exc, "download"))

    def read_range(self, digest: str, offset: int, length: int) -> bytes:
        """Read part of a blob with a ranged GET.

        Args:
            digest: The blob's digest.
            offset: First byte to read.
            length: Maximum number of bytes to read.

        Returns:
            Up to ``length`` bytes; fewer (possibly none) at or past the end of the blob.

        Raises:
            InvalidDigest: if the digest is malformed.
            InvalidInput: if offset or length is negative.
            BlobNotFound: if no such blob is stored.
            StorageError: if S3 fails.
        """
        check_range(offset, length)
        key = self.key_for(digest)
        if length == 0:
            self.stat(digest)  # still report a missing blob
            return b""
        try:
            resp = self.client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}"
            )
            with contextlib.closing(resp["Body"]) as body:
                return bytes(body.read())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""  # the object exists but the range starts at or past its end
            raise _translate(exc, "ranged read", digest) from exc
        except BotoCoreError as exc:
            raise _translate(exc, "ranged read", digest) from exc

    def delete(self, digest: str) -> None:
        """Delete a blob; a missing blob is not an error.

        Args:
            digest: The blob's digest.

        Raises:
            InvalidDigest: if the digest is malformed.
            StorageError: if S3 fails.
        """
        key = self.key_for(digest)
        with _s3_errors("delete"):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def iter_blobs(self) -> Iterator[BlobStat]:
        """Yield every committed blob under the prefix, in key order.

        Keys that do not belong in the layout are skipped.

        Returns:
            An iterator of BlobStat.

        Raises:
            StorageError: if S3 fails.
        """
        paginator = self.client.get_paginator("list_objects_v2")
        with _s3_errors("list"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._blob_prefix):
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(self._blob_prefix) :]
                    try:
                        digest = format_digest(name)
                        parse_digest(digest)
                    except InvalidInput:
                        continue
                    yield BlobStat(digest, int(obj["Size"]), _utc(obj["LastModified"]))

    def check(self) -> None:
        """Readiness probe: the endpoint answers and the bucket exists and is accessible.

        Raises:
            StorageError: with a one-line reason if not.
        """
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise StorageError(f"S3 bucket {self.bucket!r} does not exist") from exc
            if code in ("403", "AccessDenied"):
                raise StorageError(f"access to S3 bucket {self.bucket!r} is denied") from exc
            raise _translate(exc, f"check of bucket {self.bucket!r}") from exc
        except BotoCoreError as exc:
            raise _translate(exc, f"check of bucket {self.bucket!r}") from exc

    def cleanup_temp(self, older_than_seconds: float = 3600) -> int:
        """Abort multipart uploads under the prefix left by crashed uploads.

        An upload is abandoned when it started before the cutoff and its newest part (if any)
        is older than both the cutoff and ``upload_idle_seconds``: a live upload sends a part
        every few seconds, so it is never aborted however small the age asked for.

        Args:
            older_than_seconds: Only uploads initiated at least this long ago are aborted.

        Returns:
            How many uploads were aborted.

        Raises:
            StorageError: if S3 fails.
        """
        now = datetime.now(UTC)
        cutoff = now - timedelta(seconds=older_than_seconds)
        idle_cutoff = min(cutoff, now - timedelta(seconds=self.upload_idle_seconds))
        aborted = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        with _s3_errors("cleanup of uploads"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._blob_prefix):
                for upload in page.get("Uploads", []):
                    if _utc(upload["Initiated"]) > cutoff:
                        continue
                    if self._last_activity(upload) > idle_cutoff:
                        continue  # still sending parts: a live upload
                    try:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                    except ClientError as exc:
                        # Finished or aborted by its writer meanwhile.
                        if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
                            continue
                        raise
                    aborted += 1
        return aborted

    def _last_activity(self, upload: dict[str, Any]) -> datetime:
        """When the upload last sent a part (its start when it has none)."""
        newest = _utc(upload["Initiated"])
        try:
            parts = self.client.list_parts(Bucket=self.bucket, Key=upload["Key"],
                                           UploadId=upload["UploadId"])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
                return newest
            raise
        for part in parts.get("Parts", []):
            newest = max(newest, _utc(part["LastModified"]))
        return newest


def _utc(value: datetime) -> datetime:
    # botocore returns tz-aware datetimes; be defensive about naive ones all the same.
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
