"""Lifecycle commands: promote, rollback, history, archive, alias list|rm, policy set|show|rm."""

from __future__ import annotations

import math
from typing import Literal

import click

from cli.output import CliState, fail, pass_state
from registry.lifecycle.schemas import (
    AliasChangeIn,
    GateOut,
    HistoryEntryOut,
    PolicyIn,
    PolicyOut,
    PromoteIn,
    RollbackIn,
)
from registry.refs import parse_ref, validate_alias, validate_name


def _actor() -> str | None:
    # The CLI's user, or the CI actor (as push does); a server that gets a token records the
    # token's name instead.
    from registry.clientside.ci_env import detect_provenance

    return detect_provenance().created_by


def _gate_line(g: GateOut) -> str:
    return f"  {'pass' if g.passed else 'FAIL'}  {g.gate}: {g.detail}"


def _expect_current(value: str | None) -> int | Literal["none"] | None:
    if value is None:
        return None
    if value == "none":
        return "none"
    if not value.isascii() or not value.isdigit() or int(value) < 1:
        fail(f"invalid --expect-current {value!r}: a version number, or 'none'")
    return int(value)


@click.command()
@click.argument("ref")
@click.option("--alias", "alias", required=True, help="The alias to move, e.g. production.")
@click.option("--reason", default=None, help="Why; recorded in the history.")
@click.option("--expect-current", default=None, metavar="V|none",
              help="Compare-and-set: refuse (exit 4) unless the alias points at V now "
                   "('none': it must not exist yet).")
@click.option("--force", is_flag=True,
              help="Skip failing gates (recorded as 'force' with every gate's result).")
@pass_state
def promote(state: CliState, ref: str, alias: str, reason: str | None,
            expect_current: str | None, force: bool) -> None:
    """Point NAME@ALIAS at REF (NAME:VERSION, NAME@OTHER-ALIAS or NAME for the latest), through
    the promotion gates. A failing gate changes nothing and exits 6, naming every failure."""
    parsed = parse_ref(ref)
    validate_alias(alias)
    body = PromoteIn(version=ref if parsed.version is None else parsed.version, reason=reason,
                     expect_current=_expect_current(expect_current), force=force,
                     actor=_actor())
    out = state.backend().promote(parsed.name, alias, body)

    def human() -> None:
        where = f"{out.name}@{out.alias}"
        if out.action == "none":
            click.echo(f"{where} already points at {out.name}:{out.version}; nothing changed")
            return
        was = f" (was {out.name}:{out.previous})" if out.previous is not None else " (new)"
        verb = "forced" if out.action == "force" else "promoted"
        click.echo(f"{verb} {out.name}:{out.version} to {where}{was}")
        for g in out.gates:
            click.echo(_gate_line(g))

    state.emit(out.model_dump(mode="json"), human)


@click.command()
@click.argument("name")
@click.option("--alias", "alias", required=True, help="The alias to move back.")
@click.option("--to", "to", default=None, metavar="V",
              help="A version that held the alias before (default: the one before the "
                   "current holder, skipping archived versions).")
@click.option("--reason", default=None, help="Why; recorded in the history.")
@pass_state
def rollback(state: CliState, name: str, alias: str, to: str | None,
             reason: str | None) -> None:
    """Move NAME@ALIAS back to the version it held before the current one (or to --to V)."""
    validate_name(name)
    validate_alias(alias)
    target: int | str | None = to
    if to is not None and to.isascii() and to.isdigit():
        target = int(to)
    out = state.backend().rollback(name, alias, RollbackIn(to=target, reason=reason,
                                                           actor=_actor()))
    state.emit(out.model_dump(mode="json"),
               lambda: click.echo(f"rolled back {out.name}@{out.alias} to "
                                  f"{out.name}:{out.version} (was {out.name}:{out.previous})"))


