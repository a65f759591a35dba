"""Eval score routes: record scores computed elsewhere, list a version's newest scores."""

from __future__ import annotations

from fastapi import APIRouter

from registry.adapters.queries import get_version
from registry.adapters.schemas import ScoreOut
from registry.adapters.service import to_out
from registry.api.deps import AdapterName, SessionDep, VersionNumber
from registry.api.responses import error_responses
from registry.evals import service
from registry.evals.schemas import RecordScoresIn

router = APIRouter(prefix="/api/v1/adapters", tags=["evals"])


@router.post("/{name:path}/versions/{version}/evals", response_model=list[ScoreOut],
             status_code=201, responses=error_responses(404, 413, 422, 503))
def record_scores(name: AdapterName, version: VersionNumber, body: RecordScoresIn,
                  session: SessionDep) -> list[ScoreOut]:
    """Record ``suite.metric`` scores a CI job computed (``source=ci``)."""
    return service.record_from_request(session, name=name, version=version, body=body)


@router.get("/{name:path}/versions/{version}/evals", response_model=list[ScoreOut],
            responses=error_responses(404, 422, 503))
def list_scores(name: AdapterName, version: VersionNumber, session: SessionDep) -> list[ScoreOut]:
    """The newest score of each suite.metric of the version, on each base."""
    return to_out(get_version(session, name=name, version=version)).scores
