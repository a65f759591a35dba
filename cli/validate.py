"""`adapter-registry validate`: queue a validation; with --wait, its outcome is the exit code."""

from __future__ import annotations

import sys
import time

import click

from cli.output import CliState, fail, pass_state
from registry.jobs.schemas import JobOut

POLL_SECONDS = 0.5
EXIT_VALIDATED, EXIT_FAILED, EXIT_TIMEOUT, EXIT_NO_VERDICT = 0, 6, 5, 1


def outcome(job: JobOut) -> str:
    """``validated`` / ``failed`` once the checks ran; else the job's own status (queued,
    running, or failed/cancelled without a verdict)."""
    if job.verdict in ("validated", "failed"):
        return job.verdict
    return job.status


@click.command()
@click.argument("ref")
@click.option("--base", default=None, help="Base model (default: the version's linked base).")
@click.option("--suite", "suites", multiple=True,
              help="Also run this eval suite (repeatable); attached suites always run.")
@click.option("--wait", is_flag=True,
              help="Wait for the outcome: exit 0 validated, 6 failed, 5 on timeout.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="With --wait: give up after SEC seconds (exit 5).", metavar="SEC")
@click.option("--priority", type=click.IntRange(-1000, 1000), default=0,
              help="Higher runs first.")
@pass_state
def validate(state: CliState, ref: str, base: str | None, suites: tuple[str, ...], wait: bool,
             timeout: float | None, priority: int) -> None:
    """Queue a validation of REF: a worker loads it onto its base and runs the smoke checks,
    the suites named with --suite and the adapter's attached suites."""
    from registry.clientside.ci_env import detect_provenance
    from registry.clientside.transfer import resolve
    from registry.validation.schemas import ValidateIn

    if timeout is not None and not wait:
        raise click.UsageError("--timeout needs --wait")
    backend = state.backend()
    version = resolve(backend, ref)
    job = backend.validate(version.name, version.version, ValidateIn(
        base=base, suites=list(suites), priority=priority,
        created_by=detect_provenance().created_by))
    if not wait:
        state.emit(_data(job, version.name, version.version),
                   lambda: click.echo(f"queued job {job.id}: validate {job.ref} on {job.base}"))
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    while job.status in ("queued", "running"):
        if deadline is not None and time.monotonic() >= deadline:
            if state.json:  # the one document a --json caller parses, then the error line
                state.emit(_data(job, version.name, version.version), lambda: None)
            fail(f"timed out after {timeout:g} s waiting for job {job.id} ({job.status}); "
                 f"follow it with: adapter-registry jobs show {job.id}", EXIT_TIMEOUT)
        time.sleep(POLL_SECONDS)
        job = backend.get_job(job.id)
    done = backend.get_version(version.name, version.version)
    scores = [s.model_dump(mode="json") for s in done.scores if s.job == job.id]
    data = {**_data(job, version.name, version.version), "scores": scores}

    def human() -> None:
        click.echo(f"job {job.id}: {job.ref} on {job.base}: {outcome(job)}")
        for s in done.scores:
            if s.job == job.id:
                click.echo(f"  {s.suite}.{s.metric}\t{s.value:.6g}")

    state.emit(data, human)
    result = outcome(job)
    if result == "validated":
        sys.exit(EXIT_VALIDATED)
    reasons = "; ".join(job.reasons) or job.error or job.status
    if result == "failed" and job.verdict == "failed":
        fail(f"validation of {job.ref} failed: {reasons}", EXIT_FAILED)
    fail(f"job {job.id} {job.status} without a verdict: {reasons}", EXIT_NO_VERDICT)


def _data(job: JobOut, name: str, version: int) -> dict[str, object]:
    return {"job": job.id, "name": name, "version": version, "status": outcome(job),
            "job_status": job.status, "verdict": job.verdict, "base": job.base,
            "base_revision": job.base_revision, "reasons": job.reasons, "error": job.error,
            "attempts": job.attempts, "timings": job.timings,
            "base_cache_hit": job.base_cache_hit}
