"""Lifecycle routes: resolve, list, promote, roll back and delete aliases; history; policies;
archive. Thin: each calls one service function."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from registry.adapters.queries import get_version
from registry.adapters.schemas import VersionOut
from registry.adapters.service import to_out
from registry.api.deps import (
    AccessDep,
    AdapterName,
    SessionDep,
    VersionNumber,
    acting_as,
    get_context,
    require,
)
from registry.api.responses import error_responses
from registry.auth.scopes import Scope
from registry.context import RegistryContext
from registry.db.engine import session_scope
from registry.lifecycle import policies, queries, service
from registry.lifecycle.cache import VersionObjects
from registry.lifecycle.schemas import (
    AliasChangeIn,
    AliasDeletedOut,
    AliasOut,
    HistoryEntryOut,
    PolicyIn,
    PolicyOut,
    PromoteIn,
    PromoteOut,
    RollbackIn,
    RollbackOut,
)
from registry.refs import ALIAS_RE

router = APIRouter(prefix="/api/v1/adapters", tags=["lifecycle"])
policies_router = APIRouter(prefix="/api/v1/policies", tags=["lifecycle"])

# The pattern is documented, not validated here: a bad alias gets the registry's own
# invalid_alias answer.
ALIAS_PATTERN = f"^{ALIAS_RE.pattern}$"
AliasName = Annotated[str, Path(max_length=100, description="alias, e.g. production",
                                json_schema_extra={"pattern": ALIAS_PATTERN})]
_READ = error_responses(404, 422, 503)
_MOVE = error_responses(404, 409, 413, 422, 503)
_READ_SCOPE = [require(Scope.READ)]
_PROMOTE_SCOPE = [require(Scope.PROMOTE)]
# Policies decide what a promotion must pass: setting them is an admin's job.
_ADMIN_SCOPE = [require(Scope.ADMIN)]


@router.get("/{name:path}/aliases", response_model=list[AliasOut], responses=_READ,
            dependencies=_READ_SCOPE)
def list_aliases(name: AdapterName, session: SessionDep) -> list[AliasOut]:
    return service.list_aliases(session, name=name)


def version_objects(request: Request) -> VersionObjects:
    """The app's cache of version objects by stamp (see registry/lifecycle/cache.py)."""
    cache: VersionObjects | None = getattr(request.app.state, "version_objects", None)
    if cache is None:
        cache = request.app.state.version_objects = VersionObjects()
    return cache


def _cached(ctx: RegistryContext, cache: VersionObjects, name: str, alias: str) -> bytes | None:
    """A hit needs one statement; on PostgreSQL it runs outside a transaction (autocommit),
    sparing the BEGIN and COMMIT round trips. (SQLite's connections begin IMMEDIATE.)"""
    if ctx.engine.dialect.name != "postgresql":
        return None
    with ctx.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        stamp = queries.alias_stamp(conn, name=name, alias=alias)
        return cache.get(stamp) if stamp is not None else None


def _version_json(ctx: RegistryContext, cache: VersionObjects, name: str, alias: str) -> bytes:
    hit = _cached(ctx, cache, name, alias)
    if hit is not None:
        return hit
    with session_scope(ctx.sessions) as session:
        stamp = queries.alias_stamp(session, name=name, alias=alias)
        body = cache.get(stamp) if stamp is not None else None
        if body is not None:
            return body
        # Not seen in this state (or no such alias: resolve_alias says which).
        body = to_out(queries.resolve_alias(session, name=name, alias=alias)).model_dump_json()\
            .encode()
        # Kept only if nothing committed in between (each statement sees the latest commits).
        if stamp is not None and queries.alias_stamp(session, name=name, alias=alias) == stamp:
            cache.put(stamp, body)
        return body


@router.get("/{name:path}/aliases/{alias}", response_model=VersionOut, responses=_READ,
            dependencies=_READ_SCOPE)
async def resolve_alias(name: AdapterName, alias: AliasName, request: Request) -> Response:
    """The version ``NAME@ALIAS`` points at (the same object as ``show --json``).

    What serving fleets call all day, so it takes one thread hop for all its database work
    (its own session scope, read-only) instead of one per dependency and one for the answer;
    the answer is the cached JSON when the version object's stamp is unchanged.
    """
    body = await run_in_threadpool(_version_json, get_context(request),
                                   version_objects(request), name, alias)
    return Response(body, media_type="application/json")


@router.put("/{name:path}/aliases/{alias}", response_model=PromoteOut, responses=_MOVE,
            dependencies=_PROMOTE_SCOPE)
