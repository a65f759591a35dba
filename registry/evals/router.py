"""Eval routes: record scores computed elsewhere, list scores (a version's, a base's own), and
eval suites (add, list, show, attach)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from registry.adapters.queries import get_version
from registry.adapters.schemas import ScoreOut
from registry.adapters.service import to_out
from registry.api.deps import (
    AccessDep,
    ActorDep,
    AdapterName,
    BaseRevision,
    SessionDep,
    SettingsDep,
    StoreDep,
    VersionNumber,
    acting_as,
    require,
)
from registry.api.responses import error_responses
from registry.auth.scopes import Scope
from registry.evals import queries, service
from registry.evals.metrics import SUITE_RE
from registry.evals.schemas import (
    AttachmentOut,
    AttachSuiteIn,
    CreateSuiteIn,
    RecordScoresIn,
    SuiteOut,
)

router = APIRouter(prefix="/api/v1/adapters", tags=["evals"])
suites_router = APIRouter(prefix="/api/v1", tags=["evals"])

SuiteName = Annotated[str, Path(max_length=100, description="suite name",
                                 json_schema_extra={"pattern": SUITE_RE.pattern})]


@router.post("/{name:path}/versions/{version}/evals", response_model=list[ScoreOut],
             status_code=201, responses=error_responses(404, 413, 422, 503),
             dependencies=[require(Scope.PUSH)])
def record_scores(name: AdapterName, version: VersionNumber, body: RecordScoresIn,
                  session: SessionDep, actor: ActorDep) -> list[ScoreOut]:
    """Record ``suite.metric`` scores a CI job computed (``source=ci``)."""
    body.created_by = acting_as(actor, body.created_by)
    return service.record_from_request(session, name=name, version=version, body=body)


@router.get("/{name:path}/versions/{version}/evals", response_model=list[ScoreOut],
            responses=error_responses(404, 422, 503), dependencies=[require(Scope.READ)])
def list_scores(name: AdapterName, version: VersionNumber, session: SessionDep) -> list[ScoreOut]:
    """The newest score of each suite.metric of the version, on each base."""
    return to_out(get_version(session, name=name, version=version)).scores


@suites_router.get("/base-models/{name:path}/evals", response_model=list[ScoreOut],
                   dependencies=[require(Scope.READ, adapter_param=None)],
                   responses=error_responses(404, 422, 503))
def base_scores(name: AdapterName, session: SessionDep,
                revision: BaseRevision = None) -> list[ScoreOut]:
    """The base model's own newest scores (e.g. its perplexity on a suite)."""
    return service.base_scores_out(session, base=name, revision=revision)


@suites_router.post("/suites", response_model=SuiteOut, status_code=201,
                    responses={200: {"description": "the same suite content was added before"},
                               **error_responses(404, 409, 413, 422, 503)},
                    dependencies=[require(Scope.PUSH, adapter_param=None)])
def create_suite(body: CreateSuiteIn, session: SessionDep, store: StoreDep,
                 settings: SettingsDep, response: Response, actor: ActorDep) -> SuiteOut:
    """Add a suite version from uploaded files (every line checked; 422 names a bad line)."""
    body.created_by = acting_as(actor, body.created_by)
    suite, created = service.create_suite(session, store, body=body,
                                          max_bytes=settings.max_suite_bytes)
    if not created:
        response.status_code = 200
    return service.suite_out(suite)


@suites_router.get("/suites", response_model=list[SuiteOut],
                   dependencies=[require(Scope.READ, adapter_param=None)],
                   responses=error_responses(503))
def list_suites(session: SessionDep) -> list[SuiteOut]:
    """The latest version of every suite."""
    return [service.suite_out(s) for s in queries.latest_suites(session)]


@suites_router.get("/suites/{name}", response_model=SuiteOut,
                   dependencies=[require(Scope.READ, adapter_param=None)],
                   responses=error_responses(404, 422, 503))
def show_suite(name: SuiteName, session: SessionDep,
               version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None) -> SuiteOut:
    return service.suite_out(queries.get_suite(session, name=name, version=version))


@suites_router.post("/suites/{name}/attachments", response_model=AttachmentOut,
                    status_code=201, responses={200: {"description": "attached already"},
                                                **error_responses(404, 413, 422, 503)},
                    dependencies=[require(Scope.PUSH, adapter_param=None)])
def attach_suite(name: SuiteName, body: AttachSuiteIn, session: SessionDep,
                 response: Response, access: AccessDep) -> AttachmentOut:
    """Run the suite on every validation of an adapter (refused when its kind does not fit)."""
    access.admit(body.adapter)
    out = service.attach_suite(session, suite_name=name, adapter_name=body.adapter,
                               actor=acting_as(access.principal, body.created_by))
    if not out.created:
        response.status_code = 200
    return out
