"""The job queue on both backends: claim order, leases, takeover with attempt + 1, "worker lost N
times", fencing of late reports (409 over HTTP), cancel, retry, release, concurrent claimers."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime, timedelta

import httpx
import pytest

from registry import errors
from registry.context import RegistryContext
from registry.db.base import utcnow
from registry.db.engine import session_scope
from registry.db.enums import JobKind
from registry.jobs import queries, service

NO_HANDLERS: dict = {}  # bare queue semantics: jobs about no version


def _enqueue(ctx: RegistryContext, *, priority: int = 0, max_attempts: int = 3,
             run_after: datetime | None = None) -> int:
    with session_scope(ctx.sessions) as s:
        return service.enqueue(s, kind=JobKind.validate, priority=priority,
                               max_attempts=max_attempts, run_after=run_after).id


def _claim(ctx: RegistryContext, worker: str, now: datetime | None = None, lease: int = 2):
    with session_scope(ctx.sessions) as s:
        return service.claim(s, worker=worker, lease_seconds=lease, handlers=NO_HANDLERS,
                             now=now)


def _status(ctx: RegistryContext, job_id: int) -> tuple[str, int, str | None]:
    with session_scope(ctx.sessions) as s:
        job = queries.get_job(s, job_id)
        return job.status.value, job.attempts, job.error


def test_claim_order_is_priority_then_id(context):
    first, urgent, second = _enqueue(context), _enqueue(context, priority=5), _enqueue(context)
    later = _enqueue(context, priority=9, run_after=utcnow() + timedelta(hours=1))
    got = [_claim(context, "w").job.id for _ in range(3)]
    assert got == [urgent, first, second]
    assert _claim(context, "w") is None  # `later` is not due yet
    assert _status(context, later)[0] == "queued"


def test_expired_lease_is_taken_again_and_fences_the_first_worker(context):
    job_id = _enqueue(context)
    t0 = utcnow()
    first = _claim(context, "w1", now=t0)
    assert (first.job.id, first.attempt, first.job.status) == (job_id, 1, "running")
    # A live lease is never claimable (`worker --once` does not wait on it).
    assert _claim(context, "w2", now=t0 + timedelta(seconds=1)) is None
    taken = _claim(context, "w2", now=t0 + timedelta(seconds=3))
    assert (taken.job.id, taken.attempt, taken.worker) == (job_id, 2, "w2")
    with session_scope(context.sessions) as s, pytest.raises(errors.LeaseLost):
        service.heartbeat(s, job_id=job_id, worker="w1", attempt=1, lease_seconds=2)
    with session_scope(context.sessions) as s, pytest.raises(errors.LeaseLost):
        service.fail(s, job_id=job_id, worker="w1", attempt=1, error="late", result=None,
                     handlers=NO_HANDLERS)
    with session_scope(context.sessions) as s:
        service.heartbeat(s, job_id=job_id, worker="w2", attempt=2, lease_seconds=2)
    assert _status(context, job_id) == ("running", 2, None)


def test_heartbeat_keeps_the_lease(context):
    job_id = _enqueue(context)
    t0 = utcnow()
    _claim(context, "w1", now=t0)
    with session_scope(context.sessions) as s:
        service.heartbeat(s, job_id=job_id, worker="w1", attempt=1, lease_seconds=2,
                          now=t0 + timedelta(seconds=1.5))
    assert _claim(context, "w2", now=t0 + timedelta(seconds=3)) is None  # renewed to t0+3.5
    assert _claim(context, "w2", now=t0 + timedelta(seconds=4)).attempt == 2


def test_worker_lost_max_attempts_times_fails_the_job(context):
    job_id = _enqueue(context, max_attempts=2)
    t0 = utcnow()
    assert _claim(context, "w1", now=t0).attempt == 1
    assert _claim(context, "w2", now=t0 + timedelta(seconds=3)).attempt == 2
    assert _claim(context, "w3", now=t0 + timedelta(seconds=6)) is None
    status, attempts, error = _status(context, job_id)
    assert (status, attempts) == ("failed", 2)
    assert error is not None and error.startswith("worker lost 2 times")


def test_cancel_and_retry(context):
    job_id = _enqueue(context)
    with session_scope(context.sessions) as s:
        service.cancel(s, job_id=job_id, handlers=NO_HANDLERS)
    assert _status(context, job_id)[0] == "cancelled"
    with session_scope(context.sessions) as s, pytest.raises(errors.JobStateConflict) as exc:
        service.cancel(s, job_id=job_id, handlers=NO_HANDLERS)
    assert exc.value.status_code == 409
    assert _claim(context, "w") is None
    with session_scope(context.sessions) as s:
        service.retry(s, job_id=job_id)
    assert _status(context, job_id) == ("queued", 0, None)
    claimed = _claim(context, "w1")
    with session_scope(context.sessions) as s, pytest.raises(errors.JobStateConflict):
        service.retry(s, job_id=job_id)  # running: not retryable
    with session_scope(context.sessions) as s:
        service.cancel(s, job_id=job_id, handlers=NO_HANDLERS)  # a running job: cancelled...
    with session_scope(context.sessions) as s, pytest.raises(errors.LeaseLost, match="cancel"):
        service.heartbeat(s, job_id=job_id, worker="w1", attempt=claimed.attempt,
                          lease_seconds=2)  # ...and its worker learns it at the next beat
    with session_scope(context.sessions) as s, pytest.raises(errors.JobNotFound):
        service.cancel(s, job_id=job_id + 1000, handlers=NO_HANDLERS)


def test_release_does_not_count_an_attempt_but_still_fences(context):
    job_id = _enqueue(context, max_attempts=1)
    first = _claim(context, "w1")
    with session_scope(context.sessions) as s:
        service.release(s, job_id=job_id, worker="w1", attempt=first.attempt,
                        handlers=NO_HANDLERS)
    assert _status(context, job_id) == ("queued", 0, None)
    again = _claim(context, "w2")
    assert (again.job.id, again.attempt) == (job_id, 1)
    with session_scope(context.sessions) as s, pytest.raises(errors.LeaseLost):
        service.fail(s, job_id=job_id, worker="w1", attempt=1, error="x", result=None,
                     handlers=NO_HANDLERS)
    with session_scope(context.sessions) as s:
        service.fail(s, job_id=job_id, worker="w2", attempt=1, error="base gone", result=None,
                     handlers=NO_HANDLERS)
    assert _status(context, job_id) == ("failed", 1, "base gone")


def test_claim_refuses_bad_input(context):
    with session_scope(context.sessions) as s, pytest.raises(errors.InvalidInput):
        service.claim(s, worker="w", lease_seconds=1, handlers=NO_HANDLERS)
    with session_scope(context.sessions) as s, pytest.raises(errors.InvalidInput):
        service.claim(s, worker="w", lease_seconds=2, kinds=("nope",), handlers=NO_HANDLERS)
    with session_scope(context.sessions) as s, pytest.raises(errors.InvalidInput):
        queries.list_jobs(s, status="done")


def test_concurrent_claimers_take_each_job_once(context):
    ids = {_enqueue(context) for _ in range(40)}
    taken: list[int] = []
    failures: list[BaseException] = []

    def claimer(name: str) -> None:
        try:
            while (claimed := _claim(context, name, lease=60)) is not None:
                taken.append(claimed.job.id)
        except BaseException as exc:  # surfaced below: a thread's exception is otherwise lost
            failures.append(exc)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures, failures
    counts = Counter(taken)
    assert set(counts) == ids and max(counts.values()) == 1


def test_late_completion_after_takeover_is_refused_over_http(live_server, http, settings,
                                                             adapters_dir, base_dirs):
    from registry.clientside.transfer import push, register_base_dir

    settings.job_lease_seconds = 2  # the server reads it per request
    register_base_dir(http, name="tiny-llama", directory=base_dirs["llama"], settings=settings)
    push(http, name="bot", directory=adapters_dir["lora"], settings=settings,
         base_model="tiny-llama")
    [queued] = http.list_jobs()
    assert (queued.status, queued.ref, queued.base, queued.kind) == (
        "queued", "bot:1", "tiny-llama", "validate")
    first = http.claim_job("w1")
    assert first is not None and first.attempt == 1 and first.lease_seconds == 2
    assert first.spec["ref"] == "bot:1" and http.get_version("bot", 1).status == "validating"
    import time

    time.sleep(2.3)
    second = http.claim_job("w2")
    assert second is not None and (second.job.id, second.attempt) == (first.job.id, 2)
    report = {"verdict": "validated", "load": {"loaded": True, "file_tensors": 8,
                                                "applied_tensors": 8},
              "scores": [{"suite": "smoke", "metric": "max_abs_delta", "value": 0.5}],
              "device": "cpu", "dtype": "float32", "timings": {"fetch_s": 0.1}}
    late = httpx.post(f"{live_server.url}/api/v1/jobs/{first.job.id}/complete",
                      json={"worker": "w1", "attempt": 1, "report": report}, timeout=30)
    assert late.status_code == 409 and late.json()["error"] == "lease_lost"
    with pytest.raises(errors.LeaseLost):
        http.heartbeat_job(first.job.id, worker="w1", attempt=1)
    done = http.complete_job(second.job.id, worker="w2", attempt=2, report=report)
    assert (done.status, done.verdict, done.attempts) == ("succeeded", "validated", 2)
    with pytest.raises(errors.LeaseLost):  # written once: a second report is refused too
        http.complete_job(second.job.id, worker="w2", attempt=2, report=report)
    version = http.get_version("bot", 1)
    assert version.status == "validated"
    assert [(s.suite, s.metric, s.job) for s in version.scores] == [
        ("smoke", "max_abs_delta", first.job.id)]
    assert version.validation is not None and version.validation.attempts == 2
    cancel = httpx.post(f"{live_server.url}/api/v1/jobs/{first.job.id}/cancel", timeout=30)
    assert cancel.status_code == 409 and cancel.json()["error"] == "job_state_conflict"
