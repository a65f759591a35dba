"""Validation end to end with real worker processes, on both deployment shapes.

SQLite + local store: the worker runs without --url (the embedded registry). PostgreSQL + S3:
it gets only the server's URL (no database or storage settings in its environment). Real peft
adapters on tiny Llama, GPT-2 and BERT bases; adapters that must fail; a worker killed with
SIGKILL mid-job; four workers on one PostgreSQL; SIGTERM.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from registry.backend import RegistryBackend
from registry.clientside.suites import add_suite
from registry.clientside.transfer import push, register_base_dir
from registry.config import Settings
from registry.db.engine import session_scope
from registry.db.models import EvalScore
from registry.evals.schemas import AttachSuiteIn
from tests.integration import worker_helpers as wh
from tests.peft_factory import make_adapter, save_base, save_char_tokenizer, tiny_bert, tiny_llama

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(wh.TORCH_THREADS)  # the in-process workers (see worker_helpers)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, adapters_dir, base_dirs) -> dict[str, Path]:
    """Bases with tokenizers, and adapters that must fail, built once for the module."""
    root = tmp_path_factory.mktemp("validation")
    out = {
        "llama": save_char_tokenizer(save_base(tiny_llama(), root / "tiny-llama")),
        "bert": save_char_tokenizer(save_base(tiny_bert(), root / "tiny-bert")),
        "other-llama": save_base(tiny_llama(seed=1), root / "other-llama"),
        "gpt2": base_dirs["gpt2"],
    }
    lora = adapters_dir["lora"]
    out["nan"] = wh.variant(lora, root / "nan", wh.with_nan)
    out["zero"] = wh.variant(lora, root / "zero", wh.zero_lora_b)
    out["dropped"] = wh.variant(lora, root / "dropped", wh.add_unused_module,
                                wh.save_unused_module)
    out["gpt2_lora"] = make_adapter(root / "gpt2-lora", "gpt2_lora",
                                    base_model_name_or_path="tiny-gpt2")
    out["bert_lora"] = make_adapter(root / "bert-lora", "bert_lora",
                                    base_model_name_or_path="tiny-bert")
    return out


def _backend(request: pytest.FixtureRequest, settings: Settings
             ) -> tuple[RegistryBackend, str | None, Any]:
    """The test's view of the registry, the URL a worker gets (None: embedded), the store."""
    if settings.database_url is None:
        from registry.local import LocalRegistry

        local = LocalRegistry(settings)
        request.addfinalizer(local.close)
        return local, None, local.ctx.store
    live = request.getfixturevalue("live_server")
    from registry.client import HttpRegistry

    client = HttpRegistry(live.url)
    request.addfinalizer(client.close)
    return client, live.url, live.context.store


def _worker_home(settings: Settings, url: str | None, tmp_path: Path) -> Path:
    # Embedded: the registry's own home. Remote: a home of its own (its file cache only).
    return settings.home if url is None else tmp_path / "worker-home"


