"""`adapter-registry db`: schema migrations."""

from __future__ import annotations

import click

from cli.output import CliState, pass_state


@click.group()
def db() -> None:
    """Database schema commands."""


@db.command()
@pass_state
def upgrade(state: CliState) -> None:
    """Apply every pending migration to the configured database."""
    from registry.db.engine import current_revision, make_engine
    from registry.db.engine import upgrade as apply

    settings = state.settings()
    engine = make_engine(settings.resolved_database_url)
    try:
        apply(engine)
        revision = current_revision(engine)
    finally:
        engine.dispose()
    state.emit({"revision": revision},
               lambda: click.echo(f"database at revision {revision}"))
