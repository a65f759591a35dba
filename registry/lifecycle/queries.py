"""Alias lookups: NAME@ALIAS to a version in one indexed query, and any REF to a version."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from sqlalchemy import Connection, Select, bindparam, func, select
from sqlalchemy.orm import Session, aliased, joinedload

from registry.adapters.queries import get_adapter, get_version, version_query
from registry.db.models import (
    Adapter,
    AdapterVersion,
    Alias,
    Compatibility,
    EvalScore,
    Export,
    Job,
    JobKind,
)
from registry.errors import AliasNotFound
from registry.refs import Ref, validate_alias, validate_name


def resolve_alias(session: Session, *, name: str, alias: str) -> AdapterVersion:
    """The version ``name@alias`` points at.

    One statement finds it (``adapters.name`` and ``aliases (adapter_id, name)`` are unique
    indexes); the version object's parts load as for any version.

    Raises:
        InvalidName, InvalidAlias, AdapterNotFound, AliasNotFound.
    """
    validate_name(name)
    validate_alias(alias)
    found = session.scalars(
        version_query()
        .join(Alias, Alias.version_id == AdapterVersion.id)
        .join(Adapter, Adapter.id == Alias.adapter_id)
        .where(Adapter.name == name, Alias.name == alias)
    ).unique().one_or_none()
    if found is None:
        get_adapter(session, name)  # AdapterNotFound when the adapter itself is missing
        raise AliasNotFound(
            f"no alias {alias!r} on adapter {name!r}; create it with: adapter-registry "
            f"promote {name}:VERSION --alias {alias}"
        )
    return found


def resolve_ref(session: Session, ref: Ref) -> AdapterVersion:
    """The version a parsed reference names: ``NAME@ALIAS``, ``NAME:VERSION`` or ``NAME``.

    Raises:
        AdapterNotFound, VersionNotFound, AliasNotFound, InvalidAlias.
    """
    if ref.alias is not None:
        return resolve_alias(session, name=ref.name, alias=ref.alias)
    return get_version(session, name=ref.name, version=ref.version)


def get_alias(session: Session, *, adapter_id: int, alias: str) -> Alias | None:
    """The alias row of an adapter with the version it points at (one query), or None."""
    return session.scalars(
        select(Alias).options(joinedload(Alias.version))
        .where(Alias.adapter_id == adapter_id, Alias.name == alias)
    ).one_or_none()


def list_aliases(session: Session, *, name: str) -> Sequence[Alias]:
    """Every alias of adapter ``name``, by alias name, with the version each points at.

    Raises:
        InvalidName, AdapterNotFound.
    """
    adapter = get_adapter(session, name)
    return session.scalars(
        select(Alias)
        .options(joinedload(Alias.version).load_only(AdapterVersion.version))
        .where(Alias.adapter_id == adapter.id)
        .order_by(Alias.name)
    ).all()


def alias_stamp(session: Session | Connection, *, name: str,
                alias: str) -> tuple[object, ...] | None:
    """What ``name@alias`` points at and everything about that version object that can
    change, in one statement; None when the alias (or the adapter) does not exist.

    A version's files, parent, link and names never change; its status, scores, verdicts,
    exports and aliases may. Equal stamps mean equal version objects, so a process may serve a
    version object it built before for the same stamp (``cache.VersionObjects``): every request
    still asks the database, so no replica serves a stale one. A Core statement: it runs on a
    bare connection too (a cache hit needs no ORM session).
    """
    row = session.execute(_stamp_statement(), {"name": name, "alias": alias}).one_or_none()
    return tuple(row) if row is not None else None


@cache
def _stamp_statement() -> Select[Any]:
    """Built once: constructing this statement (aliases, a dozen correlated subqueries)
    costs several milliseconds of Python, more than running it; it takes the names as
    bound parameters."""
    vid = AdapterVersion.id
    held = aliased(Alias)  # every alias on the version, not only the one resolved

    def scalar(column: Any, where: Any) -> Any:
        return select(column).where(where).scalar_subquery()

    # The version object shows its newest validation job: its id, status, attempts and end.
    # (Its own alias of jobs: the subqueries below select from jobs too, and would otherwise
    # correlate this one to themselves.)
    newest = aliased(Job)
    last_job = (select(newest.id)
                .where(newest.adapter_version_id == vid, newest.kind == JobKind.validate)
                .order_by(newest.id.desc()).limit(1).correlate_except(newest).scalar_subquery())

    stmt = (
        select(
            vid,
            AdapterVersion.status,
            scalar(func.max(EvalScore.id), EvalScore.adapter_version_id == vid),
            scalar(func.max(Export.id), Export.adapter_version_id == vid),
            scalar(func.count(Compatibility.id), Compatibility.adapter_version_id == vid),
            scalar(func.max(Compatibility.checked_at), Compatibility.adapter_version_id == vid),
            scalar(func.count(held.id), held.version_id == vid),
            scalar(func.max(held.updated_at), held.version_id == vid),
            last_job,
            scalar(Job.status, Job.id == last_job),
            scalar(Job.attempts, Job.id == last_job),
            scalar(Job.finished_at, Job.id == last_job),
        )
        .select_from(Alias)
        .join(Adapter, Adapter.id == Alias.adapter_id)
        .join(AdapterVersion, vid == Alias.version_id)
        .where(Adapter.name == bindparam("name"), Alias.name == bindparam("alias"))
    )
    return stmt