def test_push_is_validated_by_a_worker(request, settings, tmp_path, adapters_dir, models):
    backend, url, store = _backend(request, settings)
    for name, path in (("tiny-llama", models["llama"]), ("tiny-gpt2", models["gpt2"]),
                       ("tiny-bert", models["bert"]), ("broken-llama", models["other-llama"])):
        register_base_dir(backend, name=name, directory=path, settings=settings)
    # A base whose weights vanished from the store: its job fails, the worker goes on.
    broken = backend.get_base("broken-llama")
    [weights] = [f for f in broken.files if f.path == "model.safetensors"]
    store.delete(str(weights.digest))

    suites = tmp_path / "suites"
    suites.mkdir()
    add_suite(backend, name="ppl", kind="perplexity", options={}, settings=settings,
              file=wh.write_jsonl(suites / "ppl.jsonl", [{"text": t} for t in wh.PPL_TEXTS]))
    add_suite(backend, name="gen", kind="generate", options={"max_new_tokens": "4"},
              settings=settings, file=wh.write_jsonl(suites / "gen.jsonl", [
                  {"prompt": "Hello", "expected": ".*", "match": "regex"},
                  {"prompt": "Hello", "expected": "never generated", "match": "exact"}]))
    add_suite(backend, name="cls", kind="classify", options={}, settings=settings,
              file=wh.write_jsonl(suites / "cls.jsonl", [
                  {"text": "good", "label": 0}, {"text": "bad", "label": 1},
                  {"text": "fine", "label": 1}, {"text": "meh", "label": 0}]))

    pushes = [  # (adapter, directory, base): jobs run in this order
        ("bot", adapters_dir["lora"], "tiny-llama"),
        ("dora-bot", adapters_dir["dora"], "tiny-llama"),
        ("ia3-bot", adapters_dir["ia3"], "tiny-llama"),
        ("mts-bot", adapters_dir["modules_to_save"], "tiny-llama"),
        ("nan-bot", models["nan"], "tiny-llama"),
        ("zero-bot", models["zero"], "tiny-llama"),
        ("dropped-bot", models["dropped"], "tiny-llama"),
        ("broken-bot", adapters_dir["lora"], "broken-llama"),
        ("gpt-bot", models["gpt2_lora"], "tiny-gpt2"),
        ("cls-bot", models["bert_lora"], "tiny-bert"),
    ]
    for name, directory, base in pushes:
        pushed = push(backend, name=name, directory=directory, settings=settings,
                      base_model=base)
        assert pushed.version.compatibility is not None
        assert pushed.version.compatibility.compatible, (name, pushed.version.compatibility)
        assert pushed.version.validation is not None, name  # queued with the push
        assert pushed.version.validation.status == "queued"
    for suite, adapter in (("ppl", "bot"), ("gen", "bot"), ("cls", "cls-bot")):
        backend.attach_suite(suite, AttachSuiteIn(adapter=adapter))
    jobs = {j.name: j for j in backend.list_jobs()}
    assert len(jobs) == len(pushes) and {j.status for j in jobs.values()} == {"queued"}

    summary = wh.run_worker(_worker_home(settings, url, tmp_path), "--device", "cpu", url=url)
    assert [j["id"] for j in summary["jobs"]] == sorted(j.id for j in jobs.values())
    jobs = {j.name: j for j in backend.list_jobs()}

    good = ["bot", "dora-bot", "ia3-bot", "mts-bot", "gpt-bot", "cls-bot"]
    for name in good:
        job, version = jobs[name], backend.get_version(name, 1)
        assert (job.status, job.verdict, job.attempts) == ("succeeded", "validated", 1), job
        assert version.status == "validated"
        scores = {(s.suite, s.metric): s for s in version.scores}
        assert scores[("smoke", "applied_tensors")].value == version.tensor_count
        assert scores[("smoke", "dropped_tensors")].value == 0
        assert scores[("smoke", "max_abs_delta")].value > 0
        assert all(s.source == "worker" and s.job == job.id for s in version.scores)
        verdict = backend.compat_verdict(name, 1, base=version.base_model or "")
        assert (verdict.compatible, verdict.method) == (True, "validated")
        assert set(job.timings or {}) >= {"fetch_s", "base_load_s", "attach_s", "eval_s",
                                           "detach_s"}
        assert version.validation is not None and version.validation.device == "cpu"
    # One base load for the Llama jobs: each after the first found the base loaded.
    assert jobs["bot"].base_cache_hit is False and jobs["dora-bot"].base_cache_hit is True
    assert jobs["bot"].timings["base_load_s"] > 0 and jobs["bot"].timings["fetch_s"] > 0
    assert jobs["dora-bot"].timings["base_load_s"] == 0.0

    bot = {(s.suite, s.metric): s.value for s in backend.get_version("bot", 1).scores}
    expected = wh.reference_perplexity(models["llama"], adapters_dir["lora"], wh.PPL_TEXTS)
    assert math.isclose(bot[("ppl", "perplexity")], expected, rel_tol=1e-4)
    base_ppl = {(s.suite, s.metric): s.value for s in backend.base_scores("tiny-llama")}
    assert bot[("ppl", "perplexity_base")] == base_ppl[("ppl", "perplexity")]
    assert bot[("ppl", "perplexity")] != bot[("ppl", "perplexity_base")]
    assert bot[("gen", "pass_rate")] == 0.5
    cls = {(s.suite, s.metric): s for s in backend.get_version("cls-bot", 1).scores}
    assert 0.0 <= cls[("cls", "accuracy")].value <= 1.0 and cls[("cls", "accuracy")].n == 4

    failing = {"nan-bot": "outputs contain NaN/Inf",
               "zero-bot": "the adapter does not change the model's outputs",
               "dropped-bot": "base_model.model.score.weight"}
    for name, fragment in failing.items():
        job, version = jobs[name], backend.get_version(name, 1)
        assert (job.status, job.verdict, version.status) == ("failed", "failed", "failed")
        assert any(fragment in r for r in job.reasons), (name, job.reasons)
        assert version.validation is not None and version.validation.reasons == job.reasons
    dropped = backend.compat_verdict("dropped-bot", 1, base="tiny-llama")
    assert (dropped.compatible, dropped.method) == (False, "validated")
    assert [r.code for r in dropped.reasons] == ["tensors_dropped"]
    assert backend.compat_verdict("nan-bot", 1, base="tiny-llama").compatible  # it loads

    broken_job = jobs["broken-bot"]
    assert (broken_job.status, broken_job.verdict) == ("failed", None)
    assert "cannot fetch model.safetensors of base model broken-llama" in (broken_job.error or "")
    assert backend.get_version("broken-bot", 1).status == "registered"  # no verdict: as before

    events = Counter(e.type for e in backend.list_events(limit=1000).events)
    assert events["version.validated"] == len(good)
    assert events["version.validation_failed"] == len(failing)


