"""Dependency aliases for routers: the session (one transaction per request), store, settings,
and the actor (who is asking)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from sqlalchemy.orm import Session

from registry.auth.scopes import Principal, Scope
from registry.config import Settings
from registry.context import RegistryContext
from registry.db.engine import session_scope
from registry.jobs.handlers import Handlers
from registry.refs import NAME_PATTERN
from registry.storage import BlobStore
from registry.storage.base import DIGEST_PATTERN


def get_context(request: Request) -> RegistryContext:
    ctx: RegistryContext = request.app.state.registry
    return ctx


def get_session(request: Request) -> Iterator[Session]:
    # The one place a request's transaction commits or rolls back.
    with session_scope(get_context(request).sessions) as session:
        yield session


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


class RequireScope:
    """A route's scope decision, as a dependency: ``dependencies=[require(Scope.PUSH)]``.

    The table-driven access test walks every route's dependencies for one of these, so a new
    route without a scope decision fails the suite. ``scope=None`` marks a deliberately open
    route (health, readiness, metrics, the token introspection).
    """

    def __init__(self, scope: Scope | None) -> None:
        self.scope = scope

    def __call__(self, request: Request) -> Principal | None:
        # Issue 13 (in progress): resolve the bearer token, 401/403 per REGISTRY_AUTH.
        request.state.principal = None
        return None


def require(scope: Scope | None) -> Any:
    """The dependency a route (or router) lists to declare the scope it needs."""
    return Depends(RequireScope(scope))


def get_job_handlers(request: Request) -> Handlers:
    # Wired by the app factory: the queue calls the job kinds' hooks without importing them.
    handlers: Handlers = request.app.state.job_handlers
    return handlers


ContextDep = Annotated[RegistryContext, Depends(get_context)]
# scope="function": commit before the response is sent, so a 2xx means the write is durable.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
StoreDep = Annotated[BlobStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
ActorDep = Annotated[Principal | None, Depends(get_actor)]
HandlersDep = Annotated[Handlers, Depends(get_job_handlers)]

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
