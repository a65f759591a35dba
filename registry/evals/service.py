"""Eval scores (from a CI job, a person, or a validation worker) and eval suites (add, attach)."""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.adapters.queries import get_adapter, get_version
from registry.adapters.schemas import ScoreOut
from registry.adapters.service import score_out
from registry.base_models.queries import get_base
from registry.blobs.service import blobs_for
from registry.db.base import utcnow
from registry.db.dialect import add_unless_exists, insert_ignore
from registry.db.models import (
    AdapterVersion,
    BaseModelRow,
    Blob,
    EvalScore,
    EvalSuite,
    EvalSuiteFile,
    ScoreSource,
    SuiteAttachment,
    SuiteKind,
)
from registry.errors import Conflict, InvalidInput, TooLarge
from registry.evals.metrics import check_metric, check_suite_name
from registry.evals.queries import base_scores, get_suite
from registry.evals.schemas import (
    AttachmentOut,
    CreateSuiteIn,
    RecordScoresIn,
    SuiteFileOut,
    SuiteOut,
)
from registry.evals.suites import check_kind, check_options, check_suite_files, suite_fit
from registry.formats import normalize_path
from registry.storage import BlobStore, parse_digest

MAX_SCORES = 200


def record_scores(session: Session, *, version: AdapterVersion | None,
                  base: BaseModelRow | None,
                  suite: str, scores: dict[str, object], source: ScoreSource,
                  actor: str | None = None, suite_version: int | None = None,
                  n: int | None = None, job_id: int | None = None) -> list[EvalScore]:
    """Add one score row per metric, all checked before any is written (``version`` None: the
    base model's own score).

    Raises:
        InvalidInput: a bad suite or metric name, a non-numeric or non-finite value, no scores.
    """
    check_suite_name(suite)
    if not scores:
        raise InvalidInput("give at least one metric=value")
    if len(scores) > MAX_SCORES:
        raise InvalidInput(f"at most {MAX_SCORES} metrics per record")
    values = {metric: check_metric(metric, value) for metric, value in scores.items()}
    now = utcnow()
    rows = [
        EvalScore(version=version, base_model=base, suite=suite, suite_version=suite_version,
                  metric=metric, value=value, n=n, source=source, job_id=job_id,
                  created_at=now, created_by=actor)
        for metric, value in sorted(values.items())
    ]
    session.add_all(rows)
    session.flush()
    return rows


def record_from_request(session: Session, *, name: str, version: int,
                        body: RecordScoresIn) -> list[ScoreOut]:
    """``eval record``: scores a CI job computed, on the given or the linked base.

    Raises:
        AdapterNotFound, VersionNotFound, BaseModelNotFound, InvalidInput.
    """
    v = get_version(session, name=name, version=version)
    base = get_base(session, name=body.base) if body.base is not None else v.base_model
    rows = record_scores(session, version=v, base=base, suite=body.suite,
                         scores=dict(body.scores), source=ScoreSource.ci,
                         actor=body.created_by, n=body.n)
    return [score_out(r) for r in rows]


# --- suites ----------------------------------------------------------------------------------


def _read_blob(store: BlobStore, blob: Blob, *, path: str, max_bytes: int) -> bytes:
    if blob.size > max_bytes:
        raise TooLarge(f"{path}: {blob.size} bytes exceed the suite limit of {max_bytes} bytes "
                       "(REGISTRY_MAX_SUITE_BYTES)")
    return b"".join(store.iter_chunks(blob.digest))


def suite_digest(kind: SuiteKind, options: dict[str, int], files: dict[str, str]) -> str:
    """What makes two suite versions "the same": kind, options and file digests."""
    body = json.dumps({"kind": kind.value, "options": options, "files": files}, sort_keys=True)
    return f"sha256:{hashlib.sha256(body.encode()).hexdigest()}"


