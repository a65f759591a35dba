"""The RegistryBackend contract for jobs, suites and validation: HttpRegistry and LocalRegistry
answer the same, errors included, on both deployment shapes (the scenario fixtures are
test_backend_contract's)."""

from __future__ import annotations

import json

import pytest

from registry import errors
from registry.backend import RegistryBackend
from registry.clientside.suites import add_suite
from registry.evals.schemas import AttachSuiteIn, CreateSuiteIn
from registry.validation.schemas import ValidateIn
from tests.integration.test_backend_contract import backend, family  # noqa: F401

REPORT = {"verdict": "validated", "load": {"loaded": True, "file_tensors": 8,
                                           "applied_tensors": 8},
          "scores": [{"suite": "smoke", "metric": "max_abs_delta", "value": 0.25},
                     {"suite": "ppl", "suite_version": 1, "metric": "perplexity", "value": 7.5,
                      "n": 2}],
          "base_scores": [{"suite": "ppl", "suite_version": 1, "metric": "perplexity",
                           "value": 8.0, "n": 2}],
          "device": "cpu", "dtype": "float32",
          "timings": {"fetch_s": 0.1, "base_load_s": 0.2, "attach_s": 0.01, "eval_s": 0.3,
                      "detach_s": 0.01}, "base_cache_hit": False}


@pytest.fixture
def with_suite(family: RegistryBackend, settings, tmp_path):  # noqa: F811
    data = tmp_path / "ppl.jsonl"
    data.write_text(json.dumps({"text": "one two"}) + "\n" + json.dumps({"text": "x"}) + "\n")
    suite, created = add_suite(family, name="ppl", file=data, kind="perplexity", options={},
                               settings=settings)
    assert created and (suite.name, suite.version, suite.kind, suite.item_count) == (
        "ppl", 1, "perplexity", 2)
    return family


def test_suites(with_suite: RegistryBackend, settings, tmp_path):
    b = with_suite
    data = tmp_path / "ppl.jsonl"
    again, created = add_suite(b, name="ppl", file=data, kind="perplexity", options={},
                               settings=settings)
    assert (again.version, created) == (1, False)
    data.write_text(json.dumps({"text": "other"}) + "\n")
    newer, created = add_suite(b, name="ppl", file=data, kind="perplexity", options={},
                               settings=settings)
    assert (newer.version, created) == (2, True)
    assert b.get_suite("ppl", 1).item_count == 2 and b.get_suite("ppl").version == 2
    assert [(s.name, s.version) for s in b.list_suites()] == [("ppl", 2)]
    attached = b.attach_suite("ppl", AttachSuiteIn(adapter="bot"))
    assert (attached.suite, attached.adapter, attached.version, attached.created) == (
        "ppl", "bot", 2, True)
    assert b.attach_suite("ppl", AttachSuiteIn(adapter="bot")).created is False


def test_validation_round_trip(with_suite: RegistryBackend):
    b = with_suite
    queued = {j.version: j for j in b.list_jobs()}  # auto-validate queued one per push
    assert sorted(queued) == [1, 2] and {j.status for j in queued.values()} == {"queued"}
    extra = b.validate("bot", 1, ValidateIn(suites=["ppl"], priority=5))
    assert (extra.status, extra.payload["suites"], extra.priority) == ("queued", ["ppl"], 5)
    claimed = b.claim_job("w1")
    assert claimed is not None and claimed.job.id == extra.id  # the higher priority first
    assert claimed.attempt == 1 and claimed.spec["suites"][0]["name"] == "ppl"
    assert claimed.spec["base"]["name"] == "tiny-llama"
    assert {f["path"] for f in claimed.spec["adapter_files"]} >= {"adapter_config.json"}
    lease = b.heartbeat_job(extra.id, worker="w1", attempt=1)
    assert (lease.status, lease.attempt) == ("running", 1)
    with pytest.raises(errors.InvalidInput):
        b.complete_job(extra.id, worker="w1", attempt=1, report={"verdict": "maybe"})
    done = b.complete_job(extra.id, worker="w1", attempt=1, report=REPORT)
    assert (done.status, done.verdict, done.timings["fetch_s"], done.base_cache_hit) == (
        "succeeded", "validated", 0.1, False)
    version = b.get_version("bot", 1)
    assert version.status == "validated" and version.validation is not None
    assert version.validation.job == extra.id
    assert {(s.suite, s.metric): s.value for s in version.scores} == {
        ("smoke", "max_abs_delta"): 0.25, ("ppl", "perplexity"): 7.5}
    assert [(s.suite, s.metric, s.value) for s in b.base_scores("tiny-llama")] == [
        ("ppl", "perplexity", 8.0)]
    verdict = b.compat_verdict("bot", 1, base="tiny-llama")
    assert (verdict.compatible, verdict.method) == (True, "validated")

    second = b.claim_job("w2")
    assert second is not None
    b.release_job(second.job.id, worker="w2", attempt=second.attempt)
    assert b.get_job(second.job.id).status == "queued"
    third = b.claim_job("w3")
    assert third is not None and third.job.id == second.job.id
    failed = b.fail_job(third.job.id, worker="w3", attempt=third.attempt,
                        error="cannot fetch the base")
    assert (failed.status, failed.error, failed.verdict) == ("failed", "cannot fetch the base",
                                                            None)
    assert b.retry_job(failed.id).status == "queued"
    assert b.cancel_job(failed.id).status == "cancelled"


