"""Blob rows (a row = a verified, stored object) and garbage collection of unused blobs.

The blob row orders everything that happens to one digest (docs/architecture.md, "Garbage
collection"): an upload publishes its object while holding the row; gc marks a row
``deleting`` before it removes the object, and removes it while holding the row; everyone
else treats a ``deleting`` row as absent. So a ``present`` row always has its object: a
version that was created stays pullable, and HEAD 200 means GET succeeds.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Select,
    bindparam,
    delete,
    exists,
    func,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker, undefer

from registry.db.base import utcnow
from registry.db.dialect import insert_ignore
from registry.db.engine import session_scope
from registry.db.models import (
    BaseModelFile,
    Blob,
    BlobState,
    EvalSuiteFile,
    ExportFile,
    VersionFile,
)
from registry.errors import BlobBusy, BlobNotFound, InvalidInput, TooLarge
from registry.formats.safetensors import ParsedHeader, TensorInfo
from registry.storage import BlobStore, BlobWriter, parse_digest

log = logging.getLogger(__name__)

READ_CHUNK = 1024 * 1024
# How long an upload waits for gc to finish removing the same digest before answering 503.
PUBLISH_WAIT_SECONDS = 30.0
GC_BATCH = 200

# Every table whose rows keep a blob alive.
_REFERENCES = (VersionFile.blob_id, BaseModelFile.blob_id, ExportFile.blob_id,
               EvalSuiteFile.blob_id)


# A push may pin the blobs it needs for at most this long (it renews the pin by pinning again).
MAX_PIN_SECONDS = 3600


def _unreferenced(now: datetime) -> list[ColumnElement[bool]]:
    """Collectable: nothing references the blob and no push in progress pins it."""
    return [
        *(~exists().where(column == Blob.id) for column in _REFERENCES),
        or_(Blob.pinned_until.is_(None), Blob.pinned_until <= now),
    ]


def _pin_until(seconds: int | None) -> datetime | None:
    if seconds is None:
        return None
    if not 0 < seconds <= MAX_PIN_SECONDS:
        raise InvalidInput(f"pin seconds must be between 1 and {MAX_PIN_SECONDS}")
    return utcnow() + timedelta(seconds=seconds)


def pin_blobs(session: Session, *, digests: list[str], seconds: int) -> list[str]:
    """Keep stored blobs from gc for ``seconds`` (a push between its uploads and its create).

    Returns:
        The digests that are not stored (or that gc is removing): upload them, pinned.

    Raises:
        InvalidDigest, InvalidInput (seconds outside 1..3600, too many digests).
    """
    if len(digests) > 10_000:
        raise InvalidInput("at most 10000 digests per pin request")
    for digest in digests:
        parse_digest(digest)
    until = _pin_until(seconds)
    wanted = sorted(set(digests))
    session.execute(
        update(Blob)
        .where(Blob.digest.in_(wanted), Blob.state == BlobState.present,
               or_(Blob.pinned_until.is_(None), Blob.pinned_until < until))
        .values(pinned_until=until)
    )
    stored = set(session.scalars(select(Blob.digest).where(
        Blob.digest.in_(wanted), Blob.state == BlobState.present)))
    return [d for d in wanted if d not in stored]


def get_blob(session: Session, *, digest: str) -> Blob | None:
    """The stored blob for ``digest``, or None (HEAD answers 404 then; also while gc is
    removing it)."""
    parse_digest(digest)
    return session.scalars(
        select(Blob).where(Blob.digest == digest, Blob.state == BlobState.present)
    ).one_or_none()


def size_stored(session: Session, *, size: int) -> bool:
    """Whether any recorded blob has exactly ``size`` bytes (if none does, a file of that size
    cannot be a duplicate, so a client may upload it without hashing it first)."""
    return bool(session.scalar(select(exists().where(Blob.size == size))))


def blobs_for(session: Session, files: dict[str, str]) -> dict[str, Blob]:
    """The recorded blob of every ``path -> digest``, with what was parsed from each before,
    locked against gc until the caller's transaction ends.

    Raises:
        BlobNotFound: a digest was never uploaded (names the path).
    """
    stmt = _blobs_statement(session.get_bind().dialect.name, rows=False, locked=True)
    found = {b.digest: b for b in session.scalars(stmt, {"digests": sorted(set(files.values()))})}
    return _every_path(files, found)


@dataclass(eq=False)
class BlobRow:
    """A blob row as a push reads it: its columns, no ORM object (loading three ``Blob``
    objects cost a push more than the query). What ``BlobFiles`` parses into ``parsed`` is
    written back by ``save_parsed``."""

    id: int
    digest: str
    size: int
    parsed: dict[str, Any] | None
    changed: bool = False


def blob_rows_for(session: Session, files: dict[str, str], *, lock: bool = True,
                  also: ColumnElement[Any] | None = None) -> tuple[dict[str, BlobRow], Any]:
    """``blobs_for`` as plain rows (the same rows, locked the same way).

    Args:
        lock: False for a caller outside a transaction, whose one write statement locks the
            rows itself and fails if one has gone (registry.adapters.writes).
        also: a scalar subquery read in the same round trip (the caller's, e.g. the push's
            registered bases); its value is returned second (None when no blob was found).

    Raises:
        BlobNotFound: a digest was never uploaded (names the path).
    """
    conn = session.connection()  # a Core statement: no ORM entities to look for
    stmt = _blobs_statement(conn.dialect.name, rows=True, locked=lock)
    if also is not None:
        stmt = _with_column(stmt, also)
    extra = None
    found = {}
    for r in conn.execute(stmt, {"digests": sorted(set(files.values()))}):
        found[r.digest] = BlobRow(r.id, r.digest, r.size, r.parsed)
        extra = r[4] if also is not None else None
    return _every_path(files, found), extra


@functools.cache
def _with_column(stmt: Select[Any], column: ColumnElement[Any]) -> Select[Any]:
    # Cached per (statement, column): both are built once by their modules.
    return stmt.add_columns(column)


def save_parsed(session: Session, rows: Iterable[BlobRow], *, wait_for_wal: bool = True) -> None:
    """Write what was parsed from ``rows`` since they were read (a blob's first use only).

    Args:
        wait_for_wal: False for a session outside a transaction on PostgreSQL (each statement
            its own transaction): the statement's commit then does not wait for the WAL flush
            (``synchronous_commit = off`` for that transaction only). A cache of what the
            content says: a crash may lose it, and the next use parses the content again.
    """
    for row in rows:
        if row.changed:
            stmt = update(Blob).where(Blob.id == row.id)
            if not wait_for_wal:
                stmt = stmt.where(func.set_config("synchronous_commit", "off", True).is_not(None))
            session.execute(stmt.values(parsed=row.parsed))
            row.changed = False


_B = TypeVar("_B", Blob, BlobRow)


def _every_path(files: dict[str, str], found: dict[str, _B]) -> dict[str, _B]:
    for path, digest in sorted(files.items()):
        if digest not in found:
            raise BlobNotFound(
                f"blob {digest} for {path!r} has not been uploaded; "
                f"PUT /api/v1/blobs/{digest} first"
            )
    return {path: found[digest] for path, digest in files.items()}


@functools.cache
def _blobs_statement(dialect: str, *, rows: bool, locked: bool) -> Select[Any]:
    """Built once per dialect, kind and locking (the digests bound at execution):
    constructing the statement cost more Python than running it, on every push."""
    stmt: Select[Any] = (
        select(Blob.id, Blob.digest, Blob.size, Blob.parsed) if rows
        else select(Blob).options(undefer(Blob.parsed))
    ).where(Blob.digest.in_(bindparam("digests", expanding=True)),
            Blob.state == BlobState.present)
    if locked and dialect == "postgresql":
        # Locked until the caller's transaction ends: gc's mark (FOR UPDATE SKIP LOCKED)
        # skips these rows, so a blob cannot be collected between this check and the insert
        # of the rows that reference it. FOR NO KEY UPDATE rather than FOR SHARE: the caller
        # may write the blob's parse cache, and two creates upgrading shared locks on the
        # same blob would deadlock; in id order, concurrent creates simply queue.
        stmt = stmt.order_by(Blob.id).with_for_update(key_share=True)
    return stmt


# A file read whole up to this size (an adapter's config) is kept with its blob row as text.
KEPT_TEXT_BYTES = 64 * 1024


class BlobFiles:
    """FileAccess over stored blobs, so server-side checks read only headers (range reads).

    A blob's content never changes, so what was parsed from it is kept with its row
    (``Blob.parsed``; written in the caller's transaction): a validated safetensors header
    (``KeepsHeaders``) and the text of a small file read whole. The next version that uses the
    blob reads neither from the store: no range reads at all on S3.
    """

    def __init__(self, store: BlobStore, files: Mapping[str, Blob | BlobRow]) -> None:
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
    def _keep(blob: Blob | BlobRow, key: str, value: object) -> None:
        blob.parsed = {**(blob.parsed or {}), key: value}  # a new dict: the ORM sees the change
        if isinstance(blob, BlobRow):
            blob.changed = True  # written by save_parsed


def _lock_row(session: Session, *, digest: str, size: int) -> Blob:
    """The blob's row, created ``present`` if missing, locked until the transaction ends."""
    while True:
        insert_ignore(
            session, Blob,
            {"digest": digest, "size": size, "created_at": utcnow(),
             "state": BlobState.present},
            keys=["digest"],
        )
        row = session.scalars(
            select(Blob).where(Blob.digest == digest).with_for_update()
            .execution_options(populate_existing=True)
        ).one_or_none()
        if row is not None:
            return row
        # The row the insert conflicted with was gc's, and gc deleted it before our lock
        # came through: insert again (PostgreSQL; SQLite runs one writer at a time).


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


def finish_upload(factory: sessionmaker[Session], writer: BlobWriter,
                  *, pin_seconds: int | None = None,
                  wait_seconds: float = PUBLISH_WAIT_SECONDS) -> tuple[str, int]:
    """Verify a fully written upload, then publish it and record its row, in one transaction.

    The one place a blob becomes visible, whoever received it (the blob routes and the
    embedded registry both end their uploads here). The object is published while this
    transaction holds the blob's row, so gc (which removes an object only while it holds the
    row, marked ``deleting``) can never remove it in between. If gc is removing this digest
    right now, wait for it to finish, then publish ours.

    Args:
        pin_seconds: keep the blob from gc this long (a push uploading it for a version).

    Returns:
        ``(digest, size)``.

    Raises:
        DigestMismatch (the upload is aborted), StorageError, BlobBusy (gc held the digest
        longer than ``wait_seconds``), InvalidInput (pin seconds out of range).
    """
    until = _pin_until(pin_seconds)
    size = writer.seal()
    digest = writer.digest
    assert digest is not None  # seal() sets it for uploads named by their content
    deadline = time.monotonic() + wait_seconds
    delay = 0.01
    while True:
        with session_scope(factory) as session:
            row = _lock_row(session, digest=digest, size=size)
            if row.state == BlobState.present:
                writer.publish()
                row.created_at = utcnow()  # the grace period counts from the last upload
                if until is not None and (row.pinned_until is None or row.pinned_until < until):
                    row.pinned_until = until
                return digest, size
        if time.monotonic() > deadline:
            writer.abort()
            raise BlobBusy(f"blob {digest} is being garbage-collected; retry the upload")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def store_file(factory: sessionmaker[Session], store: BlobStore, path: Path, *,
               digest: str | None, max_size: int,
               progress: Callable[[int], None] | None = None,
               pin_seconds: int | None = None) -> str:
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
        return finish_upload(factory, writer, pin_seconds=pin_seconds)[0]


@dataclass
class GcReport:
    removed: list[str] = field(default_factory=list)
    removed_bytes: int = 0
    orphans_removed: list[str] = field(default_factory=list)
    temp_removed: int = 0
    dry_run: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "removed": self.removed,
            "removed_count": len(self.removed),
            "removed_bytes": self.removed_bytes,
            "orphans_removed": self.orphans_removed,
            "temp_removed": self.temp_removed,
            "dry_run": self.dry_run,
        }


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _mark(factory: sessionmaker[Session], cutoff: datetime, now: datetime) -> None:
    """Phase 1: mark unreferenced, old, present rows ``deleting`` (committed before any
    object is touched, so a crash later leaves rows that read as absent, never a present row
    without its object)."""
    while True:
        with session_scope(factory) as session:
            candidates = (
                select(Blob.id)
                .where(Blob.state == BlobState.present, Blob.created_at < cutoff,
                       *_unreferenced(now))
                .order_by(Blob.id)
                .limit(GC_BATCH)
            )
            if _is_postgres(session):
                # Rows a push holds FOR SHARE (about to be referenced) are skipped, not waited on.
                candidates = candidates.with_for_update(skip_locked=True)
            ids = list(session.scalars(candidates))
            if not ids:
                return
            # Checked again in a statement of its own: under READ COMMITTED it sees references
            # committed after the candidates were read.
            session.execute(
                update(Blob)
                .where(Blob.id.in_(ids), Blob.state == BlobState.present, *_unreferenced(now))
                .values(state=BlobState.deleting)
            )
        if len(ids) < GC_BATCH:
            return


def _remove_marked(factory: sessionmaker[Session], store: BlobStore, report: GcReport) -> None:
    """Phase 2: remove the objects of ``deleting`` rows, each while holding its row, then
    the rows. Rows left ``deleting`` by a gc that died are finished here too."""
    seen: set[int] = set()
    while True:
        with session_scope(factory) as session:
            stmt = (
                select(Blob)
                .where(Blob.state == BlobState.deleting, Blob.id.not_in(seen) if seen else true())
                .order_by(Blob.id)
                .limit(GC_BATCH)
            )
            if _is_postgres(session):
                stmt = stmt.with_for_update(skip_locked=True)
            rows = list(session.scalars(stmt))
            if not rows:
                return
            for row in rows:
                seen.add(row.id)
                store.delete(row.digest)  # while we hold the row: no upload can publish it
                report.removed.append(row.digest)
                report.removed_bytes += row.size
            session.execute(
                delete(Blob).where(Blob.id.in_([r.id for r in rows]),
                                   Blob.state == BlobState.deleting)
            )


def _claim_orphan(session: Session, digest: str, size: int) -> bool:
    """Insert a ``deleting`` row for a stored object that has none; False when a row exists
    (an upload recorded it meanwhile, or will: its uncommitted row makes us wait for it)."""
    module = postgresql if _is_postgres(session) else sqlite
    stmt = (
        module.insert(Blob)
        .values(digest=digest, size=size, created_at=utcnow(), state=BlobState.deleting)
        .on_conflict_do_nothing(index_elements=["digest"])
        .returning(Blob.id)
    )
    return session.execute(stmt).scalar_one_or_none() is not None


def _remove_orphans(factory: sessionmaker[Session], store: BlobStore, cutoff: datetime,
                    report: GcReport, *, dry_run: bool) -> None:
    """Objects in the store with no row at all (an upload whose transaction did not commit):
    each is claimed with a ``deleting`` row, removed, and its row dropped, in one transaction,
    so an upload of the same digest waits for us instead of losing its object."""
    batch: list[tuple[str, int]] = []
    for stat in store.iter_blobs():
        if stat.modified < cutoff:
            batch.append((stat.digest, stat.size))
        if len(batch) == 500:
            _orphan_batch(factory, store, batch, report, dry_run=dry_run)
            batch = []
    _orphan_batch(factory, store, batch, report, dry_run=dry_run)


def _orphan_batch(factory: sessionmaker[Session], store: BlobStore,
                  batch: list[tuple[str, int]], report: GcReport, *, dry_run: bool) -> None:
    if not batch:
        return
    with session_scope(factory) as session:
        known = set(session.scalars(select(Blob.digest).where(
            Blob.digest.in_([digest for digest, _ in batch]))))
    for digest, size in batch:
        if digest in known:
            continue
        if dry_run:
            report.orphans_removed.append(digest)
            continue
        with session_scope(factory) as session:
            if not _claim_orphan(session, digest, size):
                continue  # recorded meanwhile
            store.delete(digest)
            session.execute(delete(Blob).where(Blob.digest == digest,
                                               Blob.state == BlobState.deleting))
            report.orphans_removed.append(digest)


def _dry_run(factory: sessionmaker[Session], cutoff: datetime, now: datetime,
             report: GcReport) -> None:
    with session_scope(factory) as session:
        doomed = session.scalars(
            select(Blob)
            .where(Blob.state == BlobState.present, Blob.created_at < cutoff,
                   *_unreferenced(now))
            .order_by(Blob.id)
        ).all()
        report.removed = [b.digest for b in doomed]
        report.removed_bytes = sum(b.size for b in doomed)


def collect_garbage(
    factory: sessionmaker[Session],
    store: BlobStore,
    *,
    grace_seconds: int,
    dry_run: bool = False,
    now: datetime | None = None,
) -> GcReport:
    """Remove blobs nothing references once they are older than the grace period, objects
    the store holds without a row, and uploads that crashed (temp files, multipart uploads).

    Safe while pushes run, on every backend (see the module docstring): a referenced blob is
    never a candidate, the foreign keys make deleting one impossible, and an object is only
    ever removed while gc holds its row marked ``deleting``.

    Args:
        factory: session factory; gc commits its own transactions.
        store: the blob store.
        grace_seconds: minimum age (since its last upload) of an unreferenced blob, orphan
            object or crashed upload before it is removed.
        dry_run: report what would be removed (blobs and orphans), remove nothing.
        now: the current time (tests).

    Returns:
        What was (or would be) removed.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=grace_seconds)
    report = GcReport(dry_run=dry_run)
    if dry_run:
        _dry_run(factory, cutoff, now, report)
        _remove_orphans(factory, store, cutoff, report, dry_run=True)
        return report
    _mark(factory, cutoff, now)
    _remove_marked(factory, store, report)
    _remove_orphans(factory, store, cutoff, report, dry_run=False)
    age = max((utcnow() - cutoff).total_seconds(), 0.0)
    report.temp_removed = store.cleanup_temp(age)
    return report

