"""Adapter and version lookups by name: the queries other domains use (depends only on db/)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, joinedload, selectinload

from registry.db.models import (
    Adapter,
    AdapterVersion,
    BaseModelRow,
    EvalScore,
    Export,
    Job,
    VersionFile,
)
from registry.errors import AdapterNotFound, VersionNotFound
from registry.refs import validate_name


def version_query() -> Select[AdapterVersion]:
    """Versions with everything the version object shows, in three round trips: the version
    with its small parts joined (adapter, the linked base's and the parent's names, verdicts,
    exports, aliases: a few rows each), then its files and its scores by IN queries (those may
    be many). Results need ``.unique()`` (joined collections repeat the version row)."""
    def named(base: Any) -> Any:  # only what the version object shows of a base model
        return base.load_only(BaseModelRow.name, BaseModelRow.revision)

    return select(AdapterVersion).options(
        joinedload(AdapterVersion.adapter),
        named(joinedload(AdapterVersion.base_model)),
        joinedload(AdapterVersion.parent)
        .load_only(AdapterVersion.version, AdapterVersion.adapter_id)
        .joinedload(AdapterVersion.adapter),
        joinedload(AdapterVersion.verdicts),
        named(joinedload(AdapterVersion.exports).joinedload(Export.base_model)),
        joinedload(AdapterVersion.aliases),
        selectinload(AdapterVersion.files).joinedload(VersionFile.blob),
        named(selectinload(AdapterVersion.scores).joinedload(EvalScore.base_model)),
        named(selectinload(AdapterVersion.validations).joinedload(Job.base_model)),
    )


def get_adapter(session: Session, name: str) -> Adapter:
    """The adapter called ``name``.

    Raises:
        InvalidName, AdapterNotFound.
    """
    validate_name(name)
    adapter = session.scalars(select(Adapter).where(Adapter.name == name)).one_or_none()
    if adapter is None:
        raise AdapterNotFound(f"no adapter {name!r}")
    return adapter


def get_version(session: Session, *, name: str, version: int | None) -> AdapterVersion:
    """The version ``name:version``, or the latest when ``version`` is None.

    Raises:
        InvalidName, AdapterNotFound, VersionNotFound.
    """
    adapter = get_adapter(session, name)
    stmt = version_query().where(AdapterVersion.adapter_id == adapter.id)
    if version is None:
        stmt = stmt.order_by(AdapterVersion.version.desc()).limit(1)
    else:
        stmt = stmt.where(AdapterVersion.version == version)
    found = session.scalars(stmt).unique().one_or_none()
    if found is None:
        if version is None:
            raise VersionNotFound(f"adapter {name!r} has no versions")
        raise VersionNotFound(f"no version {name}:{version}")
    return found


def list_versions(session: Session, *, name: str) -> Sequence[AdapterVersion]:
    """Every version of ``name``, oldest first.

    Raises:
        InvalidName, AdapterNotFound.
    """
    adapter = get_adapter(session, name)
    stmt = (
        version_query()
        .where(AdapterVersion.adapter_id == adapter.id)
        .order_by(AdapterVersion.version)
    )
    return session.scalars(stmt).unique().all()
