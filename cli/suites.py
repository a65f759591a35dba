"""`adapter-registry suite add|attach|list|show`: eval suites validations run."""

from __future__ import annotations

from pathlib import Path

import click

from cli.output import CliState, fail, pass_state
from registry.evals.schemas import SuiteOut


@click.group("suite")
def suite() -> None:
    """Eval suites: perplexity, generate, classify, lm-eval."""


def _parse_options(pairs: tuple[str, ...]) -> dict[str, str]:
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            fail(f"invalid --option {pair!r}: expected key=value")
        options[key] = value
    return options


def _line(s: SuiteOut) -> str:
    opts = " ".join(f"{k}={v}" for k, v in sorted(s.options.items()))
    return f"{s.name}\tv{s.version}\t{s.kind}\t{s.item_count} items\t{opts}".rstrip()


@suite.command("add")
@click.argument("name")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--kind", required=True,
              help="perplexity ({text}), generate ({prompt, expected, match}), classify "
                   "({text, label}) or lm-eval (a task YAML with local data files).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Suite option, e.g. max_new_tokens=32 (generate), max_length=512, limit=100 "
                   "(lm-eval); repeatable.")
@pass_state
def add(state: CliState, name: str, file: Path, kind: str, options: tuple[str, ...]) -> None:
    """Store suite NAME from FILE (a JSON-lines file, or an lm-eval task YAML); other content
    under an existing name is its next version."""
    from registry.clientside.suites import add_suite

    added, created = add_suite(state.backend(), name=name, file=file, kind=kind,
                               options=_parse_options(options), settings=state.settings())
    data = {**added.model_dump(mode="json"), "created": created}
    what = "added" if created else "unchanged:"
    state.emit(data, lambda: click.echo(f"{what} suite {_line(added)}"))


@suite.command("attach")
@click.argument("suite_name", metavar="SUITE")
@click.argument("adapter")
@pass_state
def attach(state: CliState, suite_name: str, adapter: str) -> None:
    """Run SUITE (its latest version) on every validation of ADAPTER."""
    from registry.clientside.ci_env import detect_provenance
    from registry.evals.schemas import AttachSuiteIn

    out = state.backend().attach_suite(suite_name, AttachSuiteIn(
        adapter=adapter, created_by=detect_provenance().created_by))
    state.emit(out.model_dump(mode="json"),
               lambda: click.echo(f"suite {out.suite} (v{out.version}, {out.kind}) runs on every "
                                  f"validation of {out.adapter}"))


@suite.command("list")
@pass_state
def list_suites(state: CliState) -> None:
    """Every suite at its latest version."""
    found = state.backend().list_suites()

    def human() -> None:
        if not found:
            click.echo("no suites")
        for s in found:
            click.echo(_line(s))

    state.emit([s.model_dump(mode="json") for s in found], human)


@suite.command("show")
@click.argument("name")
@click.option("--version", "number", type=click.IntRange(min=1), default=None)
@pass_state
def show(state: CliState, name: str, number: int | None) -> None:
    """One suite version (default: the latest) with its files."""
    found = state.backend().get_suite(name, number)

    def human() -> None:
        click.echo(_line(found))
        for f in found.files:
            click.echo(f"  {f.path}\t{f.size}\t{f.digest}")

    state.emit(found.model_dump(mode="json"), human)
