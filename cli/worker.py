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
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve this worker's Prometheus metrics (validation durations, jobs by "
                   "outcome) on http://0.0.0.0:PORT/metrics.")
@pass_state
def worker(state: CliState, once: bool, device: str, max_cached_bases: int,
           cache_dir: Path | None, metrics_port: int | None) -> None:
    """Validate adapters: load each onto its base model, run smoke checks and eval suites,
    report scores. Talks to the registry through --url (no database credentials) or, without
    it, to the embedded registry. SIGTERM lets the current job finish (up to
    REGISTRY_WORKER_DRAIN_SECONDS), Ctrl-C releases it; then the worker exits."""
    import logging
    import os

    from registry.clientside.worker.loop import JobLine, Worker  # loads torch: only here
    from registry.errors import InvalidInput
    from registry.observability.logs import configure_logging
    from registry.observability.metrics import WorkerMetrics

    settings = state.settings()
    metrics = WorkerMetrics()
    if metrics_port is not None:
        try:
            metrics.serve(metrics_port)
        except OSError as exc:
            raise InvalidInput(f"--metrics-port {metrics_port}: {exc.strerror or exc}"
                               ) from None
    if settings.log_format == "json":
        # JSON lines on stderr (stdout keeps --json's one document), a job's fields as keys:
        # Python warnings and transformers' own log go through the same handler, and the
        # progress bars of model loading (not lines) are off.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        configure_logging("json")
        import transformers.utils.logging as hf_logging  # the worker loads it anyway

        hf_logging.disable_default_handler()
        hf_logging.enable_propagation()
        hf_logging.disable_progress_bar()
        logger = logging.getLogger("registry.worker")

        def log(line: str) -> None:
            logger.info(line)

        def log_job(line: JobLine, kind: str) -> None:
            logger.info(line.summary(), extra={"fields": {
                "event": "job", "kind": kind, "job": line.id, "ref": line.ref,
                "outcome": line.outcome, **line.to_json()}})

        run = Worker(backend=state.backend(), settings=settings, device=device,
                     max_cached_bases=max_cached_bases, cache_dir=cache_dir, once=once,
                     log=log, log_job=log_job, metrics=metrics)
    else:
        # With --json the log goes to stderr, so stdout carries exactly one JSON document.
        run = Worker(backend=state.backend(), settings=settings, device=device,
                     max_cached_bases=max_cached_bases, cache_dir=cache_dir, once=once,
                     log=lambda line: click.echo(line, err=state.json), metrics=metrics)
    run.run()
    state.emit({"worker": run.id, "jobs": [j.to_json() for j in run.jobs]}, lambda: None)
