"""Side-by-side scores (registry.evals.compare): deltas and which way is better."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from registry.adapters.schemas import ScoreOut
from registry.evals.compare import compare

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def score(suite: str, metric: str, value: float, *, base: str | None = "b",
          age: int = 0) -> ScoreOut:
    return ScoreOut(suite=suite, metric=metric, value=value, base=base, source="worker",
                    created_at=T0 + timedelta(seconds=age))


def test_rows_deltas_and_direction():
    mine = [score("ppl", "perplexity", 9.0), score("qa", "accuracy", 0.7),
            score("qa", "accuracy", 0.8, base="other-base")]
    theirs = [score("ppl", "perplexity", 10.0), score("qa", "accuracy", 0.75),
              score("gen", "pass_rate", 0.5)]
    base = [score("ppl", "perplexity", 12.0, base="b")]
    out = compare(name="bot", version=2, scores=mine, base="b", other_ref="bot:1",
                  other_scores=theirs, base_scores=base)
    rows = {(r.suite, r.metric): r for r in out.rows}
    ppl = rows[("ppl", "perplexity")]
    assert (ppl.value, ppl.other, ppl.base, ppl.better, ppl.vs_other) == (
        9.0, 10.0, 12.0, "lower", "improved")
    assert (ppl.delta_other, ppl.delta_base) == (-1.0, -3.0)
    acc = rows[("qa", "accuracy")]  # scores on another base are not mixed in
    assert (acc.value, acc.vs_other, acc.better) == (0.7, "regressed", "higher")
    assert acc.delta_other is not None and round(acc.delta_other, 6) == -0.05
    gen = rows[("gen", "pass_rate")]
    assert (gen.value, gen.other, gen.delta_other, gen.vs_other) == (None, 0.5, None, None)
    assert out.ref == "bot:2" and out.other == "bot:1"


def test_newest_score_wins_and_no_other():
    out = compare(name="bot", version=1, base="b",
                  scores=[score("s", "acc", 0.1, age=5), score("s", "acc", 0.2, age=1)])
    [row] = out.rows
    assert (row.value, row.other, row.vs_other) == (0.1, None, None)
