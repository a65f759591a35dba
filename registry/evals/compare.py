"""Side-by-side scores (pure): a version's against another version's and the base's, with deltas
and which way is better (``registry.evals.metrics.lower_is_better``)."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, Field

from registry.adapters.schemas import ScoreOut
from registry.evals.metrics import lower_is_better


class CompareRowOut(BaseModel):
    suite: str
    metric: str
    value: float | None
    other: float | None = None
    base: float | None = None
    delta_other: float | None = Field(default=None, description="value - other")
    delta_base: float | None = Field(default=None, description="value - base")
    better: str = Field(description="'lower' or 'higher': which way this metric improves")
    vs_other: str | None = Field(default=None,
                                 description="improved, regressed or same, against other")


class ComparisonOut(BaseModel):
    """``evals REF --compare REF2 --json``."""

    name: str
    version: int
    ref: str
    base: str | None
    other: str | None = Field(description="the version compared with (REF2, or the parent)")
    rows: list[CompareRowOut]
    scores: list[ScoreOut] = Field(description="the version's newest scores, as `show` has them")


def _by_metric(scores: Iterable[ScoreOut], base: str | None) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for s in sorted(scores, key=lambda s: s.created_at):
        if base is None or s.base == base:
            out[(s.suite, s.metric)] = s.value
    return out


def compare(*, name: str, version: int, scores: list[ScoreOut], base: str | None,
            other_ref: str | None = None, other_scores: Iterable[ScoreOut] = (),
            base_scores: Iterable[ScoreOut] = ()) -> ComparisonOut:
    """Rows for every ``suite.metric`` any side has, on the version's base."""
    mine = _by_metric(scores, base)
    theirs = _by_metric(other_scores, base)
    base_own = _by_metric(base_scores, None)
    rows = []
    for suite, metric in sorted(set(mine) | set(theirs)):
        value = mine.get((suite, metric))
        other = theirs.get((suite, metric))
        base_value = base_own.get((suite, metric))
        lower = lower_is_better(metric)
        row = CompareRowOut(suite=suite, metric=metric, value=value, other=other,
                            base=base_value, better="lower" if lower else "higher")
        if value is not None and other is not None:
            row.delta_other = value - other
            if value == other:
                row.vs_other = "same"
            else:
                row.vs_other = "improved" if (value < other) == lower else "regressed"
        if value is not None and base_value is not None:
            row.delta_base = value - base_value
        rows.append(row)
    return ComparisonOut(name=name, version=version, ref=f"{name}:{version}", base=base,
                         other=other_ref, rows=rows, scores=scores)
