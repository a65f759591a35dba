"""Base model routes: register, list, show, tensor manifest, and the versions that fit one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from registry.api.deps import (
    AccessDep,
    AdapterName,
    BaseName,
    BaseRevision,
    SessionDep,
    SettingsDep,
    StoreDep,
    require,
)
from registry.api.responses import error_responses
from registry.auth.scopes import Scope
from registry.base_models import queries, service
from registry.base_models.schemas import BaseModelOut, RegisterBaseIn
from registry.compat.schemas import CompatibleVersionOut

router = APIRouter(prefix="/api/v1/base-models", tags=["base models"])
compat_router = APIRouter(prefix="/api/v1", tags=["compatibility"])
# A base model's name is not an adapter's: no namespace limit applies to it.
_READ_SCOPE = [require(Scope.READ, adapter_param=None)]


@router.post("", response_model=BaseModelOut, status_code=201,
             responses={200: {"description": "the same weights were already registered"},
                        **error_responses(404, 409, 413, 422, 503)},
             dependencies=[require(Scope.PUSH, adapter_param=None)])
def register_base(body: RegisterBaseIn, session: SessionDep, store: StoreDep,
                  settings: SettingsDep, response: Response, access: AccessDep) -> BaseModelOut:
    # A referenced source (hf://, s3://) is read with the server's own credentials, so only
    # REGISTRY_BASE_SOURCES is allowed (checked in the service before any read), and only an
    # admin token may make the server read one; uploaded files need push alone.
    if body.files is None:
        access.demand(Scope.ADMIN, why="registering a base model from a server-side source")
    base, created = service.register_base(session, store, body=body, settings=settings,
                                          sources=settings.base_source_allowlist())
    if not created:
        response.status_code = 200
    return service.to_out(base)


@router.get("", response_model=list[BaseModelOut], responses=error_responses(503),
            dependencies=_READ_SCOPE)
def list_bases(session: SessionDep) -> list[BaseModelOut]:
    return [service.to_out(b) for b in queries.list_bases(session)]


@router.get("/{name:path}/tensors", responses=error_responses(404, 422, 503),
            dependencies=_READ_SCOPE)
def base_tensors(name: AdapterName, session: SessionDep,
                 revision: BaseRevision = None) -> dict[str, Any]:
    return queries.get_base(session, name=name, revision=revision).tensor_manifest


@router.get("/{name:path}", response_model=BaseModelOut,
            responses=error_responses(404, 422, 503), dependencies=_READ_SCOPE)
def show_base(name: AdapterName, session: SessionDep,
              revision: BaseRevision = None) -> BaseModelOut:
    return service.to_out(queries.get_base(session, name=name, revision=revision))


@compat_router.get("/compat", response_model=list[CompatibleVersionOut],
                   responses=error_responses(404, 422, 503), dependencies=_READ_SCOPE)
def compatible_versions(session: SessionDep, access: AccessDep, base: BaseName,
                        base_revision: BaseRevision = None) -> list[CompatibleVersionOut]:
    """Every adapter version statically compatible with the base model (a token limited to
    namespaces sees their adapters' versions)."""
    found = service.compatible_versions(session, base=base, base_revision=base_revision)
    return [v for v in found if access.sees(v.name)]
