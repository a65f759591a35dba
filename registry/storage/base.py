"""The blob-store contract: digest helpers, BlobStore/BlobWriter protocols, shared writer logic."""

from __future__ import annotations

import contextlib
import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from registry.errors import DigestMismatch, InvalidDigest, InvalidInput, StorageError, TooLarge

MiB = 1024 * 1024
DEFAULT_CHUNK = 1 * MiB

DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
DIGEST_RE = re.compile(DIGEST_PATTERN)


def parse_digest(digest: str) -> str:
    """Validate a digest and return its hex part.

    Args:
        digest: ``sha256:`` followed by 64 lowercase hex digits.

    Returns:
        The 64 hex digits, safe to use as a file name or object key.

    Raises:
        InvalidDigest: for anything else (other algorithms, uppercase, path fragments, ...).
    """
    # fullmatch, not match: "$" would also accept a trailing newline.
    if not isinstance(digest, str) or DIGEST_RE.fullmatch(digest) is None:
        raise InvalidDigest(f"invalid digest {digest!r}; expected sha256:<64 lowercase hex digits>")
    return digest[len("sha256:") :]


def format_digest(hexdigest: str) -> str:
    """Return ``sha256:<hexdigest>``.

    Args:
        hexdigest: 64 lowercase hex digits, as ``hashlib.sha256().hexdigest()`` returns.

    Returns:
        The digest in the registry's canonical form.
    """
    return f"sha256:{hexdigest}"


def manifest_digest(files: Mapping[str, str]) -> str:
    """The digest of a file manifest (path -> digest): equal for equal content, in any order.

    Identifies a version's content (idempotent pushes) and an uploaded base checkpoint.
    """
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(f"{path}\t{files[path]}\n".encode())
    return format_digest(h.hexdigest())


def sha256_file(path: Path, *, chunk: int = DEFAULT_CHUNK) -> tuple[str, int]:
    """Hash a file without reading it into memory.

    Args:
        path: The file to hash.
        chunk: How many bytes to read at a time.

    Returns:
        ``("sha256:<hex>", size_in_bytes)``.

    Raises:
        OSError: if the file cannot be read.
    """
    h = hashlib.sha256()
    size = 0
    with Path(path).open("rb") as f:
        while data := f.read(chunk):
            h.update(data)
            size += len(data)
    return format_digest(h.hexdigest()), size


@dataclass(frozen=True)
class BlobStat:
    """What a store knows about one committed blob."""

    digest: str
    size: int
    modified: datetime  # tz-aware, UTC