def _slow_suite(backend: RegistryBackend, settings: Settings, tmp_path: Path) -> None:
    texts = [{"text": f"{i}: " + "the registry validates adapters on their base. " * 3}
             for i in range(600)]
    add_suite(backend, name="long", kind="perplexity", options={}, settings=settings,
              file=wh.write_jsonl(tmp_path / "long.jsonl", texts))


def _running(backend: RegistryBackend, job_id: int) -> bool:
    return backend.get_job(job_id).status == "running"


def test_worker_killed_mid_job_is_replaced(request, settings, tmp_path, adapters_dir, models):
    from registry.clientside.worker.loop import Worker

    backend, url, _ = _backend(request, settings)
    settings.job_lease_seconds = 2  # the server's lease (a remote worker gets it at claim)
    register_base_dir(backend, name="tiny-llama", directory=models["llama"], settings=settings)
    _slow_suite(backend, settings, tmp_path)
    push(backend, name="bot", directory=adapters_dir["lora"], settings=settings,
         base_model="tiny-llama")
    backend.attach_suite("long", AttachSuiteIn(adapter="bot"))
    [job] = backend.list_jobs()

    home = _worker_home(settings, url, tmp_path)
    proc = wh.start_worker(home, "--device", "cpu", url=url, lease_seconds=2)
    try:
        wh.wait_for(lambda: _running(backend, job.id), timeout=300, what="the job to start")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    killed = backend.get_job(job.id)
    assert (killed.status, killed.attempts) == ("running", 1), "the job ended before the kill"
    assert backend.get_version("bot", 1).status == "validating"
    expires = killed.lease_expires_at
    assert expires is not None
    wh.wait_for(lambda: time.time() > expires.timestamp() + 0.2, timeout=30,
                what="the lease to expire")

    replacement = Worker(backend=backend, settings=settings, device="cpu", once=True,
                         cache_dir=tmp_path / "cache-2", log=lambda _: None)
    assert replacement.run() == 0
    done = backend.get_job(job.id)
    assert (done.status, done.verdict, done.attempts) == ("succeeded", "validated", 2)
    assert done.result is not None and done.result["worker"] == replacement.id
    assert [line.attempt for line in replacement.jobs] == [2]
    version = backend.get_version("bot", 1)
    assert version.status == "validated"
    assert {(s.suite, s.metric) for s in version.scores} >= {("long", "perplexity"),
                                                              ("smoke", "max_abs_delta")}


