"""Adapter routes: create a version from uploaded blobs, list, show, tensors, lineage, compat."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from fastapi import Path as FPath
from starlette.concurrency import run_in_threadpool

from registry.adapters import queries, service
from registry.adapters.schemas import AdapterOut, CreateVersionIn, LineageOut, VersionOut
from registry.api.deps import (
    AccessDep,
    ActorDep,
    AdapterName,
    BaseRevision,
    OptionalBaseName,
    SessionDep,
    VersionNumber,
    acting_as,
    get_context,
    require,
)
from registry.api.responses import error_responses
from registry.auth.scopes import Scope
from registry.compat.schemas import CompatibleBaseOut, VerdictOut
from registry.context import RegistryContext
from registry.db.engine import session_scope
from registry.errors import InvalidReference, VersionNotFound

MAX_VERSION = 2**31 - 1

router = APIRouter(prefix="/api/v1/adapters", tags=["adapters"])
# What a lookup by name and version may answer besides its result.
_LOOKUP = error_responses(404, 422, 503)
_READ_SCOPE = [require(Scope.READ)]


@router.get("", response_model=list[AdapterOut], responses=error_responses(503),
            dependencies=_READ_SCOPE)
def list_adapters(session: SessionDep, access: AccessDep) -> list[AdapterOut]:
    """Every adapter (a token limited to namespaces sees theirs only)."""
    return [a for a in service.list_adapters(session) if access.sees(a.name)]


@router.post(
    "/{name:path}/versions",
    response_model=VersionOut,
    status_code=201,
    responses={200: {"description": "idempotency key matched an existing version"},
               **error_responses(404, 409, 413, 422, 503)},
    dependencies=[require(Scope.PUSH)],
)
async def create_version(
    name: AdapterName,
    body: CreateVersionIn,
    request: Request,
    actor: ActorDep,
) -> Response:
    """What CI calls for every push: all its database work (checks, inserts, commit) and the
    answer's serialisation run in one thread hop, in their own unit of work, rather than a
    hop per dependency, one for the handler and one for the commit."""
    body.created_by = acting_as(actor, body.created_by)
    created, data = await run_in_threadpool(_create_version, get_context(request), name, body)
    return Response(data, status_code=201 if created else 200, media_type="application/json")


def _create_version(ctx: RegistryContext, name: str, body: CreateVersionIn) -> tuple[bool, bytes]:
    with session_scope(ctx.sessions) as session:
        version, created = service.create_version(
            session, ctx.store, name=name, body=body, settings=ctx.settings
        )
        # Serialised here: FastAPI would validate the model again, on another thread hop.
        data = service.to_out(version).model_dump_json().encode()
    return created, data


@router.get("/{name:path}/versions", response_model=list[VersionOut], responses=_LOOKUP,
            dependencies=_READ_SCOPE)
def list_versions(name: AdapterName, session: SessionDep) -> list[VersionOut]:
    return [service.to_out(v) for v in queries.list_versions(session, name=name)]


@router.get("/{name:path}/versions/latest", response_model=VersionOut, responses=_LOOKUP,
            dependencies=_READ_SCOPE)
def latest_version(name: AdapterName, session: SessionDep) -> VersionOut:
    return service.to_out(queries.get_version(session, name=name, version=None))


@router.get("/{name:path}/versions/{version}/tensors", responses=_LOOKUP, dependencies=_READ_SCOPE)
def version_tensors(
    name: AdapterName, version: VersionNumber, session: SessionDep
) -> dict[str, Any]:
    return service.tensor_manifest(session, name=name, version=version)


@router.get("/{name:path}/versions/{version}/lineage", response_model=LineageOut,
            responses=_LOOKUP, dependencies=_READ_SCOPE)
def version_lineage(name: AdapterName, version: VersionNumber, session: SessionDep) -> LineageOut:
    """Ancestors (parent first), descendants (breadth-first, forks in other adapters included)
    and every merged export of each; at most 1,000 versions per direction."""
    return service.lineage(session, name=name, version=version)


def _version_or_latest(value: str) -> int | None:
    if value == "latest":
        return None
    if not value.isascii() or not value.isdigit() or int(value) < 1:
        raise InvalidReference(f"invalid version {value!r}: an integer from 1, or 'latest'")
    if int(value) > MAX_VERSION:
        # Well formed, and no version has that number (versions are 32-bit in the database).
        raise VersionNotFound(f"no version {value}")
    return int(value)


@router.get("/{name:path}/versions/{version}/compat",
            response_model=VerdictOut | list[CompatibleBaseOut], responses=_LOOKUP,
            dependencies=_READ_SCOPE)
def version_compat(
    name: AdapterName,
    version: Annotated[str, FPath(description="a version number or 'latest'",
                                  json_schema_extra={"pattern": r"^(latest|[1-9][0-9]*)$"})],
    session: SessionDep,
    base: OptionalBaseName = None,
    base_revision: BaseRevision = None,
) -> VerdictOut | list[CompatibleBaseOut]:
    """With ``base``: the static verdict for that pair. Without: every base model it fits."""
    number = _version_or_latest(version)
    if base is None:
        return service.version_compatible_bases(session, name=name, version=number)
    return service.version_verdict(session, name=name, version=number, base=base,
                                   base_revision=base_revision)


@router.get("/{name:path}/versions/{version}", response_model=VersionOut, responses=_LOOKUP,
            dependencies=_READ_SCOPE)
def get_version(name: AdapterName, version: VersionNumber, session: SessionDep) -> VersionOut:
    return service.to_out(queries.get_version(session, name=name, version=version))