def create_suite(session: Session, store: BlobStore, *, body: CreateSuiteIn,
                 max_bytes: int) -> tuple[EvalSuite, bool]:
    """Store a suite version from uploaded files, after checking every line of its data.

    Adding the same kind, options and content again returns the existing version; anything
    else under an existing name is the next version.

    Returns:
        ``(suite, created)``.

    Raises:
        InvalidInput (a bad name, kind, option, path, or the first bad line of a file),
        TooLarge, BlobNotFound.
    """
    check_suite_name(body.name)
    kind = check_kind(body.kind)
    options = check_options(kind, body.options)
    if not body.files:
        raise InvalidInput("a suite needs its data file")
    for path, digest in body.files.items():
        normalize_path(path)
        parse_digest(digest)
    blobs = blobs_for(session, body.files)
    total = sum(b.size for b in blobs.values())
    if total > max_bytes:
        raise TooLarge(f"suite files total {total} bytes, over the limit of {max_bytes} bytes "
                       "(REGISTRY_MAX_SUITE_BYTES)")
    data = {p: _read_blob(store, b, path=p, max_bytes=max_bytes) for p, b in blobs.items()}
    item_count = check_suite_files(kind, data)
    digest = suite_digest(kind, options, dict(body.files))
    latest = session.scalars(
        select(EvalSuite).where(EvalSuite.name == body.name)
        .order_by(EvalSuite.version.desc()).limit(1)
    ).one_or_none()
    if latest is not None and latest.content_digest == digest:
        return get_suite(session, name=body.name, version=latest.version), False
    suite = EvalSuite(name=body.name, version=(latest.version + 1) if latest else 1, kind=kind,
                      options=options, content_digest=digest, item_count=item_count,
                      created_at=utcnow(), created_by=body.created_by)
    suite.files = [EvalSuiteFile(path=p, blob=b) for p, b in sorted(blobs.items())]
    if not add_unless_exists(session, suite):
        raise Conflict(f"suite {body.name} version {suite.version} was added concurrently; "
                       "add it again")
    return get_suite(session, name=body.name, version=suite.version), True


def suite_out(s: EvalSuite) -> SuiteOut:
    return SuiteOut(name=s.name, version=s.version, kind=s.kind.value, options=dict(s.options),
                    item_count=s.item_count, content_digest=s.content_digest,
                    files=[SuiteFileOut(path=f.path, digest=f.blob.digest, size=f.blob.size)
                           for f in s.files],
                    created_at=s.created_at, created_by=s.created_by)


def attach_suite(session: Session, *, suite_name: str, adapter_name: str,
                 actor: str | None = None) -> AttachmentOut:
    """Run suite ``suite_name`` (its latest version) on every validation of ``adapter_name``.

    Raises:
        SuiteNotFound, AdapterNotFound, InvalidInput (the suite's kind does not fit the
        adapter's task type or its latest version's base, with the reason).
    """
    check_suite_name(suite_name)
    suite = get_suite(session, name=suite_name)
    adapter = get_adapter(session, adapter_name)
    latest = session.scalars(
        select(AdapterVersion).where(AdapterVersion.adapter_id == adapter.id)
        .order_by(AdapterVersion.version.desc()).limit(1)
    ).one_or_none()
    task_type = latest.task_type if latest is not None else adapter.task_type
    base = latest.base_model if latest is not None else None
    reason = suite_fit(suite.kind, task_type=task_type,
                       architectures=base.architectures if base is not None else None)
    if reason is not None:
        raise InvalidInput(f"cannot attach suite {suite_name} to {adapter_name}: {reason}")
    existing = session.scalars(
        select(SuiteAttachment).where(SuiteAttachment.adapter_id == adapter.id,
                                      SuiteAttachment.suite_name == suite_name)
    ).one_or_none()
    if existing is None:
        insert_ignore(session, SuiteAttachment,
                      {"adapter_id": adapter.id, "suite_name": suite_name,
                       "created_at": utcnow(), "created_by": actor},
                      keys=["adapter_id", "suite_name"])
    return AttachmentOut(suite=suite_name, adapter=adapter_name, kind=suite.kind.value,
                         version=suite.version, created=existing is None)


def base_scores_out(session: Session, *, base: str, revision: str | None = None
                    ) -> list[ScoreOut]:
    """The base model's own newest scores (perplexity of the base on a suite, ...).

    Raises:
        BaseModelNotFound.
    """
    row = get_base(session, name=base, revision=revision)
    return [score_out(s) for s in base_scores(session, base_id=row.id)]
