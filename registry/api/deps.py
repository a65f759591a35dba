"""Dependency aliases for routers: the session (one transaction per request), store, settings,
and the actor (who is asking)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
import fastapi.routing
from fastapi import Depends, Path, Query, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from registry.api.responses import error_responses
from registry.auth.scopes import Principal, Scope
from registry.auth.service import authenticate
from registry.config import Settings
from registry.context import RegistryContext
from registry.db.engine import end_session, session_scope
from registry.errors import PermissionDenied, Unauthenticated
from registry.jobs.handlers import Handlers
from registry.refs import NAME_PATTERN
from registry.storage import BlobStore
from registry.storage.base import DIGEST_PATTERN


def get_context(request: Request) -> RegistryContext:
    ctx: RegistryContext = request.app.state.registry
    return ctx


async def get_session(request: Request) -> AsyncIterator[Session]:
    """The request's unit of work: the one place its transaction commits or rolls back.

    Async, so opening it costs no thread hop (a session connects on its first statement);
    the commit (or rollback) and the close, which talk to the database, run together in one
    hop, shielded so that a cancelled request still ends its transaction and returns the
    connection.
    """
    session = get_context(request).sessions()
    try:
        yield session
    except BaseException:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(end_session, session, commit=False)
        raise
    with anyio.CancelScope(shield=True):
        await run_in_threadpool(end_session, session, commit=True)


def get_store(request: Request) -> BlobStore:
    return get_context(request).store


def get_settings_dep(request: Request) -> Settings:
    return get_context(request).settings


def get_actor(request: Request) -> Principal | None:
    """The principal the request authenticated as, or None for an anonymous request.

    Set on ``request.state.principal`` by the route's scope dependency (``require``).
    """
    principal: Principal | None = getattr(request.state, "principal", None)
    return principal


def acting_as(principal: Principal | None, declared: str | None) -> str | None:
    """Who a recorded change is by: the token's name when the request carried one (whatever
    the body says), else the name the client declared (auth off: a laptop, CI without tokens)."""
    return principal.name if principal is not None else declared


def bearer_token(request: Request) -> str | None:
    """The secret of an ``Authorization: Bearer …`` header, or None when there is none.

    Raises:
        Unauthenticated: an Authorization header of another kind, or an empty bearer.
    """
    header = request.headers.get("authorization")
    if header is None:
        return None
    kind, _, secret = header.strip().partition(" ")
    if kind.lower() != "bearer" or not secret.strip():
        raise Unauthenticated("invalid Authorization header: expected 'Bearer arg_…'")
    return secret.strip()


def _authenticate(ctx: RegistryContext, secret: str) -> Principal:
    with session_scope(ctx.sessions) as session:
        return authenticate(session, secret)


@dataclass(frozen=True)
class Access:
    """What the request may do: its principal, and whether REGISTRY_AUTH enforces limits.

    Routes use it for decisions their one scope cannot express: ``promote --force`` and a base
    model read from a server-side source need admin; a body naming an adapter is checked
    against the token's namespaces.
    """

    principal: Principal | None
    enforced: bool

    def demand(self, scope: Scope, *, why: str) -> None:
        """Raises Unauthenticated or PermissionDenied unless the principal holds ``scope``."""
        if not self.enforced:
            return
        if self.principal is None:
            raise Unauthenticated(f"a token with the {scope.value!r} scope is required")
        if not self.principal.has_scope(scope):
            raise PermissionDenied(f"token {self.principal.name!r} lacks the {scope.value!r} "
                                   f"scope, which {why} needs")

    def sees(self, adapter: str | None) -> bool:
        """Whether a listing shows ``adapter`` to this request: a token limited to namespaces
        lists only their adapters (and what names no adapter) when auth is enforced."""
        return not self.enforced or self.principal is None or self.principal.may_touch(adapter)

    def admit(self, adapter: str | None) -> None:
        """Raises PermissionDenied when ``adapter`` lies outside the token's namespaces."""
        if self.enforced and self.principal is not None and not self.principal.may_touch(adapter):
            allowed = ", ".join(f"{ns}/*" for ns in sorted(self.principal.namespaces))
            raise PermissionDenied(f"token {self.principal.name!r} may not touch adapter "
                                   f"{adapter!r} (its namespaces: {allowed})")


