"""`adapter-registry compat`: static compatibility between adapter versions and base models."""

from __future__ import annotations

from typing import Any

import click

from cli.output import CliState, fail, pass_state
from registry.adapters.refs import parse_ref
from registry.errors import InvalidReference


def _print_verdict(v: dict[str, Any]) -> None:
    state = "compatible" if v["compatible"] else "INCOMPATIBLE"
    click.echo(f"{v['name']}:{v['version']} on {v['base']}@{v['base_revision']}: {state}")
    for r in v["reasons"]:
        click.echo(f"  reason:  {r.get('message')}")
    for w in v["warnings"]:
        click.echo(f"  warning: {w.get('message')}")
    for target, info in sorted(v.get("serving", {}).items()):
        ok = "yes" if info.get("supported") else "no"
        why = "; ".join(str(x.get("message", x)) if isinstance(x, dict) else str(x)
                        for x in info.get("reasons", []))
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
        parsed = parse_ref(ref)
        if parsed.alias is not None:
            raise InvalidReference(
                f"aliases are not supported by this registry yet; use {parsed.name}:VERSION"
            )
        if base_name is not None:
            verdict = backend.compat_verdict(parsed.name, parsed.version, base=base_name,
                                             base_revision=base_revision)
            state.emit(verdict, lambda: _print_verdict(verdict))
            return
        found = backend.compatible_bases(parsed.name, parsed.version)
        state.emit(found, lambda: _print_list([f"{b['name']}@{b['revision']}" for b in found],
                                              "no compatible base model"))
        return
    versions = backend.compatible_versions(base=str(base_name), base_revision=base_revision)
    state.emit(versions, lambda: _print_list([f"{v['name']}:{v['version']}" for v in versions],
                                             "no compatible adapter version"))


def _print_list(lines: list[str], empty: str) -> None:
    for line in lines or [empty]:
        click.echo(line)