class BlobWriter(Protocol):
    """An upload in progress; nothing is visible until :meth:`commit` verifies the digest.

    ``digest`` is None for an upload whose digest is learned from its content (see
    ``BlobStore.new_blob_writer``) until seal() or commit() sets it.

    ``commit()`` is ``seal()`` then ``publish()``. The two halves exist so the slow part
    (verifying, making the bytes durable) happens before the caller takes the blob's row lock,
    and only the quick, atomic part (a rename, completing a multipart upload) under it.
    """

    digest: str | None
    size: int

    def write(self, data: bytes) -> None: ...

    def seal(self) -> int: ...

    def publish(self) -> None: ...

    def commit(self) -> int: ...

    def abort(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class BlobStore(Protocol):
    """Content-addressed blob storage; every method validates the digest first."""

    url: str

    def exists(self, digest: str) -> bool: ...

    def stat(self, digest: str) -> BlobStat: ...

    def writer(self, digest: str, *, max_size: int | None = None) -> BlobWriter: ...

    # True when new_blob_writer is supported and costs no more than writer (the client may then
    # send a new file without hashing it first).
    digest_after_upload: bool

    def new_blob_writer(self, *, max_size: int | None = None) -> BlobWriter: ...

    def put_file(self, digest: str, path: Path, *, max_size: int | None = None) -> int: ...

    def iter_chunks(self, digest: str, *, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]: ...

    def read_range(self, digest: str, offset: int, length: int) -> bytes: ...

    def delete(self, digest: str) -> None: ...

    def iter_blobs(self) -> Iterator[BlobStat]: ...

    def check(self) -> None: ...

    def cleanup_temp(self, older_than_seconds: float = 3600) -> int: ...


class HashingWriter(ABC):
    """Shared BlobWriter logic: size limit, running hash, verify-then-publish, abort on error.

    Subclasses implement only the storage side: ``_write`` (accept bytes), ``_seal`` (make what
    was written durable, not yet visible), ``_publish`` (make the verified blob visible) and
    ``_discard`` (drop everything temporary; must not raise).
    """

    def __init__(self, digest: str | None, *, max_size: int | None = None) -> None:
        if digest is not None:
            parse_digest(digest)
        if max_size is not None and max_size < 0:
            raise InvalidInput("max_size must not be negative")
        self.digest = digest
        self.max_size = max_size
        self.size = 0
        self._hash = hashlib.sha256()
        self._state = "open"  # -> "sealed" -> "committed", or "aborted"

    # --- storage side ---------------------------------------------------------------------

    @abstractmethod
    def _write(self, data: bytes) -> None: ...

    def _seal(self) -> None:  # noqa: B027 - optional: stores with nothing to flush skip it
        """Make everything written durable before publishing (default: nothing to do)."""

    @abstractmethod
    def _publish(self) -> None: ...

    @abstractmethod
    def _discard(self) -> None: ...

    # --- BlobWriter -----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Append data to the upload.

        Args:
            data: The next bytes of the blob.

        Raises:
            TooLarge: once the total would exceed ``max_size``; the upload is aborted.
            StorageError: if the store fails; the upload is aborted.
        """
        self._require_open()
        if not data:
            return
        if self.max_size is not None and self.size + len(data) > self.max_size:
            self.abort()
            raise TooLarge(f"{self._what} exceeds the limit of {self.max_size} bytes")
        self._hash.update(data)
        self.size += len(data)
        try:
            self._write(data)
        except BaseException:
            self.abort()
            raise

    def seal(self) -> int:
        """Verify the digest and make the bytes durable; nothing is visible yet.

        Returns:
            The blob's size in bytes.

        Raises:
            DigestMismatch: if what was written does not hash to the digest; the upload is aborted.
            StorageError: if the store fails; the upload is aborted.
        """
        if self._state in ("sealed", "committed"):
            return self.size
        self._require_open()
        actual = format_digest(self._hash.hexdigest())
        if self.digest is None:  # an upload named by its content
            self.digest = actual
        elif actual != self.digest:
            self.abort()
            raise DigestMismatch(f"expected {self.digest}, received content hashes to {actual}")
        try:
            self._seal()
        except BaseException:
            self.abort()
            raise
        self._state = "sealed"
        return self.size

    def publish(self) -> None:
        """Make the sealed blob visible (atomically); idempotent after success.

        If the blob already exists, the existing one is kept: same digest, same bytes.

        Raises:
            StorageError: if the store fails; the upload is aborted.
        """
        if self._state == "committed":
            return
        if self._state != "sealed":
            raise RuntimeError(f"the {self._what} must be sealed before it is published")
        try:
            self._publish()
        except BaseException:
            self.abort()
            raise
        self._state = "committed"

    def commit(self) -> int:
        """Verify the digest and make the blob visible (``seal()`` then ``publish()``).

        If the blob already exists the received bytes are still verified, then the existing
        blob is kept; concurrent uploads of the same content are therefore safe.

        Returns:
            The blob's size in bytes.

        Raises:
            DigestMismatch: if what was written does not hash to the digest; the upload is aborted.
            StorageError: if the store fails; the upload is aborted.
        """
        size = self.seal()
        self.publish()
        return size


    def abort(self) -> None:
        """Drop the upload and everything temporary; idempotent, a no-op after commit."""
        if self._state not in ("open", "sealed"):
            return
        self._state = "aborted"
        self._discard()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Leaving the block without commit() (exception or not) must never publish anything.
        self.abort()

    def _require_open(self) -> None:
        if self._state != "open":
            # A caller bug, not a storage failure: don't report it as one.
            raise RuntimeError(f"the {self._what} is already {self._state}")

    @property
    def _what(self) -> str:
        return "upload" if self.digest is None else f"blob {self.digest}"


def put_file_via_writer(writer: BlobWriter, path: Path, *, chunk: int = DEFAULT_CHUNK) -> int:
    """Stream a file through a writer and commit it.

    Args:
        writer: A fresh writer; it is aborted if anything fails.
        path: The file to upload.
        chunk: How many bytes to read at a time.

    Returns:
        The blob's size in bytes.

    Raises:
        DigestMismatch, TooLarge, StorageError: as the writer raises them.
        OSError: if the source file cannot be read.
    """
    with writer, Path(path).open("rb") as f:
        while data := f.read(chunk):
            writer.write(data)
        return writer.commit()


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...

    def close(self) -> None: ...


class ChunkIterator(Iterator[bytes]):
    """Yields a stream in bounded chunks and closes it at EOF, on error, or on ``close()``.

    A plain generator would not release its stream if it was never started; this class can.
    """

    def __init__(
        self,
        stream: _Readable,
        chunk_size: int,
        translate: Callable[[Exception], Exception] | None = None,
    ) -> None:
        self._stream: _Readable | None = stream
        self._chunk_size = chunk_size
        self._translate = translate or (lambda exc: StorageError(f"reading a blob failed: {exc}"))

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> bytes:
        if self._stream is None:
            raise StopIteration
        try:
            data = self._stream.read(self._chunk_size)
        except Exception as exc:
            self.close()
            translated = self._translate(exc)
            if translated is exc:
                raise
            raise translated from exc
        if not data:
            self.close()
            raise StopIteration
        return data

    def close(self) -> None:
        """Release the underlying stream; idempotent."""
        stream, self._stream = self._stream, None
        if stream is not None:
            # Nothing useful to do on failure: the data was already delivered or abandoned.
            with contextlib.suppress(Exception):
                stream.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def check_chunk_size(chunk_size: int) -> None:
    """Reject a non-positive chunk size.

    Args:
        chunk_size: The requested chunk size.

    Raises:
        InvalidInput: if it is not a positive integer.
    """
    if chunk_size <= 0:
        raise InvalidInput("chunk_size must be positive")


def check_range(offset: int, length: int) -> None:
    """Reject a negative offset or length.

    Args:
        offset: First byte to read.
        length: Number of bytes to read.

    Raises:
        InvalidInput: if either is negative.
    """
    if offset < 0 or length < 0:
        raise InvalidInput(f"invalid range: offset={offset}, length={length}")
