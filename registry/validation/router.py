"""Validation route: enqueue a validation of a version (checked first; nothing is queued on a
bad request)."""

from __future__ import annotations

from fastapi import APIRouter

from registry.api.deps import (
    ActorDep,
    AdapterName,
    SessionDep,
    SettingsDep,
    VersionNumber,
    acting_as,
    require,
)
from registry.api.responses import error_responses
from registry.auth.scopes import Scope
from registry.jobs import service as jobs
from registry.jobs.schemas import JobOut
from registry.validation import service
from registry.validation.schemas import ValidateIn

router = APIRouter(prefix="/api/v1/adapters", tags=["validation"])


@router.post("/{name:path}/versions/{version}/validate", response_model=JobOut,
             status_code=201, dependencies=[require(Scope.PUSH)],
             responses=error_responses(404, 409, 413, 422, 503))
def validate(name: AdapterName, version: VersionNumber, body: ValidateIn, session: SessionDep,
             settings: SettingsDep, actor: ActorDep) -> JobOut:
    """Queue a validation: smoke, the suites named here, and the adapter's attached suites."""
    body.created_by = acting_as(actor, body.created_by)
    job = service.request_validation(session, name=name, version=version, body=body,
                                     settings=settings)
    return jobs.show(session, job_id=job.id)
