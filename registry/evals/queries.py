"""Score and suite lookups other domains use (gates, validation, the version object): db/ only."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from registry.db.models import EvalScore, EvalSuite, EvalSuiteFile, SuiteAttachment
from registry.errors import SuiteNotFound


def latest_scores(session: Session, *, version_id: int,
                  base_id: int | None = None) -> list[EvalScore]:
    """The newest score of each (base, suite, suite version, metric) of a version.

    Args:
        version_id: the adapter version.
        base_id: only scores on this base model (None: every base).
    """
    newest = (
        select(func.max(EvalScore.id))
        .where(EvalScore.adapter_version_id == version_id)
        .group_by(EvalScore.base_model_id, EvalScore.suite, EvalScore.suite_version,
                  EvalScore.metric)
    )
    if base_id is not None:
        newest = newest.where(EvalScore.base_model_id == base_id)
    stmt = (
        select(EvalScore)
        .options(selectinload(EvalScore.base_model))
        .where(EvalScore.id.in_(newest))
        .order_by(EvalScore.suite, EvalScore.metric, EvalScore.id)
    )
    return list(session.scalars(stmt))


def latest_score(session: Session, *, version_id: int, suite: str, metric: str,
                 base_id: int | None = None,
                 suite_version: int | None = None) -> EvalScore | None:
    """The newest ``suite.metric`` of a version (optionally on one base / suite version)."""
    stmt = select(EvalScore).where(
        EvalScore.adapter_version_id == version_id,
        EvalScore.suite == suite,
        EvalScore.metric == metric,
    )
    if base_id is not None:
        stmt = stmt.where(EvalScore.base_model_id == base_id)
    if suite_version is not None:
        stmt = stmt.where(EvalScore.suite_version == suite_version)
    return session.scalars(stmt.order_by(EvalScore.id.desc()).limit(1)).one_or_none()


def base_score(session: Session, *, base_id: int, suite: str, metric: str,
               suite_version: int | None = None) -> EvalScore | None:
    """The base model's own newest ``suite.metric`` (a score with no adapter version)."""
    stmt = select(EvalScore).where(
        EvalScore.adapter_version_id.is_(None),
        EvalScore.base_model_id == base_id,
        EvalScore.suite == suite,
        EvalScore.metric == metric,
    )
    if suite_version is not None:
        stmt = stmt.where(EvalScore.suite_version == suite_version)
    return session.scalars(stmt.order_by(EvalScore.id.desc()).limit(1)).one_or_none()


def get_suite(session: Session, *, name: str, version: int | None = None) -> EvalSuite:
    """Suite ``name`` at ``version``, or its latest version.

    Raises:
        SuiteNotFound (with the command that adds it).
    """
    stmt = (select(EvalSuite)
            .options(selectinload(EvalSuite.files).selectinload(EvalSuiteFile.blob))
            .where(EvalSuite.name == name))
    if version is not None:
        stmt = stmt.where(EvalSuite.version == version)
    found = session.scalars(stmt.order_by(EvalSuite.version.desc()).limit(1)).one_or_none()
    if found is None:
        which = f"{name} version {version}" if version is not None else repr(name)
        raise SuiteNotFound(f"no eval suite {which}; add it with: adapter-registry suite add "
                            f"{name} FILE --kind KIND")
    return found


def latest_suites(session: Session) -> list[EvalSuite]:
    """The latest version of every suite, by name."""
    newest = select(func.max(EvalSuite.id)).group_by(EvalSuite.name)
    stmt = (select(EvalSuite)
            .options(selectinload(EvalSuite.files).selectinload(EvalSuiteFile.blob))
            .where(EvalSuite.id.in_(newest)).order_by(EvalSuite.name))
    return list(session.scalars(stmt))


def attached_suite_names(session: Session, *, adapter_id: int) -> list[str]:
    """The suites attached to an adapter (they run on every validation of its versions)."""
    return list(session.scalars(
        select(SuiteAttachment.suite_name).where(SuiteAttachment.adapter_id == adapter_id)
        .order_by(SuiteAttachment.suite_name)
    ))


def base_scores(session: Session, *, base_id: int) -> list[EvalScore]:
    """The base model's own newest score of each (suite, suite version, metric)."""
    newest = (
        select(func.max(EvalScore.id))
        .where(EvalScore.adapter_version_id.is_(None), EvalScore.base_model_id == base_id)
        .group_by(EvalScore.suite, EvalScore.suite_version, EvalScore.metric)
    )
    stmt = (select(EvalScore).options(selectinload(EvalScore.base_model))
            .where(EvalScore.id.in_(newest)).order_by(EvalScore.suite, EvalScore.metric))
    return list(session.scalars(stmt))
