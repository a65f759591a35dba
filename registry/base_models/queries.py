"""Base model lookups by name and revision: the queries other domains use (depends only on db/)."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, Text, cast, func, literal_column, select
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.orm import Session, defer, selectinload

from registry.db.models import BaseModelFile, BaseModelRow, SourceKind
from registry.errors import BaseModelNotFound
from registry.refs import validate_name

# Rows left by migration 0001 as bare name references are not registered bases.
_REGISTERED = BaseModelRow.source_kind != SourceKind.none


def get_base(session: Session, *, name: str, revision: str | None = None) -> BaseModelRow:
    """The base model ``name`` at ``revision``, or its latest registered revision.

    Raises:
        InvalidName, BaseModelNotFound (with the command that registers it).
    """
    validate_name(name, what="base model name")
    stmt = (
        select(BaseModelRow)
        .options(selectinload(BaseModelRow.files).selectinload(BaseModelFile.blob))
        .where(BaseModelRow.name == name, _REGISTERED)
    )
    if revision is not None:
        stmt = stmt.where(BaseModelRow.revision == revision)
    found = session.scalars(
        stmt.order_by(BaseModelRow.created_at.desc(), BaseModelRow.id.desc()).limit(1)
    ).one_or_none()
    if found is None:
        which = f"{name}@{revision}" if revision else name
        raise BaseModelNotFound(
            f"no base model {which!r}; register it with: adapter-registry base register "
            f"{name} PATH_OR_SOURCE"
        )
    return found


def find_base(session: Session, name: str | None) -> BaseModelRow | None:
    """The latest registered base called ``name``, or None (no error)."""
    if not name:
        return None
    stmt = (
        select(BaseModelRow)
        .where(BaseModelRow.name == name, _REGISTERED)
        .order_by(BaseModelRow.created_at.desc(), BaseModelRow.id.desc())
        .limit(1)
    )
    return session.scalars(stmt).one_or_none()


def list_bases(session: Session, *, with_files: bool = True) -> Sequence[BaseModelRow]:
    """Every registered base model revision, by name then age.

    Args:
        with_files: load each base's files too. Without (compatibility checks), neither files
            nor config and tensor manifest are loaded up front: compat keeps each base's
            parsed manifest by content, so they are read (one query each) only on a miss.
    """
    return session.scalars(_bases_statement(with_files)).all()


@functools.cache
def _bases_statement(with_files: bool) -> Select[BaseModelRow]:
    """Built once (every push runs it; constructing it cost more than running it)."""
    stmt = select(BaseModelRow).where(_REGISTERED).order_by(BaseModelRow.name,
                                                            BaseModelRow.created_at)
    if with_files:
        return stmt.options(selectinload(BaseModelRow.files).selectinload(BaseModelFile.blob))
    return stmt.options(defer(BaseModelRow.config), defer(BaseModelRow.tensor_manifest))


# What a push needs of each base: the link (name, age), the verdict (name, the manifest's key).
_PUSH_COLUMNS = ("id", "name", "revision", "created_at", "content_id", "fingerprint")


def bases_for_push(session: Session) -> list[BaseModelRow]:
    """Every registered base as ``list_bases(with_files=False)`` orders them, but only the
    columns a push uses, as transient objects (not in the session; loading ORM objects cost
    a push more than the query). Without config and tensor manifest: only for bases whose
    parsed manifest compat already keeps (``compat.service.manifests_kept``)."""
    return [BaseModelRow(**row._mapping)
            for row in session.connection().execute(_push_bases_statement())]


@functools.cache
def bases_json_column() -> ColumnElement[str]:
    """PostgreSQL: ``bases_for_push``'s rows as the text of one JSON array, a scalar subquery
    a push reads with its blob rows (one round trip for both) and compares again in its write
    (the same text: no base registered or changed since); ``bases_from_json`` reads it."""
    t = BaseModelRow.__table__
    return (select(cast(func.coalesce(func.json_agg(aggregate_order_by(
                func.json_build_array(*(t.c[c] for c in _PUSH_COLUMNS)),
                t.c.name, t.c.created_at, t.c.id)), literal_column("'[]'::json")), Text))
            .where(_REGISTERED).scalar_subquery())


def bases_from_json(text: str) -> list[BaseModelRow]:
    bases = []
    for row in json.loads(text):
        cols = dict(zip(_PUSH_COLUMNS, row, strict=True))
        cols["created_at"] = datetime.fromisoformat(cols["created_at"]).astimezone(UTC)
        bases.append(BaseModelRow(**cols))
    return bases


@functools.cache
def _push_bases_statement() -> Select[Any]:
    return (select(*(BaseModelRow.__table__.c[c] for c in _PUSH_COLUMNS)).where(_REGISTERED)
            .order_by(BaseModelRow.name, BaseModelRow.created_at, BaseModelRow.id))
