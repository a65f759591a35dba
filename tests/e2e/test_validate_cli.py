"""`validate`, `worker`, `jobs`, `suite` and `evals` from the command line (embedded registry):
JSON shapes, exit codes (0 validated, 6 failed, 5 timeout), and bad input refused with one line
and nothing queued."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from tests.peft_factory import save_base, save_char_tokenizer, tiny_llama

pytestmark = pytest.mark.slow


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "registry-home"
    monkeypatch.setenv("REGISTRY_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("REGISTRY_URL", "REGISTRY_DATABASE_URL", "REGISTRY_BLOB_URL"):
        monkeypatch.delenv(var, raising=False)
    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; see tests/integration/worker_helpers.py
    yield home
    torch.set_num_threads(saved)


def run(*args: str) -> tuple[int, object, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    out: object = result.stdout
    if "--json" in args and result.stdout.strip():
        out = json.loads(result.stdout)  # exactly one JSON document, also on failures
    return result.exit_code, out, result.stderr


def one_line_error(code: int, err: str, expected: int, fragment: str) -> None:
    assert code == expected, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert fragment in err and "Traceback" not in err, err


def write_jsonl(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def test_validate_wait_jobs_suites_and_evals(home, tmp_path, adapters_dir):
    base = save_char_tokenizer(save_base(tiny_llama(), tmp_path / "tiny-llama"))
    assert run("base", "register", "tiny-llama", str(base))[0] == 0
    assert run("push", "support-bot", str(adapters_dir["lora"]), "--base", "tiny-llama")[0] == 0
    assert run("push", "support-bot", str(adapters_dir["lora_v2"]), "--base", "tiny-llama",
               "--parent", "support-bot:1")[0] == 0

    texts = [{"text": "the registry keeps adapters"}, {"text": "and validates them"}]
    ppl = write_jsonl(tmp_path / "ppl.jsonl", texts)
    code, out, err = run("--json", "suite", "add", "ppl", str(ppl), "--kind", "perplexity")
    assert code == 0, err
    assert {k: out[k] for k in ("name", "version", "kind")} == {
        "name": "ppl", "version": 1, "kind": "perplexity"}
    code, out, _ = run("--json", "suite", "add", "ppl", str(ppl), "--kind", "perplexity")
    assert (code, out["version"], out["created"]) == (0, 1, False)  # same content
    code, out, _ = run("--json", "suite", "attach", "ppl", "support-bot")
    assert code == 0 and (out["suite"], out["adapter"], out["version"]) == (
        "ppl", "support-bot", 1)

    code, jobs, _ = run("--json", "jobs", "list")
    assert code == 0 and len(jobs) == 2  # one validation queued with each push
    assert {k for k in jobs[0]} >= {"id", "kind", "status", "attempts", "name", "version",
                                    "base"}
    assert [(j["name"], j["version"], j["status"]) for j in jobs] == [
        ("support-bot", 2, "queued"), ("support-bot", 1, "queued")]  # newest first

    # Nothing runs the queue yet: --wait gives up with exit 5, and says so on one line.
    code, out, err = run("--json", "validate", "support-bot:1", "--wait", "--timeout", "0.3")
    one_line_error(code, err, 5, "timed out")
    assert {k: out[k] for k in ("name", "version", "status")} == {
        "name": "support-bot", "version": 1, "status": "queued"}
    # ... on the validation the push queued: asking again queues nothing new.
    assert out["job"] == next(j["id"] for j in jobs if j["version"] == 1)
    assert len(run("--json", "jobs", "list")[1]) == 2

    code, out, err = run("--json", "worker", "--once", "--device", "cpu")
    assert code == 0, err
    assert sorted(j["status"] for j in out["jobs"]) == ["succeeded"] * 2

    code, job, _ = run("--json", "jobs", "show", str(jobs[0]["id"]))
    assert code == 0 and (job["status"], job["verdict"]) == ("succeeded", "validated")
    assert set(job["timings"]) >= {"fetch_s", "base_load_s", "attach_s", "eval_s", "detach_s"}
    assert isinstance(job["base_cache_hit"], bool) and job["error"] is None
    assert job["result"]["load"]["applied_tensors"] == 8

    # A worker in the background: --wait sees the outcome as it lands.
    from registry.clientside.worker.loop import Worker
    from registry.config import Settings
    from registry.local import LocalRegistry

    backend = LocalRegistry(Settings())
    background = Worker(backend=backend, settings=Settings(), device="cpu",
                        log=lambda _: None)
    thread = threading.Thread(target=background.run, daemon=True)
    thread.start()
    try:
        code, out, err = run("--json", "validate", "support-bot:2", "--wait", "--timeout", "300")
        assert code == 0, err
        assert {k: out[k] for k in ("name", "version", "status")} == {
            "name": "support-bot", "version": 2, "status": "validated"}
        assert {(s["suite"], s["metric"]) for s in out["scores"]} >= {
            ("ppl", "perplexity"), ("smoke", "max_abs_delta"), ("smoke", "applied_tensors")}

        assert run("push", "zero-bot", str(zero_adapter(adapters_dir, tmp_path)),
                   "--base", "tiny-llama")[0] == 0
        code, out, err = run("--json", "validate", "zero-bot", "--wait", "--timeout", "300")
        one_line_error(code, err, 6, "the adapter does not change the model's outputs")
        assert (out["status"], out["verdict"]) == ("failed", "failed")
        failed_job = out["job"]
    finally:
        background.stopping.set()
        thread.join(timeout=120)
        backend.close()

    code, shown, _ = run("--json", "show", "support-bot:2")
    assert code == 0 and shown["status"] == "validated"
    validation = shown["validation"]
    assert {"job", "reasons", "device", "timings"} <= set(validation)
    assert validation["device"] == "cpu" and validation["reasons"] == []
    assert {"suite", "metric", "value", "base", "source"} <= set(shown["scores"][0])
    code, shown, _ = run("--json", "show", "zero-bot")
    assert shown["status"] == "failed" and shown["validation"]["reasons"]

    code, cmp, _ = run("--json", "evals", "support-bot:2")
    assert code == 0 and cmp["other"] == "support-bot:1" and cmp["base"] == "tiny-llama"
    rows = {(r["suite"], r["metric"]): r for r in cmp["rows"]}
    row = rows[("ppl", "perplexity")]
    assert row["other"] is not None and row["base"] is not None and row["better"] == "lower"
    assert row["delta_other"] == pytest.approx(row["value"] - row["other"])
    assert row["delta_base"] == pytest.approx(row["value"] - row["base"])
    code, cmp, _ = run("--json", "evals", "support-bot:2", "--compare", "zero-bot")
    assert code == 0 and cmp["other"] == "zero-bot:1"
    code, text, _ = run("evals", "support-bot:2")
    assert code == 0 and "ppl.perplexity" in text and "support-bot:1" in text

    # cancel and retry
    code, _, err = run("jobs", "cancel", str(failed_job))
    one_line_error(code, err, 4, "already failed")
    code, out, _ = run("--json", "jobs", "retry", str(failed_job))
    assert code == 0 and (out["status"], out["attempts"]) == ("queued", 0)
    code, out, _ = run("--json", "jobs", "cancel", str(failed_job))
    assert code == 0 and out["status"] == "cancelled"
    assert run("--json", "show", "zero-bot")[1]["status"] == "failed"  # as before the retry
    code, out, _ = run("--json", "jobs", "list", "--status", "cancelled")
    assert [j["id"] for j in out] == [failed_job]


def zero_adapter(adapters_dir, tmp_path: Path) -> Path:
    from tests.integration.worker_helpers import variant, zero_lora_b

    return variant(adapters_dir["lora"], tmp_path / "zero", zero_lora_b)


def test_bad_input_is_refused_and_nothing_is_queued(home, tmp_path, adapters_dir, base_dirs):
    assert run("base", "register", "tiny-llama", str(base_dirs["llama"]))[0] == 0
    assert run("push", "bot", str(adapters_dir["lora"]), "--base", "tiny-llama")[0] == 0
    # A statically incompatible pair: registered with its verdict, not queued.
    assert run("push", "gpt-bot", str(adapters_dir["gpt2_lora"]), "--base", "tiny-llama")[0] == 0
    queued = len(run("--json", "jobs", "list")[1])
    assert queued == 1

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": oops}\n')
    cls = write_jsonl(tmp_path / "cls.jsonl", [{"text": "t", "label": 0}])
    assert run("suite", "add", "cls", str(cls), "--kind", "classify")[0] == 0
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cases = [
        (("suite", "add", "s", str(bad), "--kind", "perplexity"), 1, "bad.jsonl line 2"),
        (("suite", "add", "s", str(empty), "--kind", "perplexity"), 1, "is empty"),
        (("suite", "add", "s", str(cls), "--kind", "bleu"), 1, "unknown suite kind 'bleu'"),
        (("suite", "add", "s", str(tmp_path / "nope.jsonl"), "--kind", "perplexity"), 1,
         "is not a file"),
        (("suite", "add", "Bad.Name", str(cls), "--kind", "classify"), 1, "invalid suite name"),
        (("suite", "add", "s", str(cls), "--kind", "classify", "--option", "x=1"), 1,
         "has no option 'x'"),
        (("suite", "attach", "nope", "bot"), 3, "no eval suite 'nope'"),
        (("suite", "attach", "cls", "bot"), 1, "needs a sequence classifier"),
        (("validate", "nope:1"), 3, "no adapter 'nope'"),
        (("validate", "bot:9"), 3, "no version bot:9"),
        (("validate", "bot", "--base", "nope"), 3, "no base model 'nope'"),
        (("validate", "gpt-bot"), 1, "is not compatible with tiny-llama"),
        (("validate", "bot", "--suite", "cls"), 1, "needs a sequence classifier"),
        (("validate", "bot", "--suite", "nope"), 3, "no eval suite 'nope'"),
        (("validate", "bot@production"), 3, "no alias 'production' on adapter 'bot'"),
        (("validate", "bot@Bad!"), 1, "alias"),
        (("jobs", "show", "999"), 3, "no job 999"),
        (("jobs", "cancel", "999"), 3, "no job 999"),
        (("eval", "record", "bot", "--suite", "ci", "acc=fast"), 1, "must be a number"),
        (("eval", "record", "bot", "--suite", "ci", "acc=nan"), 1, "must be finite"),
    ]
    for args, expected, fragment in cases:
        code, _, err = run(*args)
        one_line_error(code, err, expected, fragment)
    assert len(run("--json", "jobs", "list")[1]) == queued
    assert [s["name"] for s in run("--json", "suite", "list")[1]] == ["cls"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_worker_device_cuda_without_cuda(home):
    code, _, err = run("worker", "--once", "--device", "cuda")
    one_line_error(code, err, 1, "--device cuda: no CUDA device is available")
