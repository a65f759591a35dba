"""`adapter-registry compat`: static compatibility between adapter versions and base models."""

from __future__ import annotations

import click

from cli.output import CliState, fail, pass_state
from registry.backend import RegistryBackend
from registry.compat.schemas import VerdictOut
from registry.refs import parse_ref


def _print_verdict(v: VerdictOut) -> None:
    state = "compatible" if v.compatible else "INCOMPATIBLE"
    click.echo(f"{v.name}:{v.version} on {v.base}@{v.base_revision}: {state}")
    for r in v.reasons:
        click.echo(f"  reason:  {r.message}")
    for w in v.warnings:
        click.echo(f"  warning: {w.message}")
    for target, info in sorted(v.serving.items()):
        ok = "yes" if info.supported else "no"
        why = "; ".join(x.message for x in info.reasons)
        click.echo(f"  serving {target}: {ok}{' (' + why + ')' if why else ''}")


@click.command()
@click.argument("ref", required=False)
@click.option("--base", "base_name", default=None, help="Base model name.")
@click.option("--base-revision", default=None, help="Default: the latest registered revision.")
@pass_state
def compat(state: CliState, ref: str | None, base_name: str | None,
           base_revision: str | None) -> None:
    """Static compatibility, from tensor shapes only (no weights are read).

    \b
    compat REF --base B   the verdict for one pair, with reasons and warnings
    compat --base B       every compatible adapter version
    compat REF            every compatible base model
    """
    backend = state.backend()
    if ref is None and base_name is None:
        fail("give REF, --base B, or both")
    if ref is not None:
        name, version = _name_version(backend, ref)
        if base_name is not None:
            verdict = backend.compat_verdict(name, version, base=base_name,
                                             base_revision=base_revision)
            state.emit(verdict.model_dump(mode="json"), lambda: _print_verdict(verdict))
            return
        found = backend.compatible_bases(name, version)
        state.emit([b.model_dump(mode="json") for b in found],
                   lambda: _print_list([f"{b.name}@{b.revision}" for b in found],
                                       "no compatible base model"))
        return
    versions = backend.compatible_versions(base=str(base_name), base_revision=base_revision)
    state.emit([v.model_dump(mode="json") for v in versions],
               lambda: _print_list([f"{v.name}:{v.version}" for v in versions],
                                   "no compatible adapter version"))


def _name_version(backend: RegistryBackend, ref: str) -> tuple[str, int | None]:
    """NAME and VERSION (None: latest) of a REF; an alias is resolved to its version first."""
    parsed = parse_ref(ref)
    if parsed.alias is None:
        return parsed.name, parsed.version
    found = backend.resolve_alias(parsed.name, parsed.alias)
    return found.name, found.version


def _print_list(lines: list[str], empty: str) -> None:
    for line in lines or [empty]:
        click.echo(line)
