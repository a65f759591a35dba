"""The worker loop: claim, run with a heartbeat, report; stop cleanly on SIGTERM.

Modelled on procrastinate's worker: a claim returns one job or nothing; a thread renews the
lease every third of it while the job runs; the job checks between its steps whether it must
stop. On the first signal the worker claims nothing more, then exits 0 once its job is over:
SIGTERM (what Kubernetes and ``docker stop`` send) lets the running job finish, for up to
``REGISTRY_WORKER_DRAIN_SECONDS``, after which it is released at its next step (queued again,
the attempt not counted); Ctrl-C (SIGINT) releases it at its next step at once. A job already
reporting always finishes. A second signal ends the worker at once (the lease expires and
another worker takes the job). Give a pod a termination grace period above the drain time.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from registry.backend import RegistryBackend
from registry.config import Settings
from registry.errors import InvalidInput, LeaseLost, RegistryError
from registry.jobs.schemas import ClaimedJobOut
from registry.observability.metrics import WorkerMetrics
from registry.validation.schemas import ValidationSpec

IDLE_POLL_SECONDS = (0.5, 5.0)  # first and longest wait between empty claims


class Abort(Exception):
    """Stop the current job now: ``release`` it to the queue, or drop it (no longer ours)."""

    def __init__(self, reason: str, *, release: bool) -> None:
        super().__init__(reason)
        self.release = release


def worker_id() -> str:
    """Unique per process: host, pid and a random suffix (a restarted pid is another worker)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Heartbeat:
    """Renews one job's lease every ``interval`` seconds on a thread; remembers a lost lease."""

    def __init__(self, backend: RegistryBackend, claimed: ClaimedJobOut,
                 release_due: Callable[[], bool], log: Callable[[str], None]) -> None:
        self.backend, self.claimed, self.release_due, self.log = (backend, claimed, release_due,
                                                                  log)
        self.interval = max(claimed.lease_seconds / 3, 0.2)
        self.lost: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{claimed.job.id}",
                                        daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        job = self.claimed.job.id
        while not self._done.wait(self.interval):
            try:
                self.backend.heartbeat_job(job, worker=self.claimed.worker,
                                           attempt=self.claimed.attempt)
            except LeaseLost as exc:
                self.lost = exc.detail
                return
            except RegistryError as exc:  # unreachable for a moment: try again next beat
                self.log(f"job {job}: heartbeat failed: {exc.detail}")

    def check(self) -> None:
        """Raise Abort when the job must stop: the lease was lost, or the worker is stopping."""
        if self.lost is not None:
            raise Abort(self.lost, release=False)
        if self.release_due():
            raise Abort("the worker is stopping", release=True)


@dataclass
class JobLine:
    id: int
    ref: str | None
    status: str
    verdict: str | None = None
    attempt: int = 1
    detail: str | None = None
    seconds: float = 0.0

    @property
    def outcome(self) -> str:
        """validated | failed (a verdict), else how the job ended: failed, released, lost,
        unreported."""
        return self.verdict or self.status

    def summary(self) -> str:
        return (f"job {self.id}: {self.ref} {self.outcome}"
                + (f": {self.detail}" if self.detail else "") + f" ({self.seconds:.1f} s)")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "ref": self.ref, "status": self.status, "verdict": self.verdict,
                "attempt": self.attempt, "detail": self.detail,
                "seconds": round(self.seconds, 3)}


