"""`adapter-registry eval record` and `evals`: scores computed elsewhere, and a version's scores."""

from __future__ import annotations

import click

from cli.output import CliState, fail, pass_state
from registry.adapters.schemas import ScoreOut
from registry.clientside.ci_env import detect_provenance
from registry.evals.compare import ComparisonOut
from registry.evals.metrics import check_metric
from registry.evals.schemas import RecordScoresIn


@click.group("eval")
def eval_group() -> None:
    """Eval scores computed outside the registry (a CI job's own eval)."""


def _parse_scores(pairs: tuple[str, ...]) -> dict[str, float]:
    scores: dict[str, float] = {}
    for pair in pairs:
        metric, sep, value = pair.partition("=")
        if not sep or not metric or not value:
            fail(f"invalid score {pair!r}: expected metric=value")
        scores[metric] = check_metric(metric, value)  # the server checks again
    if not scores:
        fail("give at least one metric=value")
    return scores


def _score_line(s: ScoreOut) -> str:
    base = f"{s.base}@{s.base_revision}" if s.base else "-"
    return f"{s.suite}.{s.metric}\t{s.value:.6g}\tbase={base}\tsource={s.source}"


@eval_group.command("record")
@click.argument("ref")
@click.argument("scores", nargs=-1, metavar="METRIC=VALUE...")
@click.option("--suite", required=True, help="Suite name (need not have been added).")
@click.option("--base", default=None, help="Base model (default: the version's linked base).")
@click.option("--n", "count", type=click.IntRange(min=0), default=None,
              help="How many items the scores were computed on.")
@pass_state
def record(state: CliState, ref: str, scores: tuple[str, ...], suite: str, base: str | None,
           count: int | None) -> None:
    """Record SCORES (metric=value) of suite --suite for REF (source: ci)."""
    from registry.clientside.transfer import resolve

    parsed = _parse_scores(scores)
    backend = state.backend()
    version = resolve(backend, ref)
    body = RecordScoresIn(suite=suite, scores=dict(parsed), base=base, n=count,
                          created_by=detect_provenance().created_by)
    recorded = backend.record_scores(version.name, version.version, body)

    def human() -> None:
        for s in recorded:
            click.echo(f"recorded {version.ref} {_score_line(s)}")

    state.emit({"name": version.name, "version": version.version, "suite": suite,
                "scores": [s.model_dump(mode="json") for s in recorded]}, human)


def _fmt(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.6g}" if signed else f"{value:.6g}"


def _describe(cmp: ComparisonOut, status: str) -> None:
    other = cmp.other or "-"
    click.echo(f"{cmp.ref}  [{status}]  base: {cmp.base or '-'}  compared with: {other}")
    if not cmp.rows:
        click.echo("  no scores")
        return
    # Tab-separated (scripts cut it): value, the other version's and its delta, the base's own
    # and its delta, which way is better and how the version fared against the other.
    for r in cmp.rows:
        verdict = f" ({r.vs_other})" if r.vs_other in ("improved", "regressed") else ""
        click.echo(f"  {r.suite}.{r.metric}\t{_fmt(r.value)}\t{other}={_fmt(r.other)}\t"
                   f"delta={_fmt(r.delta_other, signed=True)}\tbase={_fmt(r.base)}\t"
                   f"delta_base={_fmt(r.delta_base, signed=True)}\t{r.better} is better"
                   f"{verdict}")


@click.command("evals")
@click.argument("ref")
@click.option("--compare", "other", default=None, metavar="REF2",
              help="Compare with this version (default: REF's parent, if it has one).")
@pass_state
def evals(state: CliState, ref: str, other: str | None) -> None:
    """The newest score of each suite.metric of REF on its base, side by side with another
    version's (--compare, or the parent's) and the base model's own, with deltas."""
    from registry.clientside.transfer import resolve
    from registry.evals.compare import compare

    backend = state.backend()
    version = resolve(backend, ref)
    them = None
    if other is not None:
        them = resolve(backend, other)
    elif version.parent is not None:
        them = backend.get_version(version.parent.name, version.parent.version)
    base_scores = (backend.base_scores(version.base_model, version.base_model_revision)
                   if version.base_model else [])
    cmp = compare(name=version.name, version=version.version, scores=version.scores,
                  base=version.base_model, other_ref=them.ref if them else None,
                  other_scores=them.scores if them else (), base_scores=base_scores)
    state.emit(cmp.model_dump(mode="json"), lambda: _describe(cmp, version.status))
