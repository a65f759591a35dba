"""`adapter-registry gc`: remove blobs no version references."""

from __future__ import annotations

import click

from cli.output import CliState, pass_state


@click.command()
@click.option("--grace", "grace_seconds", type=click.IntRange(min=0), default=None,
              help="Only remove unreferenced blobs older than this many seconds "
                   "(default: REGISTRY_GC_GRACE_SECONDS, 24 h).")
@click.option("--dry-run", is_flag=True, help="Report what would be removed.")
@pass_state
def gc(state: CliState, grace_seconds: int | None, dry_run: bool) -> None:
    """Remove uploaded blobs that nothing references, once past the grace period, and what
    crashed uploads left (objects without a record, temp files, multipart uploads)."""
    report = state.backend().gc(grace_seconds=grace_seconds, dry_run=dry_run)

    def human() -> None:
        verb = "would remove" if dry_run else "removed"
        click.echo(f"{verb} {report['removed_count']} unreferenced blob(s), "
                   f"{report['removed_bytes']} bytes")
        if report.get("orphans_removed"):
            click.echo(f"{verb} {len(report['orphans_removed'])} stored object(s) without a "
                       "record")
        if report.get("temp_removed"):
            click.echo(f"removed {report['temp_removed']} abandoned upload(s)")

    state.emit(report, human)