def promote(name: AdapterName, alias: AliasName, body: PromoteIn,
            session: SessionDep, access: AccessDep) -> Response:
    """Move (or create) the alias through the gates; 422 ``gate_failed`` changes nothing.
    ``force`` (skip failing gates) needs the admin scope."""
    if body.force:
        access.demand(Scope.ADMIN, why="promote --force")
    out = service.promote(session, name=name, alias=alias, version=body.version,
                          actor=acting_as(access.principal, body.actor), reason=body.reason,
                          expect_current=body.expect_current, force=body.force)
    # Serialised here: FastAPI would validate the model again, on another thread hop.
    return Response(out.model_dump_json(), media_type="application/json")


@router.post("/{name:path}/aliases/{alias}/rollback", response_model=RollbackOut, responses=_MOVE,
             dependencies=_PROMOTE_SCOPE)
def rollback(name: AdapterName, alias: AliasName, session: SessionDep, access: AccessDep,
             body: RollbackIn | None = None) -> RollbackOut:
    body = body or RollbackIn()
    return service.rollback(session, name=name, alias=alias, to=body.to,
                            actor=acting_as(access.principal, body.actor), reason=body.reason)


@router.delete("/{name:path}/aliases/{alias}", response_model=AliasDeletedOut, responses=_MOVE,
               dependencies=_PROMOTE_SCOPE)
def delete_alias(name: AdapterName, alias: AliasName, session: SessionDep, access: AccessDep,
                 body: AliasChangeIn | None = None) -> AliasDeletedOut:
    body = body or AliasChangeIn()
    return service.delete_alias(session, name=name, alias=alias,
                                actor=acting_as(access.principal, body.actor), reason=body.reason)


@router.get("/{name:path}/history", response_model=list[HistoryEntryOut], responses=_READ,
            dependencies=_READ_SCOPE)
def history(
    name: AdapterName,
    session: SessionDep,
    alias: Annotated[str | None, Query(max_length=100,
                                       json_schema_extra={"pattern": ALIAS_PATTERN})] = None,
    limit: Annotated[int | None, Query(ge=1, le=service.MAX_HISTORY)] = None,
) -> list[HistoryEntryOut]:
    """Every move of the adapter's aliases (or of one), newest first."""
    return service.history(session, name=name, alias=alias, limit=limit)


@router.post("/{name:path}/versions/{version}/archive", response_model=VersionOut, responses=_MOVE,
             dependencies=_PROMOTE_SCOPE)
def archive(name: AdapterName, version: VersionNumber, session: SessionDep, access: AccessDep,
            body: AliasChangeIn | None = None) -> VersionOut:
    """Set the version ``archived``; 409 ``version_aliased`` while an alias points at it."""
    body = body or AliasChangeIn()
    service.archive(session, name=name, version=version,
                    actor=acting_as(access.principal, body.actor), reason=body.reason)
    return to_out(get_version(session, name=name, version=version))


@router.get("/{name:path}/policies", response_model=list[PolicyOut], responses=_READ,
            dependencies=_READ_SCOPE)
def adapter_policies(name: AdapterName, session: SessionDep) -> list[PolicyOut]:
    """The policies that apply to the adapter's aliases: its own and the defaults."""
    return policies.list_policies(session, name=name)


@router.put("/{name:path}/policies/{alias}", response_model=PolicyOut, responses=_MOVE,
            dependencies=_ADMIN_SCOPE)
def set_adapter_policy(name: AdapterName, alias: AliasName, body: PolicyIn,
                       session: SessionDep, access: AccessDep) -> PolicyOut:
    body.actor = acting_as(access.principal, body.actor)
    return policies.set_policy(session, name=name, alias=alias, body=body)


@router.delete("/{name:path}/policies/{alias}", status_code=204, responses=_READ,
               dependencies=_ADMIN_SCOPE)
def delete_adapter_policy(name: AdapterName, alias: AliasName, session: SessionDep) -> Response:
    policies.delete_policy(session, name=name, alias=alias)
    return Response(status_code=204)


@policies_router.get("", response_model=list[PolicyOut], responses=error_responses(503),
                     dependencies=_READ_SCOPE)
def default_policies(session: SessionDep) -> list[PolicyOut]:
    """The registry-wide default policies, by alias."""
    return policies.list_policies(session, name=None)


@policies_router.put("/{alias}", response_model=PolicyOut, responses=_MOVE,
                     dependencies=_ADMIN_SCOPE)
def set_default_policy(alias: AliasName, body: PolicyIn, session: SessionDep,
                       access: AccessDep) -> PolicyOut:
    body.actor = acting_as(access.principal, body.actor)
    return policies.set_policy(session, name=None, alias=alias, body=body)


@policies_router.delete("/{alias}", status_code=204, responses=_READ,
                        dependencies=_ADMIN_SCOPE)
def delete_default_policy(alias: AliasName, session: SessionDep) -> Response:
    policies.delete_policy(session, name=None, alias=alias)
    return Response(status_code=204)