class RequireScope:
    """A route's scope decision, as a dependency: ``dependencies=[require(Scope.PUSH)]``.

    The table-driven access test walks every route's dependencies for one of these, so a new
    route without a scope decision fails the suite. ``scope=None`` marks a deliberately open
    route (health, readiness, metrics, the token introspection): nothing is checked or looked
    up there.

    With REGISTRY_AUTH=required: no token or a bad one is a 401; a token without the scope, or
    whose namespaces do not admit the adapter named by the path parameter ``adapter_param``
    (default ``name``; None on routes whose ``name`` is not an adapter), is a 403. With auth
    off every request passes, and a valid token, if sent, still names the actor.

    A principal already on ``request.state.principal`` (set by server code, e.g. a web UI's
    session cookie middleware) is used as it is, without a bearer token.
    """

    def __init__(self, scope: Scope | None, *, adapter_param: str | None = "name") -> None:
        self.scope = scope
        self.adapter_param = adapter_param

    async def __call__(self, request: Request) -> Principal | None:
        return await authorize(request, self.scope, adapter_param=self.adapter_param)


async def authorize(request: Request, scope: Scope | None, *,
                    adapter_param: str | None = "name") -> Principal | None:
    """The scope decision of RequireScope, for a route that is not a FastAPI route (the push's
    hot route calls it directly); sets ``request.state.principal`` and ``.access``.

    Raises:
        Unauthenticated, PermissionDenied: as RequireScope describes.
    """
    # Async: an open request (auth off, no token) costs no thread hop; a token lookup runs on
    # the threadpool.
    principal: Principal | None = getattr(request.state, "principal", None)
    if scope is None:
        request.state.principal = principal
        return principal
    ctx = get_context(request)
    enforced = ctx.settings.auth_required
    if principal is None:
        try:
            secret = bearer_token(request)
            if secret is not None:
                principal = await run_in_threadpool(_authenticate, ctx, secret)
        except Unauthenticated:
            if enforced:
                raise
            principal = None  # auth off: a bad token is no worse than none
    access = Access(principal, enforced)
    request.state.principal = principal
    request.state.access = access
    access.demand(scope, why=f"{request.method} {_template(request)}")
    if adapter_param is not None:
        adapter = request.path_params.get(adapter_param)
        access.admit(adapter if isinstance(adapter, str) else None)
    return principal