def _history_line(e: HistoryEntryOut) -> None:
    move = f"{e.from_version or '-'} -> {e.to_version or '-'}"
    why = f"  ({e.reason})" if e.reason else ""
    click.echo(f"{e.at:%Y-%m-%d %H:%M:%S}  {e.alias}\t{e.action}\t{move}\tby "
               f"{e.actor or '-'}{why}")
    for g in e.gates:
        if e.action == "force" or not g.passed:
            click.echo(f"    {_gate_line(g).strip()}")


@click.command()
@click.argument("name")
@click.option("--alias", "alias", default=None, help="Only this alias's moves.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="At most N moves (default: all).")
@pass_state
def history(state: CliState, name: str, alias: str | None, limit: int | None) -> None:
    """Every move of NAME's aliases, newest first: promote, rollback, force, delete."""
    validate_name(name)
    if alias is not None:
        validate_alias(alias)
    entries = state.backend().history(name, alias=alias, limit=limit)

    def human() -> None:
        if not entries:
            click.echo("no alias moves")
        for e in entries:
            _history_line(e)

    state.emit([e.model_dump(mode="json") for e in entries], human)


@click.command()
@click.argument("ref")
@click.option("--reason", default=None, help="Why; recorded with the event.")
@pass_state
def archive(state: CliState, ref: str, reason: str | None) -> None:
    """Archive REF: it can no longer be promoted (refused while an alias points at it)."""
    from registry.clientside.transfer import resolve  # as every REF command: on first use

    backend = state.backend()
    version = resolve(backend, ref)
    out = backend.archive(version.name, version.version,
                          AliasChangeIn(reason=reason, actor=_actor()))
    state.emit(out.model_dump(mode="json"),
               lambda: click.echo(f"archived {out.ref} [{out.status}]"))


@click.group("alias")
def alias_group() -> None:
    """Aliases of an adapter (move them with promote and rollback)."""


@alias_group.command("list")
@click.argument("name")
@pass_state
def alias_list(state: CliState, name: str) -> None:
    """Every alias of NAME and the version it points at."""
    found = state.backend().list_aliases(name)

    def human() -> None:
        if not found:
            click.echo(f"{name} has no aliases")
        for a in found:
            click.echo(f"{a.name}@{a.alias}\t{a.name}:{a.version}\t"
                       f"{a.updated_at:%Y-%m-%d %H:%M} by {a.updated_by or '-'}")

    state.emit([a.model_dump(mode="json") for a in found], human)


@alias_group.command("rm")
@click.argument("name")
@click.argument("alias")
@click.option("--reason", default=None, help="Why; recorded in the history.")
@pass_state
def alias_rm(state: CliState, name: str, alias: str, reason: str | None) -> None:
    """Delete NAME@ALIAS (recorded in the history as 'delete')."""
    validate_name(name)
    validate_alias(alias)
    out = state.backend().delete_alias(name, alias, AliasChangeIn(reason=reason, actor=_actor()))
    state.emit(out.model_dump(mode="json"),
               lambda: click.echo(f"deleted {out.name}@{out.alias} (was {out.name}:"
                                  f"{out.previous})"))


@click.group("policy")
def policy_group() -> None:
    """Promotion policies: the gates a promotion to an alias must pass."""


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        fail(f"invalid {what}: {text!r} is not a number")
    if not math.isfinite(value):
        fail(f"invalid {what}: {text!r} is not finite")
    return value


def _thresholds(pairs: tuple[str, ...], flag: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            fail(f"invalid {flag} {pair!r}: expected SUITE.METRIC=VALUE")
        out[key] = _number(value, f"{flag} {pair}")
    return out


def _tolerances(items: tuple[str, ...]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key or (sep and not value):
            fail(f"invalid --no-regression {item!r}: expected SUITE.METRIC[=TOLERANCE]")
        out[key] = _number(value, f"--no-regression {item}") if sep else None
    return out


def _scope(name: str | None, default: bool) -> str | None:
    if default == (name is not None):
        fail("give NAME (an adapter's policy) or --default (the registry-wide one), not both")
    if name is not None:
        validate_name(name)
    return name


def _describe_policy(p: PolicyOut) -> None:
    owner = p.adapter if p.scope == "adapter" else "default"
    gates = []
    if p.require_validated:
        gates.append("require validated")
    gates += [f"min {k}={v:g}" for k, v in sorted(p.min_scores.items())]
    gates += [f"max {k}={v:g}" for k, v in sorted(p.max_scores.items())]
    gates += [f"no regression {k}" + (f" (tolerance {t:g})" if t else "")
              for k, t in sorted(p.no_regression.items())]
    if p.require_base:
        gates.append(f"require base {p.require_base}")
    if p.protected:
        gates.append("protected")
    click.echo(f"{p.alias}\t[{owner}]\t{'; '.join(gates) or 'no gates'}")


@policy_group.command("set")
@click.argument("name", required=False)
@click.option("--alias", "alias", required=True, help="The alias the policy guards.")
@click.option("--default", "default", is_flag=True,
              help="Set the registry-wide default for the alias (no NAME).")
@click.option("--require-validated", is_flag=True, help="Only validated versions.")
@click.option("--min", "min_scores", multiple=True, metavar="SUITE.METRIC=X",
              help="The newest score must be at least X; repeatable.")
@click.option("--max", "max_scores", multiple=True, metavar="SUITE.METRIC=X",
              help="The newest score must be at most X; repeatable.")
@click.option("--no-regression", "no_regression", multiple=True,
              metavar="SUITE.METRIC[=TOLERANCE]",
              help="No worse than the alias's current version (same base and suite version), "
                   "by at most TOLERANCE; repeatable.")
@click.option("--require-base", default=None, metavar="B",
              help="The version must be linked to base model B.")
@click.option("--protected", is_flag=True,
              help="Every promotion needs --reason; the alias cannot be deleted.")
@pass_state
def policy_set(state: CliState, name: str | None, alias: str, default: bool,
               require_validated: bool, min_scores: tuple[str, ...],
               max_scores: tuple[str, ...], no_regression: tuple[str, ...],
               require_base: str | None, protected: bool) -> None:
    """Set the whole promotion policy of NAME@ALIAS (or the default for ALIAS): options not
    given are off. An adapter's own policy replaces the default."""
    owner = _scope(name, default)
    validate_alias(alias)
    body = PolicyIn(require_validated=require_validated,
                    min_scores=_thresholds(min_scores, "--min"),
                    max_scores=_thresholds(max_scores, "--max"),
                    no_regression=_tolerances(no_regression), require_base=require_base,
                    protected=protected, actor=_actor())
    out = state.backend().set_policy(owner, alias, body)
    state.emit(out.model_dump(mode="json"), lambda: _describe_policy(out))


@policy_group.command("show")
@click.argument("name", required=False)
@click.option("--default", "default", is_flag=True, help="The registry-wide defaults.")
@pass_state
def policy_show(state: CliState, name: str | None, default: bool) -> None:
    """The policies that apply to NAME's aliases (its own and the defaults), or --default."""
    found = state.backend().list_policies(_scope(name, default))

    def human() -> None:
        if not found:
            click.echo("no promotion policies: only the rules that always hold apply "
                       "(not failed, compatible with the linked base)")
        for p in found:
            _describe_policy(p)

    state.emit([p.model_dump(mode="json") for p in found], human)


@policy_group.command("rm")
@click.argument("name", required=False)
@click.option("--alias", "alias", required=True)
@click.option("--default", "default", is_flag=True, help="Remove the registry-wide default.")
@pass_state
def policy_rm(state: CliState, name: str | None, alias: str, default: bool) -> None:
    """Remove the policy of NAME@ALIAS (or the default for ALIAS)."""
    owner = _scope(name, default)
    validate_alias(alias)
    state.backend().delete_policy(owner, alias)
    which = f"{owner}@{alias}" if owner else f"the default for {alias}"
    state.emit({"removed": True, "adapter": owner, "alias": alias},
               lambda: click.echo(f"removed the policy of {which}"))
