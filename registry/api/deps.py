"""Dependency aliases for routers: the session (one transaction per request), store, settings,
and the actor (who is asking)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from sqlalchemy.orm import Session

from registry.config import Settings
from registry.context import RegistryContext
from registry.db.engine import session_scope
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


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: an API token's name and its scopes."""

    name: str
    scopes: frozenset[str]


def get_actor(request: Request) -> Principal | None:
    """The principal the request authenticated as, or None for an anonymous request.

    The server has no authentication yet, so every request is anonymous. Issue 13 (API tokens)
    resolves the bearer token here; routes already take ``ActorDep`` and pass the actor on
    (e.g. who uploaded an export), and the routes that will need a scope say so where they
    use it.
    """
    return None


ContextDep = Annotated[RegistryContext, Depends(get_context)]
# scope="function": commit before the response is sent, so a 2xx means the write is durable.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
StoreDep = Annotated[BlobStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
ActorDep = Annotated[Principal | None, Depends(get_actor)]

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
