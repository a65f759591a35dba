"""Lifecycle routes: resolve, list, promote, roll back and delete aliases; history; policies;
archive. Thin: each calls one service function."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from registry.adapters.queries import get_version
from registry.adapters.schemas import VersionOut
from registry.adapters.service import to_out
from registry.api.deps import AdapterName, SessionDep, VersionNumber
from registry.lifecycle import policies, queries, service
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

router = APIRouter(prefix="/api/v1/adapters", tags=["lifecycle"])
policies_router = APIRouter(prefix="/api/v1/policies", tags=["lifecycle"])

AliasName = Annotated[str, Path(max_length=100, description="alias, e.g. production")]


def authorize_force(body: PromoteIn) -> None:
    """The access-control hook for ``force``: once tokens exist (a later issue), a forced
    promotion needs the admin scope, checked here from the request's token before the service
    runs. Until then every caller may force, and the history records who did."""


@router.get("/{name:path}/aliases", response_model=list[AliasOut])
def list_aliases(name: AdapterName, session: SessionDep) -> list[AliasOut]:
    return service.list_aliases(session, name=name)


@router.get("/{name:path}/aliases/{alias}", response_model=VersionOut)
def resolve_alias(name: AdapterName, alias: AliasName, session: SessionDep) -> VersionOut:
    """The version ``NAME@ALIAS`` points at (the same object as ``show --json``)."""
    return to_out(queries.resolve_alias(session, name=name, alias=alias))


@router.put("/{name:path}/aliases/{alias}", response_model=PromoteOut)
def promote(name: AdapterName, alias: AliasName, body: PromoteIn,
            session: SessionDep) -> PromoteOut:
    """Move (or create) the alias through the gates; 422 ``gate_failed`` changes nothing."""
    if body.force:
        authorize_force(body)
    return service.promote(session, name=name, alias=alias, version=body.version,
                           actor=body.actor, reason=body.reason,
                           expect_current=body.expect_current, force=body.force)


@router.post("/{name:path}/aliases/{alias}/rollback", response_model=RollbackOut)
def rollback(name: AdapterName, alias: AliasName, session: SessionDep,
             body: RollbackIn | None = None) -> RollbackOut:
    body = body or RollbackIn()
    return service.rollback(session, name=name, alias=alias, to=body.to, actor=body.actor,
                            reason=body.reason)


@router.delete("/{name:path}/aliases/{alias}", response_model=AliasDeletedOut)
def delete_alias(name: AdapterName, alias: AliasName, session: SessionDep,
                 body: AliasChangeIn | None = None) -> AliasDeletedOut:
    body = body or AliasChangeIn()
    return service.delete_alias(session, name=name, alias=alias, actor=body.actor,
                                reason=body.reason)


@router.get("/{name:path}/history", response_model=list[HistoryEntryOut])
def history(
    name: AdapterName,
    session: SessionDep,
    alias: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int | None, Query(ge=1, le=service.MAX_HISTORY)] = None,
) -> list[HistoryEntryOut]:
    """Every move of the adapter's aliases (or of one), newest first."""
    return service.history(session, name=name, alias=alias, limit=limit)


@router.post("/{name:path}/versions/{version}/archive", response_model=VersionOut)
def archive(name: AdapterName, version: VersionNumber, session: SessionDep,
            body: AliasChangeIn | None = None) -> VersionOut:
    """Set the version ``archived``; 409 ``version_aliased`` while an alias points at it."""
    body = body or AliasChangeIn()
    service.archive(session, name=name, version=version, actor=body.actor, reason=body.reason)
    return to_out(get_version(session, name=name, version=version))


@router.get("/{name:path}/policies", response_model=list[PolicyOut])
def adapter_policies(name: AdapterName, session: SessionDep) -> list[PolicyOut]:
    """The policies that apply to the adapter's aliases: its own and the defaults."""
    return policies.list_policies(session, name=name)


@router.put("/{name:path}/policies/{alias}", response_model=PolicyOut)
def set_adapter_policy(name: AdapterName, alias: AliasName, body: PolicyIn,
                       session: SessionDep) -> PolicyOut:
    return policies.set_policy(session, name=name, alias=alias, body=body)


@router.delete("/{name:path}/policies/{alias}", status_code=204)
def delete_adapter_policy(name: AdapterName, alias: AliasName, session: SessionDep) -> Response:
    policies.delete_policy(session, name=name, alias=alias)
    return Response(status_code=204)


@policies_router.get("", response_model=list[PolicyOut])
def default_policies(session: SessionDep) -> list[PolicyOut]:
    """The registry-wide default policies, by alias."""
    return policies.list_policies(session, name=None)


@policies_router.put("/{alias}", response_model=PolicyOut)
def set_default_policy(alias: AliasName, body: PolicyIn, session: SessionDep) -> PolicyOut:
    return policies.set_policy(session, name=None, alias=alias, body=body)


@policies_router.delete("/{alias}", status_code=204)
def delete_default_policy(alias: AliasName, session: SessionDep) -> Response:
    policies.delete_policy(session, name=None, alias=alias)
    return Response(status_code=204)
