"""`adapter-registry jobs list|show|cancel|retry`: the job queue."""

from __future__ import annotations

import click

from cli.output import CliState, pass_state
from registry.jobs.schemas import JOB_STATUSES, JobOut


@click.group("jobs")
def jobs() -> None:
    """The job queue (validations): list, show, cancel, retry."""


def _line(j: JobOut) -> str:
    outcome = f" ({j.verdict})" if j.verdict else ""
    when = f"{j.created_at:%Y-%m-%d %H:%M:%S}"
    return (f"{j.id}\t{j.kind}\t{j.status}{outcome}\t{j.ref or '-'}\tbase={j.base or '-'}\t"
            f"attempts={j.attempts}/{j.max_attempts}\t{when}")


@jobs.command("list")
@click.option("--status", type=click.Choice(JOB_STATUSES), default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@pass_state
def list_jobs(state: CliState, status: str | None, limit: int) -> None:
    """Every job, newest first (finished ones included)."""
    found = state.backend().list_jobs(status=status, limit=limit)

    def human() -> None:
        if not found:
            click.echo("no jobs")
        for j in found:
            click.echo(_line(j))

    state.emit([j.model_dump(mode="json") for j in found], human)


def _describe(j: JobOut) -> None:
    click.echo(_line(j))
    if j.lease_owner:
        click.echo(f"  worker: {j.lease_owner} (lease until {j.lease_expires_at:%H:%M:%S})"
                   if j.lease_expires_at else f"  worker: {j.lease_owner}")
    if j.timings:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in j.timings.items())
        click.echo(f"  timings: {parts}; base cache hit: {j.base_cache_hit}")
    result = j.result or {}
    if result.get("device"):
        gpu = f" ({result['gpu_name']})" if result.get("gpu_name") else ""
        click.echo(f"  device: {result['device']}{gpu} {result.get('dtype', '')}")
    for reason in j.reasons:
        click.echo(f"  reason: {reason}")
    if j.error and not j.reasons:
        click.echo(f"  error: {j.error}")


@jobs.command("show")
@click.argument("job_id", type=click.IntRange(min=1), metavar="ID")
@pass_state
def show(state: CliState, job_id: int) -> None:
    """One job with its result, error, timings and whether the base was cached."""
    job = state.backend().get_job(job_id)
    state.emit(job.model_dump(mode="json"), lambda: _describe(job))


@jobs.command("cancel")
@click.argument("job_id", type=click.IntRange(min=1), metavar="ID")
@pass_state
def cancel(state: CliState, job_id: int) -> None:
    """Cancel a queued or running job (exit 4 when it already finished)."""
    job = state.backend().cancel_job(job_id)
    state.emit(job.model_dump(mode="json"), lambda: click.echo(f"cancelled job {job.id}"))


@jobs.command("retry")
@click.argument("job_id", type=click.IntRange(min=1), metavar="ID")
@pass_state
def retry(state: CliState, job_id: int) -> None:
    """Queue a failed or cancelled job again (exit 4 otherwise)."""
    job = state.backend().retry_job(job_id)
    state.emit(job.model_dump(mode="json"), lambda: click.echo(f"queued job {job.id} again"))
