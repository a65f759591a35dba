"""`adapter-registry worker`: claim validation jobs and run them on this machine."""

from __future__ import annotations

from pathlib import Path

import click

from cli.output import CliState, pass_state


@click.command()
@click.option("--once", is_flag=True,
              help="Run every claimable job (queued, or with an expired lease), then exit 0.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True,
              help="auto: CUDA when present (bfloat16 where supported), else CPU float32.")
@click.option("--max-cached-bases", type=click.IntRange(min=0), default=1, show_default=True,
              help="Base models kept loaded between jobs (0: load one per job).")
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Base-model file cache (default: $REGISTRY_HOME/worker-cache; its size cap "
                   "is REGISTRY_WORKER_CACHE_BYTES).")
@pass_state
def worker(state: CliState, once: bool, device: str, max_cached_bases: int,
           cache_dir: Path | None) -> None:
    """Validate adapters: load each onto its base model, run smoke checks and eval suites,
    report scores. Talks to the registry through --url (no database credentials) or, without
    it, to the embedded registry. SIGTERM lets the current job finish (up to
    REGISTRY_WORKER_DRAIN_SECONDS), Ctrl-C releases it; then the worker exits."""
    from registry.clientside.worker.loop import Worker  # the worker loads torch: only here

    # With --json the log goes to stderr, so stdout carries exactly one JSON document.
    run = Worker(backend=state.backend(), settings=state.settings(), device=device,
                 max_cached_bases=max_cached_bases, cache_dir=cache_dir, once=once,
                 log=lambda line: click.echo(line, err=state.json))
    run.run()
    state.emit({"worker": run.id, "jobs": [j.to_json() for j in run.jobs]}, lambda: None)
