"""`adapter-registry eval record` and `evals`: scores computed elsewhere, and a version's scores."""

from __future__ import annotations

import click

from cli.output import CliState, fail, pass_state
from registry.adapters.schemas import ScoreOut, VersionOut
from registry.clientside.ci_env import detect_provenance
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


def _describe(v: VersionOut) -> None:
    click.echo(f"{v.ref}  [{v.status}]")
    if not v.scores:
        click.echo("  no scores")
    for s in v.scores:
        click.echo(f"  {_score_line(s)}")


@click.command("evals")
@click.argument("ref")
@pass_state
def evals(state: CliState, ref: str) -> None:
    """The newest score of each suite.metric of REF, on each base."""
    from registry.clientside.transfer import resolve

    version = resolve(state.backend(), ref)
    state.emit({"name": version.name, "version": version.version,
                "scores": [s.model_dump(mode="json") for s in version.scores]},
               lambda: _describe(version))