@dataclass
class Worker:
    """Claims and runs validation jobs until told to stop (or, with ``once``, until nothing is
    claimable)."""

    backend: RegistryBackend
    settings: Settings
    device: str = "auto"
    max_cached_bases: int = 1
    cache_dir: Path | None = None
    once: bool = False
    log: Callable[[str], None] = print
    # The line written when a job ends (default: ``log`` of a text line); the CLI's JSON logs
    # pass one that writes the job's fields.
    log_job: Callable[[JobLine, str], None] | None = None
    metrics: WorkerMetrics | None = None
    id: str = field(default_factory=worker_id)
    # Setting ``stopping`` directly (an embedder) releases the running job at its next step;
    # a signal first sets ``release_at`` (see _on_signal).
    stopping: threading.Event = field(default_factory=threading.Event)
    release_at: float | None = None  # time.monotonic() after which a running job is released
    jobs: list[JobLine] = field(default_factory=list)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        drain = self.settings.worker_drain_seconds if signum == signal.SIGTERM else 0.0
        self.release_at = time.monotonic() + drain
        what = (f"finishing the current job (released if still running after {drain:g} s)"
                if drain > 0 else "releasing the current job at its next step")
        self.log(f"worker {self.id}: {signal.Signals(signum).name}: {what}, then exiting "
                 "(send it again to exit at once)")
        self.stopping.set()
        signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once

    def release_due(self) -> bool:
        """Whether the running job must be released now: the worker is stopping and its drain
        time (if any) is over."""
        if not self.stopping.is_set():
            return False
        return self.release_at is None or time.monotonic() >= self.release_at

    def run(self) -> int:
        """Run until stopped; returns the exit status (0)."""
        # torch, transformers and peft load here, only in the worker's process.
        from registry.clientside.worker.device import resolve_device
        from registry.clientside.worker.files import BaseFileCache
        from registry.clientside.worker.models import ModelCache
        from registry.clientside.worker.runner import WorkerContext

        device = resolve_device(self.device)
        root = self.cache_dir or self.settings.home / "worker-cache"
        ctx = WorkerContext(
            backend=self.backend, settings=self.settings, device=device,
            files=BaseFileCache(root, cap_bytes=self.settings.worker_cache_bytes),
            models=ModelCache(device, max_loaded=self.max_cached_bases), worker_id=self.id)
        saved: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                saved[signum] = signal.signal(signum, self._on_signal)
        try:
            return self._loop(ctx, root)
        finally:
            for restored, handler in saved.items():  # a caller's handlers (tests, embedders)
                signal.signal(restored, handler)
            ctx.models.clear()

    def _loop(self, ctx: Any, root: Path) -> int:
        device = ctx.device
        self.log(f"worker {self.id} on {device.name} ({device.dtype_name}), "
                 f"{self.max_cached_bases} base(s) kept loaded, cache {root}")
        idle = IDLE_POLL_SECONDS[0]
        while not self.stopping.is_set():
            claimed = self.backend.claim_job(self.id)
            if claimed is None:
                if self.once:
                    break
                self.stopping.wait(idle)
                idle = min(idle * 2, IDLE_POLL_SECONDS[1])
                continue
            idle = IDLE_POLL_SECONDS[0]
            self.run_job(ctx, claimed)
        return 0

    def run_job(self, ctx: Any, claimed: ClaimedJobOut) -> JobLine:
        """Run one claimed job and report it; never raises for the job's own failures."""
        from registry.clientside.worker.runner import JobError, run  # loaded by run() already

        job = claimed.job
        line = JobLine(id=job.id, ref=job.ref, status="running", attempt=claimed.attempt)
        self.jobs.append(line)
        start = time.perf_counter()
        self.log(f"job {job.id}: validating {job.ref} on {job.base} (attempt {claimed.attempt})")
        try:
            with Heartbeat(self.backend, claimed, self.release_due, self.log) as beat:
                spec = ValidationSpec.model_validate(claimed.spec)
                report = run(ctx, spec, attempt=claimed.attempt, check=beat.check)
                if beat.lost is not None:
                    raise Abort(beat.lost, release=False)
            done = self.backend.complete_job(job.id, worker=claimed.worker,
                                             attempt=claimed.attempt, report=report)
            line.status, line.verdict = done.status, done.verdict
            line.detail = "; ".join(done.reasons) or None
        except Abort as exc:
            if exc.release:
                line.status, line.detail = "released", str(exc)
                self._report(lambda: self.backend.release_job(
                    job.id, worker=claimed.worker, attempt=claimed.attempt), line)
            else:
                line.status, line.detail = "lost", str(exc)
        except JobError as exc:
            self._fail(claimed, line, str(exc)[:10_000])
        except LeaseLost as exc:
            line.status, line.detail = "lost", exc.detail
        except InvalidInput as exc:  # the registry refused the report itself
            self._fail(claimed, line, f"the registry refused the worker's report: {exc.detail}")
        except RegistryError as exc:
            line.status, line.detail = "unreported", exc.detail
        except Exception as exc:  # a bug or an unforeseen failure: the job fails, we go on
            self._fail(claimed, line, f"worker error: {type(exc).__name__}: "
                                      f"{str(exc).splitlines()[0][:500] if str(exc) else ''}")
        line.seconds = time.perf_counter() - start
        if self.metrics is not None:
            self.metrics.observe_job(kind=job.kind, outcome=line.outcome, seconds=line.seconds)
        if self.log_job is not None:
            self.log_job(line, job.kind)
        else:
            self.log(line.summary())
        return line

    def _fail(self, claimed: ClaimedJobOut, line: JobLine, error: str) -> None:
        line.status, line.detail = "failed", error
        self._report(lambda: self.backend.fail_job(
            claimed.job.id, worker=claimed.worker, attempt=claimed.attempt, error=error), line)

    def _report(self, call: Callable[[], object], line: JobLine) -> None:
        try:
            call()
        except LeaseLost as exc:
            line.status, line.detail = "lost", exc.detail
        except RegistryError as exc:
            line.detail = f"{line.detail}; could not report it: {exc.detail}"
