"""Adapter routes: create a version from uploaded blobs, list, show, tensors, lineage, compat."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi import Path as FPath
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match, Route
from starlette.types import Scope as AsgiScope

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
    authorize,
    get_context,
    require,
)
from registry.api.responses import error_responses
from registry.auth.scopes import Scope
from registry.compat.schemas import CompatibleBaseOut, VerdictOut
from registry.context import RegistryContext
from registry.db.engine import write_scope
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


# The push, served without FastAPI's request machinery (see push_route below).
MAX_NAME = 200  # AdapterName's max_length


async def _push(request: Request) -> Response:
    """``POST /api/v1/adapters/{name}/versions`` as the FastAPI route above answers it, step
    for step: the body read and parsed as JSON (a JSON content type, or none), the scope
    decision (``require(Scope.PUSH)``), then the path and body validated, every error
    rendered by the same handlers; ``tests/integration/test_push_route.py`` sends the same
    requests to both and compares the answers."""
    raw = await request.body()
    value: Any = None
    if raw:
        value = raw
        content_type = request.headers.get("content-type")
        if content_type and _is_json(content_type):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise RequestValidationError([{
                    "type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
                    "input": {}, "ctx": {"error": exc.msg}}]) from exc
            except UnicodeDecodeError as exc:
                raise HTTPException(400, "There was an error parsing the body") from exc
    principal = await authorize(request, Scope.PUSH)
    name = request.path_params["name"]
    errors: list[dict[str, Any]] = []
    if len(name) > MAX_NAME:
        errors.append({"type": "string_too_long", "loc": ("path", "name"),
                       "msg": f"String should have at most {MAX_NAME} characters",
                       "input": name, "ctx": {"max_length": MAX_NAME}})
    body: CreateVersionIn | None = None
    if not raw:
        errors.append({"type": "missing", "loc": ("body",), "msg": "Field required",
                       "input": None})
    else:
        try:
            body = CreateVersionIn.model_validate(value, from_attributes=True)
        except ValidationError as exc:
            errors.extend({**e, "loc": ("body", *e["loc"])} for e in exc.errors())
    if errors or body is None:
        raise RequestValidationError(errors)
    body.created_by = acting_as(principal, body.created_by)
    created, data = await run_in_threadpool(_create_version, get_context(request), name, body)
    return Response(data, status_code=201 if created else 200, media_type="application/json")


def _is_json(content_type: str) -> bool:
    # FastAPI's test: application/json or application/*+json, parameters ignored.
    kind = content_type.partition(";")[0].strip().lower()
    main, _, sub = kind.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


class _HotRoute(Route):
    """A plain Starlette route that names itself in the scope as FastAPI's routes do (the
    request's metrics and log line use its template)."""

    def matches(self, scope: AsgiScope) -> tuple[Match, AsgiScope]:
        match, child = super().matches(scope)
        if match is not Match.NONE:
            child["route"] = self
        return match, child


# CI's one hot write. FastAPI's request handling (dependency solving, body field, included
# router matching) cost about as much as the push's own checks; the app puts this route in
# front of its routers (registry.api.app), so it serves every push, while the FastAPI route
# above stays for the OpenAPI schema and the access table. Same path, same answers.
push_route = _HotRoute("/api/v1/adapters/{name:path}/versions", _push, methods=["POST"],
                       name="create_version", include_in_schema=False)


def _create_version(ctx: RegistryContext, name: str, body: CreateVersionIn) -> tuple[bool, bytes]:
    with write_scope(ctx.sessions, one_statement=service.writes_in_one_statement(body)) as session:
        version, created = service.create_version(
            session, ctx.store, name=name, body=body, settings=ctx.settings
        )
        # Serialised here: FastAPI would validate the model again, on another thread hop.
        data = version.model_dump_json().encode()
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