def test_four_workers_run_each_of_20_jobs_once(request, settings, tmp_path, adapters_dir,
                                               models):
    if settings.database_url is None:
        pytest.skip("concurrent workers on one database: the PostgreSQL deployment")
    backend, url, _ = _backend(request, settings)
    register_base_dir(backend, name="tiny-llama", directory=models["llama"], settings=settings)
    for i in range(20):
        push(backend, name="bot", directory=adapters_dir["lora"], settings=settings,
             base_model="tiny-llama", metadata={"run": str(i)})
    procs = [wh.start_worker(tmp_path / f"w{i}", "--once", "--device", "cpu", url=url)
             for i in range(4)]
    outputs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err[-2000:] for _, err in outputs]
    ran = [j["id"] for out, _ in outputs for j in json.loads(out)["jobs"]]
    jobs = backend.list_jobs()
    assert len(jobs) == 20 and sorted(ran) == sorted(j.id for j in jobs)  # each exactly once
    assert {(j.status, j.attempts) for j in jobs} == {("succeeded", 1)}
    ctx = request.getfixturevalue("live_server").context
    with session_scope(ctx.sessions) as session:
        rows = session.execute(
            select(EvalScore.job_id, EvalScore.metric, func.count())
            .group_by(EvalScore.job_id, EvalScore.metric)).all()
    assert {count for _, _, count in rows} == {1}  # one result per job: never run twice
    assert {job_id for job_id, _, _ in rows} == {j.id for j in jobs}


def _sigterm_mid_job(settings, tmp_path, adapters_dir, models, request, *, drain: str
                     ) -> tuple[RegistryBackend, int, dict, str]:
    """A worker (REGISTRY_WORKER_DRAIN_SECONDS=drain) running a long job gets SIGTERM while a
    second job waits; returns the backend, the first job's id, the worker's JSON and stderr."""
    backend, _, _ = _backend(request, settings)
    register_base_dir(backend, name="tiny-llama", directory=models["llama"], settings=settings)
    _slow_suite(backend, settings, tmp_path)
    push(backend, name="bot", directory=adapters_dir["lora"], settings=settings,
         base_model="tiny-llama")
    backend.attach_suite("long", AttachSuiteIn(adapter="bot"))
    [job] = backend.list_jobs()
    proc = wh.start_worker(settings.home, "--device", "cpu",
                           env={"REGISTRY_WORKER_DRAIN_SECONDS": drain})
    try:
        wh.wait_for(lambda: _running(backend, job.id), timeout=300, what="the job to start")
        push(backend, name="bot", directory=adapters_dir["lora_v2"], settings=settings,
             base_model="tiny-llama")  # queued behind it: never claimed once stopping
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    return backend, job.id, json.loads(out), err


def test_sigterm_after_the_drain_time_releases_the_running_job(settings, tmp_path,
                                                               adapters_dir, models, request):
    if settings.database_url is not None:
        pytest.skip("signal handling does not depend on the deployment")
    backend, job_id, out, _ = _sigterm_mid_job(settings, tmp_path, adapters_dir, models,
                                               request, drain="0")
    [line] = out["jobs"]
    released = backend.get_job(job_id)
    if line["status"] == "released":
        assert (released.status, released.attempts) == ("queued", 0)
        assert backend.get_version("bot", 1).status == "registered"
    else:  # it was already reporting: finished instead
        assert released.status == "succeeded", line
    assert backend.get_version("bot", 2).status == "registered"


def test_sigterm_lets_the_running_job_finish_then_exits(settings, tmp_path, adapters_dir,
                                                        models, request):
    if settings.database_url is not None:
        pytest.skip("signal handling does not depend on the deployment")
    backend, job_id, out, err = _sigterm_mid_job(settings, tmp_path, adapters_dir, models,
                                                 request, drain="600")
    assert "SIGTERM: finishing the current job" in err
    [line] = out["jobs"]  # the job it held, and nothing claimed after the signal
    assert (line["id"], line["status"], line["verdict"]) == (job_id, "succeeded", "validated")
    assert backend.get_version("bot", 1).status == "validated"
    assert [j.status for j in backend.list_jobs()] == ["queued", "succeeded"]
