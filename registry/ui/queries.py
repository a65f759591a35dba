"""Read-only lookups the pages need that no API route has: one page of adapters or versions with
their filters, a metric across versions, stored verdicts. Paginated in SQL: a page costs a
fixed number of statements whatever the number of adapters and versions."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session, aliased, load_only

from registry.db.models import (
    Adapter,
    AdapterVersion,
    Alias,
    AliasEvent,
    BaseModelRow,
    Compatibility,
    EvalScore,
    SourceKind,
    VersionStatus,
)
from registry.errors import InvalidInput

PAGE_SIZE = 50
T = TypeVar("T")
MAX_PAGE = 1_000_000
CHART_POINTS = 200  # newest versions drawn in the metric chart
MAX_FILTER = 200


@dataclass
class AdapterRow:
    name: str
    description: str | None
    latest_version: int | None
    status: str | None
    base_model: str | None
    version_count: int
    last_change: datetime
    aliases: dict[str, int] = field(default_factory=dict)


@dataclass
class VersionRow:
    id: int
    version: int
    status: str
    base_model: str | None
    parent: tuple[str, int] | None
    created_at: datetime
    created_by: str | None


@dataclass
class Page(Generic[T]):
    rows: list[T]
    page: int
    pages: int
    total: int


def check_page(page: int) -> int:
    if not 1 <= page <= MAX_PAGE:
        raise InvalidInput(f"page must be between 1 and {MAX_PAGE}")
    return page


def _pages(total: int) -> int:
    return max(1, -(-total // PAGE_SIZE))


def _latest() -> Select[Any, Any, Any]:
    return (select(AdapterVersion.adapter_id.label("adapter_id"),
                   func.max(AdapterVersion.version).label("latest"),
                   func.count(AdapterVersion.id).label("count"))
            .group_by(AdapterVersion.adapter_id))


def adapters_page(session: Session, *, text: str | None = None, base: str | None = None,
                  alias: str | None = None, status: str | None = None,
                  page: int = 1) -> Page[AdapterRow]:
    """One page of adapters by name, each with its latest version's status and base, its
    aliases and its last change (newest of: latest version created, alias moved).

    Raises:
        InvalidInput: an unknown status, a page out of range, a filter over 200 characters.
    """
    check_page(page)
    for value in (text, base, alias):
        if value is not None and len(value) > MAX_FILTER:
            raise InvalidInput(f"filters are at most {MAX_FILTER} characters")
    if status is not None and status not in {s.value for s in VersionStatus}:
        raise InvalidInput(f"unknown status {status!r}; use one of "
                           f"{', '.join(s.value for s in VersionStatus)}")
    stats = _latest().subquery()
    latest = aliased(AdapterVersion)
    moved = (select(AliasEvent.adapter_id, func.max(AliasEvent.at).label("at"))
             .group_by(AliasEvent.adapter_id).subquery())
    stmt = (
        select(Adapter, stats.c.latest, stats.c.count, latest.status, latest.created_at,
               BaseModelRow.name, moved.c.at)
        .outerjoin(stats, stats.c.adapter_id == Adapter.id)
        .outerjoin(latest, and_(latest.adapter_id == Adapter.id,
                                latest.version == stats.c.latest))
        .outerjoin(BaseModelRow, BaseModelRow.id == latest.base_model_id)
        .outerjoin(moved, moved.c.adapter_id == Adapter.id)
    )
    if text:
        needle = text.lower()
        stmt = stmt.where(or_(func.lower(Adapter.name).contains(needle, autoescape=True),
                              func.lower(Adapter.description).contains(needle,
                                                                       autoescape=True)))
    if base:
        stmt = stmt.where(BaseModelRow.name == base)
    if alias:
        stmt = stmt.where(select(Alias.id).where(Alias.adapter_id == Adapter.id,
                                                 Alias.name == alias).exists())
    if status:
        stmt = stmt.where(latest.status == VersionStatus(status))
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    rows = session.execute(
        stmt.order_by(Adapter.name).limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)).all()
    out = [
        AdapterRow(name=a.name, description=a.description, latest_version=number,
                   status=st.value if st is not None else None, base_model=base_name,
                   version_count=count or 0,
                   last_change=max(t for t in (a.created_at, created, at) if t is not None))
        for a, number, count, st, created, base_name, at in rows
    ]
    by_id = {a.id: row for (a, *_), row in zip(rows, out, strict=True)}
    if by_id:
        for adapter_id, name, number in session.execute(
            select(Alias.adapter_id, Alias.name, AdapterVersion.version)
            .join(AdapterVersion, AdapterVersion.id == Alias.version_id)
            .where(Alias.adapter_id.in_(by_id)).order_by(Alias.name)
        ):
            by_id[adapter_id].aliases[name] = number
    return Page(rows=out, page=page, pages=_pages(total), total=total)


def filter_choices(session: Session) -> tuple[list[str], list[str]]:
    """The base model names and alias names the adapters page can filter by."""
    bases = list(session.scalars(
        select(BaseModelRow.name).where(BaseModelRow.source_kind != SourceKind.none)
        .distinct().order_by(BaseModelRow.name)))
    aliases = list(session.scalars(select(Alias.name).distinct().order_by(Alias.name)))
    return bases, aliases


def versions_page(session: Session, *, adapter_id: int, page: int = 1) -> Page[VersionRow]:
    """One page of an adapter's versions, newest first, with parent and base names loaded.

    Raises:
        InvalidInput: a page out of range.
    """
    check_page(page)
    total = session.scalar(select(func.count(AdapterVersion.id))
                           .where(AdapterVersion.adapter_id == adapter_id)) or 0
    parent, parent_adapter = aliased(AdapterVersion), aliased(Adapter)
    rows = session.execute(
        select(AdapterVersion, BaseModelRow.name, parent.version, parent_adapter.name)
        .options(load_only(AdapterVersion.id, AdapterVersion.version, AdapterVersion.status,
                           AdapterVersion.created_at, AdapterVersion.created_by))
        .outerjoin(BaseModelRow, BaseModelRow.id == AdapterVersion.base_model_id)
        .outerjoin(parent, parent.id == AdapterVersion.parent_id)
        .outerjoin(parent_adapter, parent_adapter.id == parent.adapter_id)
        .where(AdapterVersion.adapter_id == adapter_id)
        .order_by(AdapterVersion.version.desc())
        .limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)
    ).all()
    versions = [
        VersionRow(id=v.id, version=v.version, status=v.status.value, base_model=base_name,
                   parent=(parent_name, parent_version) if parent_version else None,
                   created_at=v.created_at, created_by=v.created_by)
        for v, base_name, parent_version, parent_name in rows
    ]
    return Page(rows=versions, page=page, pages=_pages(total), total=total)


def adapter_metrics(session: Session, *, adapter_id: int) -> list[str]:
    """Every ``SUITE.METRIC`` scored on any version of the adapter."""
    rows = session.execute(
        select(EvalScore.suite, EvalScore.metric).distinct()
        .join(AdapterVersion, AdapterVersion.id == EvalScore.adapter_version_id)
        .where(AdapterVersion.adapter_id == adapter_id)
        .order_by(EvalScore.suite, EvalScore.metric)
    ).all()
    return [f"{s}.{m}" for s, m in rows]


def metric_series(session: Session, *, adapter_id: int, suite: str,
                  metric: str) -> list[tuple[int, float]]:
    """(version, value) of the newest ``suite.metric`` score of each of the newest
    ``CHART_POINTS`` scored versions, oldest first. A version's score on its linked base is
    preferred; a version linked to none contributes its newest on any base."""
    newest = (
        select(func.max(EvalScore.id))
        .join(AdapterVersion, AdapterVersion.id == EvalScore.adapter_version_id)
        .where(AdapterVersion.adapter_id == adapter_id, EvalScore.suite == suite,
               EvalScore.metric == metric,
               or_(AdapterVersion.base_model_id.is_(None),
                   EvalScore.base_model_id == AdapterVersion.base_model_id))
        .group_by(EvalScore.adapter_version_id)
    )
    rows = session.execute(
        select(AdapterVersion.version, EvalScore.value)
        .join(AdapterVersion, AdapterVersion.id == EvalScore.adapter_version_id)
        .where(EvalScore.id.in_(newest))
        .order_by(AdapterVersion.version.desc()).limit(CHART_POINTS)
    ).all()
    return [(v, value) for v, value in reversed(rows)]


def verdicts(session: Session, *, version_ids: list[int]) -> dict[tuple[int, int], bool]:
    """Stored static verdicts (version id, base id) -> compatible, for the given versions."""
    if not version_ids:
        return {}
    return {(v, b): ok for v, b, ok in session.execute(
        select(Compatibility.adapter_version_id, Compatibility.base_model_id,
               Compatibility.compatible)
        .where(Compatibility.adapter_version_id.in_(version_ids)))}


def registered_bases(session: Session) -> list[BaseModelRow]:
    """Every registered base revision (without files), by name then age."""
    return list(session.scalars(
        select(BaseModelRow)
        .options(load_only(BaseModelRow.id, BaseModelRow.name, BaseModelRow.revision))
        .where(BaseModelRow.source_kind != SourceKind.none)
        .order_by(BaseModelRow.name, BaseModelRow.created_at, BaseModelRow.id)))
