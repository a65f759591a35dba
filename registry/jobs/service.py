"""The queue's state machine: enqueue, claim, heartbeat, complete, fail, release, cancel, retry.

Claiming is one statement, as procrastinate's ``procrastinate_fetch_job_v2`` does it: a CTE
picks the first claimable job ``ORDER BY priority DESC, id`` with ``FOR UPDATE SKIP LOCKED``
(PostgreSQL: concurrent claimers skip each other's rows instead of waiting), and an
``UPDATE … RETURNING`` takes it. On SQLite the clause is dropped and every transaction is
``BEGIN IMMEDIATE`` (registry.db.engine), so claimers queue on the database lock.

A claimed job holds a lease its worker renews (every third of it). A job whose lease expired
is claimable again with ``attempts + 1``; one that used up ``max_attempts`` fails with "worker
lost N times". Every report carries the attempt number and the worker's id: a worker whose
lease was taken over (or whose job was cancelled) is refused with 409 ``lease_lost``, so a
job's result is written once.

Times are the server's clock (one clock for every lease, whichever worker reports).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from registry.db.base import utcnow
from registry.db.enums import JobKind, JobStatus
from registry.db.models import Job
from registry.errors import InvalidInput, JobNotFound, JobStateConflict, LeaseLost
from registry.jobs.handlers import Handlers, JobHandler
from registry.jobs.queries import get_job
from registry.jobs.schemas import ClaimedJobOut, JobOut

FINISHED = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


def enqueue(session: Session, *, kind: JobKind, version_id: int | None = None,
            base_id: int | None = None, payload: dict[str, Any] | None = None,
            priority: int = 0, max_attempts: int = 3, created_by: str | None = None,
            run_after: datetime | None = None) -> Job:
    """Add a queued job to the caller's transaction (it is claimable once that commits)."""
    now = utcnow()
    job = Job(kind=kind, status=JobStatus.queued, priority=priority, payload=payload or {},
              adapter_version_id=version_id, base_model_id=base_id, attempts=0,
              max_attempts=max_attempts, run_after=run_after or now, created_at=now,
              created_by=created_by)
    session.add(job)
    session.flush()
    return job


def _handler(handlers: Handlers, job: Job) -> JobHandler | None:
    return handlers.get(job.kind.value)


def _abandoned(session: Session, job: Job, handlers: Handlers) -> Job:
    """A job that ends (or goes back to the queue) without a report: no lease, and its kind's
    ``on_abandoned`` hook (e.g. validation restores the version's status)."""
    _clear_lease(job)
    handler = _handler(handlers, job)
    if handler is not None:
        handler.on_abandoned(session, job)
    session.flush()
    return job


def fail_lost(session: Session, *, handlers: Handlers, now: datetime | None = None) -> list[Job]:
    """Fail the running jobs whose lease expired on their last allowed attempt.

    Rows another transaction holds are skipped (it is failing them or reporting on them).
    """
    now = now or utcnow()
    lost = list(session.scalars(
        select(Job)
        .where(Job.status == JobStatus.running, Job.lease_expires_at < now,
               Job.attempts >= Job.max_attempts)
        .order_by(Job.id)
        .with_for_update(skip_locked=True)
    ))
    for job in lost:
        job.status = JobStatus.failed
        job.error = (f"worker lost {job.attempts} time{'s' if job.attempts != 1 else ''}: "
                     "every attempt's lease expired without a report")
        job.finished_at = now
        _abandoned(session, job, handlers)
    return lost


