"""LocalBlobStore: blobs as files under one directory, published by atomic rename.

Layout under the root::

    sha256/ab/cd/abcd...   one file per blob, named by its 64 hex digits and fanned out by
                           the first two byte pairs so no directory grows too large
    tmp/                   uploads in progress: <hex>.<random>.tmp (.new until locked),
                           renamed into place on commit

``tmp/`` lives under the same root so ``os.replace`` stays on one filesystem and is atomic.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from registry.errors import BlobNotFound, InsufficientStorage, StorageError
from registry.storage.base import (
    DEFAULT_CHUNK,
    BlobStat,
    ChunkIterator,
    HashingWriter,
    check_chunk_size,
    check_range,
    format_digest,
    parse_digest,
    put_file_via_writer,
)
from registry.storage.writeback import Writeback

_HEX = frozenset("0123456789abcdef")


def _is_hex64(name: str) -> bool:
    return len(name) == 64 and set(name) <= _HEX


_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _storage_error(action: str, exc: OSError) -> StorageError:
    reason = exc.strerror or exc.__class__.__name__
    cls = InsufficientStorage if exc.errno in _FULL else StorageError
    return cls(f"local blob store: {action} failed: {reason}")


def _translate_read_error(exc: Exception) -> Exception:
    if isinstance(exc, OSError):
        return _storage_error("reading", exc)
    return StorageError(f"local blob store: reading failed: {exc}")


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; some filesystems refuse to fsync a directory.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# An upload's temp file: created as NAME.new, renamed NAME.tmp once its writer holds the lock.
TEMP_SUFFIX = ".tmp"
FRESH_SUFFIX = ".new"
FRESH_GRACE_SECONDS = 3600


class LocalBlobWriter(HashingWriter):
    """Writes to a unique temp file, then fsyncs and renames it into place on commit.

    Writeback starts every 32 MiB while the upload streams in (Linux), so the disk works in
    parallel with the network and the fsync at commit only waits for the tail.
    """

    def __init__(
        self, store: LocalBlobStore, digest: str | None, *, max_size: int | None = None
    ) -> None:
        super().__init__(digest, max_size=max_size)
        self._store = store
        stem = "upload" if digest is None else parse_digest(digest)
        name = f"{stem}.{uuid.uuid4().hex}"
        self._tmp = store.tmp_dir / f"{name}{TEMP_SUFFIX}"
        fresh = store.tmp_dir / f"{name}{FRESH_SUFFIX}"
        try:
            store.tmp_dir.mkdir(parents=True, exist_ok=True)
            self._file = fresh.open("xb", buffering=0)
            # Held until publish or discard: cleanup_temp() never removes a live upload's file,
            # and the lock goes with the process if it dies. The file is created under a name
            # cleanup_temp() leaves alone and gets its .tmp name only once locked: created as
            # .tmp, a cleanup with no grace could take it between the open and the lock.
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(fresh, self._tmp)
        except OSError as exc:
            with contextlib.suppress(OSError, AttributeError):
                self._file.close()
            with contextlib.suppress(OSError):
                fresh.unlink(missing_ok=True)
            raise _storage_error("creating a temp file", exc) from exc
        self._writeback = Writeback(self._file.fileno())

    def _write(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[self._file.write(view) :]
        except OSError as exc:
            raise _storage_error("writing", exc) from exc
        self._writeback.wrote(len(data))

    def _seal(self) -> None:
        try:
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise _storage_error("writing", exc) from exc

    def _publish(self) -> None:
        assert self.digest is not None  # seal() has set it
        final = self._store.path_for(self.digest)
        try:
            if final.is_file():
                # Same digest, same bytes: keep the existing file, drop ours.
                self._tmp.unlink(missing_ok=True)
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self._tmp, final)
                _fsync_dir(final.parent)
            self._file.close()  # releases the temp file's lock, now that it is gone
        except OSError as exc:
            raise _storage_error("publishing", exc) from exc

    def _discard(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self._tmp.unlink(missing_ok=True)


class LocalBlobStore:
    """A BlobStore on the local filesystem; the root is created on first use."""

    def __init__(self, root: Path | str) -> None:
        """Create a store rooted at a directory.

        Args:
            root: The directory to keep blobs in; need not exist yet.
        """
        self.root = Path(root).expanduser().absolute()
        self.blob_dir = self.root / "sha256"
        self.tmp_dir = self.root / "tmp"
        self.url = self.root.as_uri()

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    def path_for(self, digest: str) -> Path:
        """Return where a blob lives, whether or not it exists.

        Args:
            digest: The blob's digest.

        Returns:
            ``<root>/sha256/<hex[0:2]>/<hex[2:4]>/<hex>``.

        Raises:
            InvalidDigest: if the digest is malformed.
        """
        hexpart = parse_digest(digest)
        return self.blob_dir / hexpart[0:2] / hexpart[2:4] / hexpart

    def exists(self, digest: str) -> bool:
        """Report whether a committed blob exists.

        Args:
            digest: The blob's digest.

        Returns:
            True if the blob is stored.

        Raises:
            InvalidDigest: if the digest is malformed.
        """
        return self.path_for(digest).is_file()

    def stat(self, digest: str) -> BlobStat:
        """Return a blob's size and modification time.

        Args:
            digest: The blob's digest.

        Returns:
            The blob's BlobStat.

        Raises:
            InvalidDigest: if the digest is malformed.
            BlobNotFound: if no such blob is stored.
            StorageError: if the filesystem fails.
        """
        path = self.path_for(digest)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found") from None
        except OSError as exc:
            raise _storage_error("stat", exc) from exc
        return BlobStat(digest, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def writer(self, digest: str, *, max_size: int | None = None) -> LocalBlobWriter:
        """Start an upload; nothing is visible until the writer's commit() verifies the digest.

        Args:
            digest: The digest the content must hash to.
            max_size: Abort with TooLarge once more than this many bytes are written.

        Returns:
            A LocalBlobWriter (also a context manager that aborts unless committed).

        Raises:
            InvalidDigest: if the digest is malformed.
            StorageError: if the temp file cannot be created.
        """
        return LocalBlobWriter(self, digest, max_size=max_size)

    # Naming a blob after its upload costs nothing here: the temp file is renamed either way.
    digest_after_upload = True

    def new_blob_writer(self, *, max_size: int | None = None) -> LocalBlobWriter:
        """Start an upload named by its content: commit() computes the digest and publishes.

        Args:
            max_size: Abort with TooLarge once more than this many bytes are written.

        Returns:
            A LocalBlobWriter whose ``digest`` is set by commit().

        Raises:
            StorageError: if the temp file cannot be created.
        """
        return LocalBlobWriter(self, None, max_size=max_size)

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
        """Stream a blob; the file is opened now, so a missing blob raises here, not mid-stream.

        Args:
            digest: The blob's digest.
            chunk_size: Maximum bytes per chunk.

        Returns:
            An iterator of chunks that closes the file at EOF or on ``close()``.

        Raises:
            InvalidDigest: if the digest is malformed.
            BlobNotFound: if no such blob is stored.
            StorageError: if the filesystem fails.
        """
        check_chunk_size(chunk_size)
        path = self.path_for(digest)
        try:
            f = path.open("rb")
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found") from None
        except OSError as exc:
            raise _storage_error("opening", exc) from exc
        return ChunkIterator(f, chunk_size, _translate_read_error)

    def read_range(self, digest: str, offset: int, length: int) -> bytes:
        """Read part of a blob.

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
            StorageError: if the filesystem fails.
        """
        check_range(offset, length)
        path = self.path_for(digest)
        try:
            with path.open("rb") as f:
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found") from None
        except OSError as exc:
            raise _storage_error("reading", exc) from exc

    def delete(self, digest: str) -> None:
        """Delete a blob; a missing blob is not an error.

        Empty fan-out directories are left in place: removing them could race with a writer
        that has just created one.

        Args:
            digest: The blob's digest.

        Raises:
            InvalidDigest: if the digest is malformed.
            StorageError: if the filesystem fails.
        """
        try:
            self.path_for(digest).unlink(missing_ok=True)
        except OSError as exc:
            raise _storage_error("deleting", exc) from exc

    def iter_blobs(self) -> Iterator[BlobStat]:
        """Yield every committed blob, in no particular order.

        Files that do not belong in the layout are skipped, as are blobs deleted mid-walk.

        Returns:
            An iterator of BlobStat.

        Raises:
            StorageError: if the filesystem fails.
        """
        try:
            for a in _subdirs(self.blob_dir):
                for b in _subdirs(a):
                    yield from _blobs_in(b, a.name + b.name)
        except OSError as exc:
            raise _storage_error("listing", exc) from exc

    def check(self) -> None:
        """Readiness probe: the root exists (or can be created) and is writable.

        Raises:
            StorageError: if not.
        """
        try:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            probe = self.tmp_dir / f".probe.{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StorageError(
                f"local blob store at {self.root} is not writable: {exc.strerror or exc}"
            ) from exc

    def cleanup_temp(self, older_than_seconds: float = 3600) -> int:
        """Remove temp files left by crashed uploads.

        A live upload holds an exclusive lock on its temp file (the kernel drops it when the
        process dies), so this never removes one, whatever the age given.

        Args:
            older_than_seconds: Only files not modified for this long are removed.

        Returns:
            How many files were removed.

        Raises:
            StorageError: if the temp directory cannot be listed.
        """
        cutoff = time.time() - older_than_seconds
        removed = 0
        try:
            entries = list(os.scandir(self.tmp_dir))
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise _storage_error("listing temp files", exc) from exc
        # A file still under its fresh name is renamed microseconds after it was created;
        # one left that way (its process died in between) goes after FRESH_GRACE_SECONDS.
        fresh_cutoff = min(cutoff, time.time() - FRESH_GRACE_SECONDS)
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                if entry.name.endswith(TEMP_SUFFIX):
                    limit = cutoff
                elif entry.name.endswith(FRESH_SUFFIX):
                    limit = fresh_cutoff
                else:
                    continue
                if entry.stat().st_mtime > limit:
                    continue
                if _remove_unless_locked(entry.path):
                    removed += 1
            except FileNotFoundError:
                continue  # finished or cleaned up by someone else meanwhile
            except OSError as exc:
                raise _storage_error("removing temp files", exc) from exc
        return removed


def _remove_unless_locked(path: str) -> bool:
    """Unlink a temp file unless a live upload holds its lock; True when removed."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live upload
        os.unlink(path)
        return True
    finally:
        os.close(fd)


def _blobs_in(leaf: Path, fanout: str) -> list[BlobStat]:
    """Stat the blobs in one fan-out directory; ``fanout`` is the four hex digits it stands for."""
    found: list[BlobStat] = []
    try:
        entries = list(os.scandir(leaf))
    except FileNotFoundError:
        return found
    for entry in entries:
        name = entry.name
        if not (_is_hex64(name) and name.startswith(fanout)):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # deleted while we walked
        modified = datetime.fromtimestamp(st.st_mtime, UTC)
        found.append(BlobStat(format_digest(name), st.st_size, modified))
    return found


def _subdirs(path: Path) -> Iterator[Path]:
    try:
        with os.scandir(path) as entries:
            dirs = [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return
    yield from dirs
