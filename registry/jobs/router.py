"""Job routes: list, show, cancel, retry, and the worker endpoints (claim, heartbeat, complete,
fail, release)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from registry.api.deps import AccessDep, HandlersDep, JobId, SessionDep, SettingsDep, require
from registry.api.responses import error_responses
from registry.auth.scopes import Scope
from registry.db.enums import JobKind, JobStatus
from registry.jobs import queries, service
from registry.jobs.schemas import (
    ClaimedJobOut,
    ClaimIn,
    CompleteJobIn,
    FailJobIn,
    JobOut,
    LeaseIn,
    LeaseOut,
)

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])
# Workers need validate (claim, heartbeat, complete, fail, release); managing the queue (cancel,
# retry) is what the push side does (it queues validations); reading it, read.
_READ = [require(Scope.READ, adapter_param=None)]
_WORKER = [require(Scope.VALIDATE, adapter_param=None)]
_MANAGE = [require(Scope.PUSH, adapter_param=None)]
_LOOKUP = error_responses(404, 422, 503)
_CHANGE = error_responses(404, 409, 422, 503)
_REPORT = error_responses(404, 409, 413, 422, 503)


@router.get("", response_model=list[JobOut], dependencies=_READ,
            responses=error_responses(422, 503))
def list_jobs(
    session: SessionDep,
    access: AccessDep,
    status: Annotated[str | None, Query(max_length=16, json_schema_extra={
        "enum": [s.value for s in JobStatus]})] = None,
    kind: Annotated[str | None, Query(max_length=16, json_schema_extra={
        "enum": [k.value for k in JobKind]})] = None,
    limit: Annotated[int, Query(ge=1, le=queries.MAX_LIST)] = 100,
) -> list[JobOut]:
    """Every job, newest first (finished ones included); a token limited to namespaces sees
    the jobs of their adapters."""
    jobs = [service.to_out(j)
            for j in queries.list_jobs(session, status=status, kind=kind, limit=limit)]
    return [j for j in jobs if access.sees(j.name)]


@router.post("/claim", response_model=ClaimedJobOut,
             responses={204: {"description": "nothing is claimable now"},
                        **error_responses(413, 422, 503)}, dependencies=_WORKER)
def claim(body: ClaimIn, session: SessionDep, settings: SettingsDep,
          handlers: HandlersDep) -> ClaimedJobOut | Response:
    """Take the next claimable job (queued, or running with an expired lease)."""
    claimed = service.claim(session, worker=body.worker, kinds=body.kinds,
                            lease_seconds=settings.job_lease_seconds, handlers=handlers)
    return Response(status_code=204) if claimed is None else claimed


# ":int": /jobs/claim is not a job id (a 405 there must not advertise GET).
@router.get("/{job_id:int}", response_model=JobOut, dependencies=_READ, responses=_LOOKUP)
def show_job(job_id: JobId, session: SessionDep) -> JobOut:
    return service.show(session, job_id=job_id)


@router.post("/{job_id}/heartbeat", response_model=LeaseOut, dependencies=_WORKER,
             responses=_REPORT)
def heartbeat(job_id: JobId, body: LeaseIn, session: SessionDep,
              settings: SettingsDep) -> LeaseOut:
    """Renew the lease; 409 ``lease_lost`` when the job was taken over or cancelled."""
    job = service.heartbeat(session, job_id=job_id, worker=body.worker, attempt=body.attempt,
                            lease_seconds=settings.job_lease_seconds)
    return LeaseOut(id=job.id, status=job.status.value, attempt=job.attempts,
                    lease_expires_at=job.lease_expires_at)


@router.post("/{job_id}/complete", response_model=JobOut, dependencies=_WORKER,
             responses=_REPORT)
def complete(job_id: JobId, body: CompleteJobIn, session: SessionDep,
             handlers: HandlersDep) -> JobOut:
    """The worker's report; 409 ``lease_lost`` from a worker that no longer holds the job."""
    job = service.complete(session, job_id=job_id, worker=body.worker, attempt=body.attempt,
                           report=body.report, handlers=handlers)
    return service.show(session, job_id=job.id)


@router.post("/{job_id}/fail", response_model=JobOut, dependencies=_WORKER,
             responses=_REPORT)
def fail(job_id: JobId, body: FailJobIn, session: SessionDep, handlers: HandlersDep) -> JobOut:
    """The worker could not run the job (no verdict)."""
    job = service.fail(session, job_id=job_id, worker=body.worker, attempt=body.attempt,
                       error=body.error, result=body.result, handlers=handlers)
    return service.show(session, job_id=job.id)


@router.post("/{job_id}/release", response_model=JobOut, dependencies=_WORKER,
             responses=_REPORT)
def release(job_id: JobId, body: LeaseIn, session: SessionDep, handlers: HandlersDep) -> JobOut:
    """A stopping worker hands the job back to the queue (the attempt does not count)."""
    job = service.release(session, job_id=job_id, worker=body.worker, attempt=body.attempt,
                          handlers=handlers)
    return service.show(session, job_id=job.id)


@router.post("/{job_id}/cancel", response_model=JobOut, dependencies=_MANAGE,
             responses=_CHANGE)
def cancel(job_id: JobId, session: SessionDep, handlers: HandlersDep) -> JobOut:
    """Cancel a queued or running job; 409 when it already finished."""
    job = service.cancel(session, job_id=job_id, handlers=handlers)
    return service.show(session, job_id=job.id)


@router.post("/{job_id}/retry", response_model=JobOut, dependencies=_MANAGE,
             responses=_CHANGE)
def retry(job_id: JobId, session: SessionDep) -> JobOut:
    """Queue a failed or cancelled job again; 409 otherwise."""
    job = service.retry(session, job_id=job_id)
    return service.show(session, job_id=job.id)
