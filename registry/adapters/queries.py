"""Adapter and version lookups by name: the queries other domains use (depends only on db/)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, selectinload

from registry.db.models import Adapter, AdapterVersion, EvalScore, Export, VersionFile
from registry.errors import AdapterNotFound, VersionNotFound
from registry.refs import validate_name


def version_query() -> Select[AdapterVersion]:
    """Versions with everything the version object shows, loaded in a few IN queries."""
    return select(AdapterVersion).options(
        selectinload(AdapterVersion.files).selectinload(VersionFile.blob),
        selectinload(AdapterVersion.adapter),
        selectinload(AdapterVersion.base_model),
        selectinload(AdapterVersion.parent).selectinload(AdapterVersion.adapter),
        selectinload(AdapterVersion.verdicts),
        selectinload(AdapterVersion.exports).selectinload(Export.base_model),
        selectinload(AdapterVersion.scores).selectinload(EvalScore.base_model),
        selectinload(AdapterVersion.aliases),
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
    found = session.scalars(stmt).one_or_none()
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
    return session.scalars(stmt).all()