def test_asking_again_for_a_pending_validation_gets_the_same_job(with_suite: RegistryBackend):
    b = with_suite
    auto = {j.version: j for j in b.list_jobs()}[2]  # the push's own validation, no suites
    assert b.validate("bot", 2, ValidateIn()).id == auto.id
    first = b.validate("bot", 2, ValidateIn(suites=["ppl"]))
    assert first.id != auto.id  # other suites: another job
    again = b.validate("bot", 2, ValidateIn(suites=["ppl"], priority=7))
    assert (again.id, again.priority) == (first.id, 7)  # the same job, moved up the queue
    assert b.validate("bot", 2, ValidateIn(suites=["ppl"], priority=1)).priority == 7
    assert len([j for j in b.list_jobs() if j.version == 2]) == 2
    claimed = b.claim_job("w1")
    assert claimed is not None and claimed.job.id == first.id
    assert b.validate("bot", 2, ValidateIn(suites=["ppl"])).id == first.id  # running: still it
    b.fail_job(first.id, worker="w1", attempt=claimed.attempt, error="no")
    assert b.validate("bot", 2, ValidateIn(suites=["ppl"])).id != first.id  # finished: a new one


JOB_ERRORS = [
    ("no job", lambda b: b.get_job(999), errors.JobNotFound),
    ("cancel no job", lambda b: b.cancel_job(999), errors.JobNotFound),
    ("retry queued", lambda b: b.retry_job(b.list_jobs()[0].id), errors.JobStateConflict),
    ("heartbeat not held", lambda b: b.heartbeat_job(b.list_jobs()[0].id, worker="x",
                                                     attempt=1), errors.LeaseLost),
    ("no suite", lambda b: b.get_suite("nope"), errors.SuiteNotFound),
    ("attach no suite", lambda b: b.attach_suite("nope", AttachSuiteIn(adapter="bot")),
     errors.SuiteNotFound),
    ("attach no adapter", lambda b: b.attach_suite("ppl", AttachSuiteIn(adapter="nope")),
     errors.AdapterNotFound),
    ("validate no version", lambda b: b.validate("bot", 9, ValidateIn()),
     errors.VersionNotFound),
    ("validate no base", lambda b: b.validate("bot", 1, ValidateIn(base="nope")),
     errors.BaseModelNotFound),
    ("validate no suite", lambda b: b.validate("bot", 1, ValidateIn(suites=["nope"])),
     errors.SuiteNotFound),
    ("suite bad kind", lambda b: b.create_suite(CreateSuiteIn(name="s", kind="bleu",
                                                              files={"a": "sha256:" + "0" * 64})),
     errors.InvalidInput),
    ("suite no blob", lambda b: b.create_suite(CreateSuiteIn(
        name="s", kind="perplexity", files={"a.jsonl": "sha256:" + "0" * 64})),
     errors.BlobNotFound),
    ("base scores no base", lambda b: b.base_scores("nope"), errors.BaseModelNotFound),
]


def test_errors_are_the_same_classes(with_suite: RegistryBackend):
    # One scenario for every case (each builds nothing of its own): setups dominate otherwise.
    before = [(j.id, j.status) for j in with_suite.list_jobs()]
    for what, call, expected in JOB_ERRORS:
        with pytest.raises(expected) as exc:
            call(with_suite)
        assert type(exc.value) is expected, what
        assert exc.value.detail, what
    assert [(j.id, j.status) for j in with_suite.list_jobs()] == before  # nothing queued
