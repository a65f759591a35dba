"""Record eval scores for a version (from a CI job, a person, or a validation worker)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from registry.adapters.queries import get_version
from registry.adapters.schemas import ScoreOut
from registry.adapters.service import score_out
from registry.base_models.queries import get_base
from registry.db.base import utcnow
from registry.db.models import AdapterVersion, BaseModelRow, EvalScore, ScoreSource
from registry.errors import InvalidInput
from registry.evals.metrics import check_metric, check_suite_name
from registry.evals.schemas import RecordScoresIn

MAX_SCORES = 200


def record_scores(session: Session, *, version: AdapterVersion, base: BaseModelRow | None,
                  suite: str, scores: dict[str, object], source: ScoreSource,
                  actor: str | None = None, suite_version: int | None = None,
                  n: int | None = None, job_id: int | None = None) -> list[EvalScore]:
    """Add one score row per metric, all checked before any is written.

    Raises:
        InvalidInput: a bad suite or metric name, a non-numeric or non-finite value, no scores.
    """
    check_suite_name(suite)
    if not scores:
        raise InvalidInput("give at least one metric=value")
    if len(scores) > MAX_SCORES:
        raise InvalidInput(f"at most {MAX_SCORES} metrics per record")
    values = {metric: check_metric(metric, value) for metric, value in scores.items()}
    now = utcnow()
    rows = [
        EvalScore(version=version, base_model=base, suite=suite, suite_version=suite_version,
                  metric=metric, value=value, n=n, source=source, job_id=job_id,
                  created_at=now, created_by=actor)
        for metric, value in sorted(values.items())
    ]
    session.add_all(rows)
    session.flush()
    return rows


def record_from_request(session: Session, *, name: str, version: int,
                        body: RecordScoresIn) -> list[ScoreOut]:
    """``eval record``: scores a CI job computed, on the given or the linked base.

    Raises:
        AdapterNotFound, VersionNotFound, BaseModelNotFound, InvalidInput.
    """
    v = get_version(session, name=name, version=version)
    base = get_base(session, name=body.base) if body.base is not None else v.base_model
    rows = record_scores(session, version=v, base=base, suite=body.suite,
                         scores=dict(body.scores), source=ScoreSource.ci,
                         actor=body.created_by, n=body.n)
    return [score_out(r) for r in rows]