def _template(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path_format", None) or request.url.path


def require(scope: Scope | None, *, adapter_param: str | None = "name") -> Any:
    """The dependency a route (or router) lists to declare the scope it needs.

    Args:
        scope: the scope needed; None for a deliberately open route.
        adapter_param: the path parameter naming an adapter, checked against the token's
            namespaces (None where the route's ``name`` is a base model or a suite).
    """
    return Depends(RequireScope(scope, adapter_param=adapter_param))


ERROR_SCHEMA_REF = "#/components/schemas/ErrorOut"


def api_routes(routes: list[Any]) -> list[Any]:
    """Every API route of an app as it is served: with its routers' prefixes and dependencies
    (FastAPI >= 0.160 keeps included routers as they are and combines them lazily)."""
    iter_contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    contexts = list(iter_contexts(routes)) if iter_contexts is not None else list(routes)
    return [c for c in contexts
            if isinstance(getattr(c, "original_route", c), fastapi.routing.APIRoute)]


def scope_decisions(route: Any) -> list[RequireScope]:
    """Every RequireScope among a served route's dependencies (route, router and nested)."""
    found: list[RequireScope] = []
    root = getattr(route, "dependant", None)
    stack = list(root.dependencies) if root is not None else []
    while stack:
        dependant = stack.pop()
        if isinstance(dependant.call, RequireScope):
            found.append(dependant.call)
        stack.extend(dependant.dependencies)
    return found


def document_access(routes: list[Any]) -> None:
    """Add the 401 and 403 answers to the OpenAPI responses of every route that needs a scope."""
    for route in api_routes(routes):
        if any(d.scope is not None for d in scope_decisions(route)):
            original = getattr(route, "original_route", route)
            for target in {id(original.responses): original.responses,
                           id(route.responses): route.responses}.values():
                for status, spec in error_responses(401, 403).items():
                    # Added after the route was built, so as a schema reference (the route
                    # turned its "model" entries into fields already); every app documents
                    # ErrorOut through its other error answers.
                    target.setdefault(status, {"description": spec["description"], "content": {
                        "application/json": {"schema": {"$ref": ERROR_SCHEMA_REF}}}})


def get_access(request: Request) -> Access:
    """The request's Access, as its scope dependency found it; a route without one (none
    should exist: the access test fails) is treated as anonymous."""
    access: Access | None = getattr(request.state, "access", None)
    if access is None:
        access = Access(get_actor(request), get_context(request).settings.auth_required)
    return access


def get_job_handlers(request: Request) -> Handlers:
    # Wired by the app factory: the queue calls the job kinds' hooks without importing them.
    handlers: Handlers = request.app.state.job_handlers
    return handlers


# FastAPI runs a plain ``def`` dependency on the threadpool: one thread hop each (measured:
# ~0.2 ms apiece on a busy 2-core machine, five of them on a push). These only read request
# state, so the dependencies are ``async def`` wrappers, run on the event loop; the plain
# functions above stay for code that is not a dependency.


async def _context_dep(request: Request) -> RegistryContext:
    return get_context(request)


async def _store_dep(request: Request) -> BlobStore:
    return get_store(request)


async def _settings_dep(request: Request) -> Settings:
    return get_settings_dep(request)


async def _actor_dep(request: Request) -> Principal | None:
    return get_actor(request)


async def _access_dep(request: Request) -> Access:
    return get_access(request)


async def _handlers_dep(request: Request) -> Handlers:
    return get_job_handlers(request)


ContextDep = Annotated[RegistryContext, Depends(_context_dep)]
# scope="function": commit before the response is sent, so a 2xx means the write is durable.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
StoreDep = Annotated[BlobStore, Depends(_store_dep)]
SettingsDep = Annotated[Settings, Depends(_settings_dep)]
ActorDep = Annotated[Principal | None, Depends(_actor_dep)]
AccessDep = Annotated[Access, Depends(_access_dep)]
HandlersDep = Annotated[Handlers, Depends(_handlers_dep)]

# The rules registry.refs and registry.storage enforce, also written into the OpenAPI schema
# (json_schema_extra: documented, not validated by FastAPI, so a bad value still gets the
# registry's own error code, e.g. invalid_name or invalid_digest, rather than a generic one).

AdapterName = Annotated[
    str, Path(description="adapter name, optionally namespace/name", max_length=200,
              json_schema_extra={"pattern": NAME_PATTERN})
]
VersionNumber = Annotated[int, Path(ge=1, le=2**31 - 1, description="version number")]
Digest = Annotated[str, Path(description="sha256:<64 hex digits>", max_length=71,
                             json_schema_extra={"pattern": DIGEST_PATTERN})]
BaseName = Annotated[str, Query(max_length=200, description="base model name",
                                json_schema_extra={"pattern": NAME_PATTERN})]
OptionalBaseName = Annotated[str | None, Query(max_length=200, description="base model name",
                                               json_schema_extra={"pattern": NAME_PATTERN})]
BaseRevision = Annotated[str | None, Query(max_length=200, description="default: latest")]
JobId = Annotated[int, Path(ge=1, le=2**63 - 1, description="job id")]
