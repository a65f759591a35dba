"""Blob rows (a row = digest verified and recorded) and garbage collection of unused blobs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session, sessionmaker, undefer

from registry.db.base import utcnow
from registry.db.dialect import insert_ignore
from registry.db.engine import session_scope
from registry.db.models import BaseModelFile, Blob, ExportFile, VersionFile
from registry.errors import BlobNotFound, TooLarge
from registry.formats.safetensors import ParsedHeader, TensorInfo
from registry.storage import BlobStore, BlobWriter, parse_digest

READ_CHUNK = 1024 * 1024


def get_blob(session: Session, *, digest: str) -> Blob | None:
    """The recorded blob for ``digest``, or None (HEAD answers 404 then)."""
    parse_digest(digest)
    return session.scalars(select(Blob).where(Blob.digest == digest)).one_or_none()


def size_stored(session: Session, *, size: int) -> bool:
    """Whether any recorded blob has exactly ``size`` bytes (if none does, a file of that size
    cannot be a duplicate, so a client may upload it without hashing it first)."""
    return bool(session.scalar(select(exists().where(Blob.size == size))))


def blobs_for(session: Session, files: dict[str, str]) -> dict[str, Blob]:
    """The recorded blob of every ``path -> digest``, with what was parsed from each before.

    Raises:
        BlobNotFound: a digest was never uploaded (names the path).
    """
    digests = set(files.values())
    found = {b.digest: b for b in session.scalars(
        select(Blob).options(undefer(Blob.parsed)).where(Blob.digest.in_(digests)))}
    for path, digest in sorted(files.items()):
        if digest not in found:
            raise BlobNotFound(
                f"blob {digest} for {path!r} has not been uploaded; "
                f"PUT /api/v1/blobs/{digest} first"
            )
    return {path: found[digest] for path, digest in files.items()}


# A file read whole up to this size (an adapter's config) is kept with its blob row as text.
KEPT_TEXT_BYTES = 64 * 1024


class BlobFiles:
    """FileAccess over stored blobs, so server-side checks read only headers (range reads).

    A blob's content never changes, so what was parsed from it is kept with its row
    (``Blob.parsed``; written in the caller's transaction): a validated safetensors header
    (``KeepsHeaders``) and the text of a small file read whole. The next version that uses the
    blob reads neither from the store: no range reads at all on S3.
    """

    def __init__(self, store: BlobStore, files: dict[str, Blob]) -> None:
        self._store = store
        self._files = files

    def size(self, path: str) -> int:
        return self._files[path].size

    def read(self, path: str, offset: int, length: int) -> bytes:
        blob = self._files[path]
        text = (blob.parsed or {}).get("text")
        if isinstance(text, str):
            return text.encode("utf-8")[offset:offset + length]
        data = self._store.read_range(blob.digest, offset, length)
        if offset == 0 and len(data) == blob.size <= KEPT_TEXT_BYTES:
            # Not UTF-8 text: nothing is kept, it is read from the store each time (small).
            with contextlib.suppress(UnicodeDecodeError):
                self._keep(blob, "text", data.decode("utf-8"))
        return data

    def kept_header(self, path: str) -> ParsedHeader | None:
        kept = (self._files[path].parsed or {}).get("safetensors")
        if not isinstance(kept, dict):
            return None
        tensors = {n: TensorInfo.from_json(t) for n, t in kept["tensors"].items()}
        return ParsedHeader(tensors, int(kept["header_bytes"]))

    def keep_header(self, path: str, header: ParsedHeader) -> None:
        self._keep(self._files[path], "safetensors", {
            "header_bytes": header.header_bytes,
            "tensors": {n: t.to_json() for n, t in header.tensors.items()},
        })

    @staticmethod
    def _keep(blob: Blob, key: str, value: object) -> None:
        blob.parsed = {**(blob.parsed or {}), key: value}  # a new dict: the ORM sees the change


def record_blob(session: Session, *, digest: str, size: int) -> None:
    """Record a blob whose content the store has verified; a second record is a no-op."""
    insert_ignore(
        session,
        Blob,
        {"digest": digest, "size": size, "created_at": utcnow()},
        keys=["digest"],
    )


def start_upload(store: BlobStore, *, digest: str | None, max_size: int,
                 declared_size: int | None = None) -> BlobWriter:
    """Open a writer for an upload: named by ``digest``, or by its content when None.

    Raises:
        InvalidDigest, TooLarge (the declared size is over the limit before a byte is read),
        InvalidInput (the store cannot name a blob after its upload), StorageError.
    """
    if declared_size is not None and declared_size > max_size:
        raise TooLarge(f"blob of {declared_size} bytes exceeds the limit of {max_size} bytes")
    if digest is None:
        return store.new_blob_writer(max_size=max_size)
    return store.writer(digest, max_size=max_size)


def finish_upload(factory: sessionmaker[Session], writer: BlobWriter) -> tuple[str, int]:
    """Verify and publish a fully written upload, then record its row.

    The one place a blob becomes visible (HEAD answers from the row), whoever received it: the
    blob routes and the embedded registry both end their uploads here.

    Returns:
        ``(digest, size)``.

    Raises:
        DigestMismatch (the upload is aborted), StorageError.
    """
    size = writer.commit()
    digest = writer.digest
    assert digest is not None  # commit() sets it for uploads named by their content
    with session_scope(factory) as session:
        record_blob(session, digest=digest, size=size)
    return digest, size


def store_file(factory: sessionmaker[Session], store: BlobStore, path: Path, *,
               digest: str | None, max_size: int,
               progress: Callable[[int], None] | None = None) -> str:
    """Upload a local file (the embedded registry's push) and record it.

    Returns:
        The blob's digest (computed here when ``digest`` is None).

    Raises:
        TooLarge, DigestMismatch, StorageError, OSError (reading ``path``).
    """
    size = path.stat().st_size
    if size > max_size:
        raise TooLarge(f"{path.name} exceeds the limit of {max_size} bytes")
    with start_upload(store, digest=digest, max_size=max_size) as writer, path.open("rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            writer.write(chunk)
            if progress:
                progress(len(chunk))
        return finish_upload(factory, writer)[0]


@dataclass
class GcReport:
    removed: list[str] = field(default_factory=list)
    removed_bytes: int = 0
    orphans_removed: list[str] = field(default_factory=list)
    dry_run: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "removed": self.removed,
            "removed_count": len(self.removed),
            "removed_bytes": self.removed_bytes,
            "orphans_removed": self.orphans_removed,
            "dry_run": self.dry_run,
        }


def collect_garbage(
    factory: sessionmaker[Session],
    store: BlobStore,
    *,
    grace_seconds: int,
    dry_run: bool = False,
    now: datetime | None = None,
) -> GcReport:
    """Remove blobs that no version references once they are older than the grace period.

    The rows are deleted first (in one transaction, skipping rows another transaction holds),
    then the objects. A blob referenced by any version, base model or export is never a
    candidate, and the foreign keys from their file tables make deleting one impossible.
    Objects in the store without a row (an upload whose server died before recording it) are
    removed after the same grace period.

    Args:
        factory: session factory; gc commits its own transaction.
        store: the blob store.
        grace_seconds: minimum age of an unreferenced blob before it is removed.
        dry_run: report what would be removed, remove nothing.
        now: the current time (tests).

    Returns:
        What was (or would be) removed.
    """
    cutoff = (now or utcnow()) - timedelta(seconds=grace_seconds)
    report = GcReport(dry_run=dry_run)
    with session_scope(factory) as session:
        candidates = (
            select(Blob)
            .where(Blob.created_at < cutoff)
            .where(~exists().where(VersionFile.blob_id == Blob.id))
            .where(~exists().where(BaseModelFile.blob_id == Blob.id))
            .where(~exists().where(ExportFile.blob_id == Blob.id))
            .order_by(Blob.id)
        )
        if session.get_bind().dialect.name == "postgresql":
            candidates = candidates.with_for_update(skip_locked=True)
        doomed = list(session.scalars(candidates))
        report.removed = [b.digest for b in doomed]
        report.removed_bytes = sum(b.size for b in doomed)
        if doomed and not dry_run:
            session.execute(delete(Blob).where(Blob.id.in_([b.id for b in doomed])))
        known = set(session.scalars(select(Blob.digest)))
    if dry_run:
        return report
    for digest in report.removed:
        store.delete(digest)
    for stat in store.iter_blobs():
        if stat.digest not in known and stat.digest not in report.removed and (
            stat.modified < cutoff
        ):
            store.delete(stat.digest)
            report.orphans_removed.append(stat.digest)
    return report