def claim(session: Session, *, worker: str, lease_seconds: int, handlers: Handlers,
          kinds: Sequence[str] = (JobKind.validate.value,),
          now: datetime | None = None) -> ClaimedJobOut | None:
    """Take the next claimable job for ``worker``: queued and due, or running with an expired
    lease (a lost worker's), highest priority first, then oldest.

    Args:
        worker: the worker's unique id (it fences the worker's reports).
        lease_seconds: how long the lease lasts without a heartbeat.
        handlers: the job kinds' hooks (``on_claimed`` builds the spec the worker runs).
        kinds: the kinds this worker runs.

    Returns:
        The job, its attempt number and spec; None when nothing is claimable.

    Raises:
        InvalidInput: an unknown kind or a lease under 2 seconds.
    """
    if lease_seconds < 2:
        raise InvalidInput("a lease lasts at least 2 seconds")
    known = {k.value for k in JobKind}
    unknown = sorted(set(kinds) - known)
    if unknown or not kinds:
        raise InvalidInput(f"unknown job kind(s) {unknown}; kinds are {', '.join(sorted(known))}")
    now = now or utcnow()
    fail_lost(session, handlers=handlers, now=now)
    claimable = or_(
        and_(Job.status == JobStatus.queued, Job.run_after <= now),
        and_(Job.status == JobStatus.running, Job.lease_expires_at < now,
             Job.attempts < Job.max_attempts),
    )
    candidate = (
        select(Job.id)
        .where(claimable, Job.kind.in_([JobKind(k) for k in kinds]))
        .order_by(Job.priority.desc(), Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .cte("candidate")
    )
    expires = now + timedelta(seconds=lease_seconds)
    stmt = (
        update(Job)
        .where(Job.id == candidate.c.id)
        .values(status=JobStatus.running, attempts=Job.attempts + 1, lease_owner=worker,
                lease_expires_at=expires, heartbeat_at=now)
        .returning(Job)
        .execution_options(populate_existing=True)
    )
    job = session.scalars(stmt).one_or_none()
    if job is None:
        return None
    if job.started_at is None:
        job.started_at = now
    handler = _handler(handlers, job)
    spec = handler.on_claimed(session, job) if handler is not None else {}
    session.flush()
    return ClaimedJobOut(job=to_out(job), attempt=job.attempts, worker=worker,
                         lease_seconds=lease_seconds, lease_expires_at=expires, spec=spec)


def _fenced(session: Session, *, job_id: int, worker: str, attempt: int) -> Job:
    """The job, locked, if ``worker`` still holds attempt ``attempt`` of it.

    Raises:
        JobNotFound, LeaseLost (taken over by another worker, cancelled, or finished).
    """
    job = session.scalars(
        select(Job).where(Job.id == job_id).with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if job is None:
        raise JobNotFound(f"no job {job_id}")
    if job.status == JobStatus.cancelled:
        raise LeaseLost(f"job {job_id} was cancelled")
    if job.status != JobStatus.running or job.attempts != attempt or job.lease_owner != worker:
        now_held = (f"attempt {job.attempts} ({job.status.value}, held by {job.lease_owner})"
                    if job.status == JobStatus.running else job.status.value)
        raise LeaseLost(
            f"job {job_id} attempt {attempt} is no longer held by {worker}: the job is now "
            f"{now_held}; this report is refused"
        )
    return job


def _clear_lease(job: Job) -> None:
    job.lease_owner = None
    job.lease_expires_at = None


def heartbeat(session: Session, *, job_id: int, worker: str, attempt: int, lease_seconds: int,
              now: datetime | None = None) -> Job:
    """Renew the lease of a running job.

    A lease that expired but was not taken over yet is renewed too: nobody else ran the job.

    Raises:
        JobNotFound, LeaseLost.
    """
    job = _fenced(session, job_id=job_id, worker=worker, attempt=attempt)
    now = now or utcnow()
    job.heartbeat_at = now
    job.lease_expires_at = now + timedelta(seconds=lease_seconds)
    session.flush()
    return job


def complete(session: Session, *, job_id: int, worker: str, attempt: int,
             report: dict[str, Any], handlers: Handlers, now: datetime | None = None) -> Job:
    """Record a worker's report: the kind's handler stores it and says how the job ends.

    Raises:
        JobNotFound, LeaseLost (the report is refused, nothing is written), InvalidInput (a
        malformed report).
    """
    job = _fenced(session, job_id=job_id, worker=worker, attempt=attempt)
    handler = _handler(handlers, job)
    if handler is None:
        raise InvalidInput(f"no handler for jobs of kind {job.kind.value}")
    outcome = handler.on_completed(session, job, report)
    job.status = JobStatus.succeeded if outcome.succeeded else JobStatus.failed
    job.result = outcome.result
    job.error = outcome.error
    job.finished_at = now or utcnow()
    _clear_lease(job)
    session.flush()
    return job


def fail(session: Session, *, job_id: int, worker: str, attempt: int, error: str,
         result: dict[str, Any] | None, handlers: Handlers, now: datetime | None = None) -> Job:
    """The worker could not run the job: it fails with ``error`` and no verdict.

    Raises:
        JobNotFound, LeaseLost.
    """
    job = _fenced(session, job_id=job_id, worker=worker, attempt=attempt)
    job.status = JobStatus.failed
    job.error = error
    job.result = result
    job.finished_at = now or utcnow()
    return _abandoned(session, job, handlers)


def release(session: Session, *, job_id: int, worker: str, attempt: int, handlers: Handlers,
            now: datetime | None = None) -> Job:
    """A stopping worker hands its job back: queued again, and the attempt does not count.

    The attempt number goes back down, but the fence still holds: a report also names the
    worker, and the next claim is another worker's.

    Raises:
        JobNotFound, LeaseLost.
    """
    job = _fenced(session, job_id=job_id, worker=worker, attempt=attempt)
    job.status = JobStatus.queued
    job.attempts -= 1
    job.run_after = now or utcnow()
    return _abandoned(session, job, handlers)


def _locked(session: Session, job_id: int) -> Job:
    job = session.scalars(
        select(Job).where(Job.id == job_id).with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if job is None:
        raise JobNotFound(f"no job {job_id}")
    return job


def cancel(session: Session, *, job_id: int, handlers: Handlers,
           now: datetime | None = None) -> Job:
    """Cancel a queued or running job (a running one's worker learns it at its next heartbeat,
    and its report is refused).

    Raises:
        JobNotFound, JobStateConflict (the job already finished).
    """
    job = _locked(session, job_id)
    if job.status in FINISHED:
        raise JobStateConflict(f"job {job_id} already {job.status.value}; only a queued or "
                               "running job can be cancelled")
    job.status = JobStatus.cancelled
    job.finished_at = now or utcnow()
    return _abandoned(session, job, handlers)


def retry(session: Session, *, job_id: int, now: datetime | None = None) -> Job:
    """Queue a failed or cancelled job again, with its attempts reset.

    Raises:
        JobNotFound, JobStateConflict (queued, running or succeeded).
    """
    job = _locked(session, job_id)
    if job.status not in (JobStatus.failed, JobStatus.cancelled):
        raise JobStateConflict(
            f"job {job_id} is {job.status.value}; only a failed or cancelled job can be retried"
            + (" (run `validate` again for a new validation)"
               if job.status == JobStatus.succeeded else "")
        )
    job.status = JobStatus.queued
    job.attempts = 0
    job.error = None
    job.result = None
    job.started_at = None
    job.finished_at = None
    job.heartbeat_at = None
    job.run_after = now or utcnow()
    _clear_lease(job)
    session.flush()
    return job


def show(session: Session, *, job_id: int) -> JobOut:
    """Raises: JobNotFound."""
    return to_out(get_job(session, job_id))


def to_out(job: Job) -> JobOut:
    version = job.version
    base = job.base_model
    result = job.result or {}
    timings = result.get("timings")
    cache_hit = result.get("base_cache_hit")
    return JobOut(
        id=job.id,
        kind=job.kind.value,
        status=job.status.value,
        priority=job.priority,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        name=version.adapter.name if version else None,
        version=version.version if version else None,
        ref=f"{version.adapter.name}:{version.version}" if version else None,
        base=base.name if base else None,
        base_revision=base.revision if base else None,
        payload=job.payload or {},
        verdict=result.get("verdict"),
        reasons=[str(r) for r in result.get("reasons", [])],
        result=job.result,
        error=job.error,
        timings=timings if isinstance(timings, dict) else None,
        base_cache_hit=cache_hit if isinstance(cache_hit, bool) else None,
        lease_owner=job.lease_owner,
        lease_expires_at=job.lease_expires_at,
        heartbeat_at=job.heartbeat_at,
        run_after=job.run_after,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        created_by=job.created_by,
    )
