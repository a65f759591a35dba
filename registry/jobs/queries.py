"""Job lookups other domains use (a version's active validation, a job by id): db/ only."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, selectinload

from registry.db.enums import JobKind, JobStatus
from registry.db.models import AdapterVersion, Job
from registry.errors import InvalidInput, JobNotFound

MAX_LIST = 1000


def job_query() -> Select[Job]:
    """Jobs with what their JSON shows (version, adapter name, base) loaded in a few queries."""
    return select(Job).options(
        selectinload(Job.version).selectinload(AdapterVersion.adapter),
        selectinload(Job.base_model),
    )


def get_job(session: Session, job_id: int) -> Job:
    """Raises: JobNotFound."""
    job = session.scalars(job_query().where(Job.id == job_id)).one_or_none()
    if job is None:
        raise JobNotFound(f"no job {job_id}; list them with: adapter-registry jobs list")
    return job


def list_jobs(session: Session, *, status: str | None = None, kind: str | None = None,
              limit: int = 100) -> Sequence[Job]:
    """Jobs newest first, finished ones included.

    Raises:
        InvalidInput: an unknown status or kind, a limit outside 1..1000.
    """
    stmt = job_query()
    if status is not None:
        try:
            stmt = stmt.where(Job.status == JobStatus(status))
        except ValueError:
            raise InvalidInput(f"unknown job status {status!r}; use one of "
                               f"{', '.join(s.value for s in JobStatus)}") from None
    if kind is not None:
        try:
            stmt = stmt.where(Job.kind == JobKind(kind))
        except ValueError:
            raise InvalidInput(f"unknown job kind {kind!r}; use one of "
                               f"{', '.join(k.value for k in JobKind)}") from None
    if not 1 <= limit <= MAX_LIST:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIST}")
    return session.scalars(stmt.order_by(Job.id.desc()).limit(limit)).all()


def running_validations(session: Session, *, version_id: int,
                        exclude: int | None = None) -> int:
    """How many validate jobs of a version are running (other than ``exclude``)."""
    stmt = select(Job.id).where(Job.adapter_version_id == version_id,
                                Job.kind == JobKind.validate, Job.status == JobStatus.running)
    if exclude is not None:
        stmt = stmt.where(Job.id != exclude)
    return len(session.scalars(stmt).all())


def pending_validation(session: Session, *, version_id: int, base_id: int,
                       suites: list[str]) -> Job | None:
    """The oldest queued or running validate job of this version on this base with exactly
    these suites, if any: asking again for what is already on its way gets that job."""
    stmt = select(Job).where(Job.adapter_version_id == version_id, Job.base_model_id == base_id,
                             Job.kind == JobKind.validate,
                             Job.status.in_([JobStatus.queued, JobStatus.running]))
    for job in session.scalars(stmt.order_by(Job.id)):
        if job.payload.get("suites") == suites:
            return job
    return None


def job_stats(session: Session, *, now: datetime
              ) -> tuple[dict[tuple[str, str], int], dict[str, datetime]]:
    """What the queue metrics show, in two grouped queries: jobs per (kind, status), every
    pair present (0 when none), and per kind the ``run_after`` of the oldest queued job that is
    runnable at ``now``."""
    counts = {(k.value, s.value): 0 for k in JobKind for s in JobStatus}
    for kind, status, n in session.execute(
            select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status)):
        counts[(JobKind(kind).value, JobStatus(status).value)] = n
    oldest: dict[str, datetime] = {}
    for kind, first in session.execute(
            select(Job.kind, func.min(Job.run_after))
            .where(Job.status == JobStatus.queued, Job.run_after <= now).group_by(Job.kind)):
        if first is not None:
            oldest[JobKind(kind).value] = first
    return counts, oldest
