"""Export routes: record a merged checkpoint, list a version's exports."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from registry.api.deps import (
    AccessDep,
    ActorDep,
    AdapterName,
    OptionalBaseName,
    SessionDep,
    SettingsDep,
    StoreDep,
    VersionNumber,
    require,
)
from registry.api.responses import error_responses
from registry.auth.scopes import Scope
from registry.exports import service
from registry.exports.schemas import ANONYMOUS, TOKEN_PREFIX, CreateExportIn, ExportOut

router = APIRouter(prefix="/api/v1", tags=["exports"])


@router.post("/exports", response_model=ExportOut, status_code=201,
             responses={200: {"description": "the same export was already recorded"},
                        **error_responses(404, 409, 413, 422, 503)},
             dependencies=[require(Scope.PUSH)])
def create_export(body: CreateExportIn, session: SessionDep, store: StoreDep,
                  settings: SettingsDep, actor: ActorDep, access: AccessDep,
                  response: Response) -> ExportOut:
    access.admit(body.name)
    # Who uploaded it comes from the request's authentication alone (anonymous until tokens
    # exist); clients decide whether to reuse an export from this provenance.
    provenance = ANONYMOUS if actor is None else f"{TOKEN_PREFIX}{actor.name}"
    export, created = service.create_export(
        session, store, body=body, settings=settings, provenance=provenance,
        created_by=actor.name if actor is not None else None,
    )
    if not created:
        response.status_code = 200
    return service.to_out(export)


@router.get("/adapters/{name:path}/versions/{version}/exports", response_model=list[ExportOut],
            responses=error_responses(404, 422, 503), dependencies=[require(Scope.READ)])
def list_exports(
    name: AdapterName, version: VersionNumber, session: SessionDep,
    base: OptionalBaseName = None,
    base_revision: Annotated[str | None, Query(max_length=200)] = None,
    dtype: Annotated[str | None, Query(pattern=r"^(float32|float16|bfloat16|mixed)$")] = None,
) -> list[ExportOut]:
    exports = service.list_exports(session, name=name, version=version, base=base,
                                   base_revision=base_revision, dtype=dtype)
    return [service.to_out(e) for e in exports]
