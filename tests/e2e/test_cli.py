"""The `adapter-registry` CLI end to end: embedded registry, HTTP server, errors and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.integration.helpers import file_size_limit, read_dir, start_server, stop_server


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "registry-home"
    monkeypatch.setenv("REGISTRY_HOME", str(home))
    for var in ("REGISTRY_URL", "REGISTRY_DATABASE_URL", "REGISTRY_BLOB_URL"):
        monkeypatch.delenv(var, raising=False)
    return home


def substitute(args: list[str], subs: dict[str, str]) -> list[str]:
    out = []
    for a in args:
        for k, v in subs.items():
            a = a.replace(k, v)
        out.append(a)
    return out


def assert_one_line_error(exit_code: int, err: str, *, code: int, fragment: str) -> None:
    assert exit_code == code, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert fragment in err and "Traceback" not in err, err


def run(*args: str) -> tuple[int, object, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    out = result.stdout
    parsed = None
    if "--json" in args and result.exit_code == 0:
        parsed = json.loads(out)  # exactly one JSON document
    return result.exit_code, parsed if parsed is not None else out, result.stderr


def test_embedded_push_list_show_pull(home, adapters_dir, tmp_path, base_dirs):
    code, out, err = run("--json", "base", "register", "tiny-llama", str(base_dirs["llama"]))
    assert code == 0, err
    assert out["name"] == "tiny-llama" and out["fingerprint"].startswith("sha256:")
    code, out, err = run("--json", "push", "support-bot", str(adapters_dir["lora"]),
                         "--base", "tiny-llama", "--meta", "dataset=tickets-v3")
    assert code == 0, err
    assert {k: out[k] for k in ("name", "version", "status")} == {
        "name": "support-bot", "version": 1, "status": "registered"}
    code, out, _ = run("--json", "push", "support-bot", str(adapters_dir["lora_v2"]))
    assert (code, out["version"]) == (0, 2)
    assert (home / "registry.db").exists() and (home / "blobs").is_dir()

    code, out, _ = run("--json", "list")
    assert code == 0 and [(a["name"], a["latest_version"]) for a in out] == [("support-bot", 2)]
    code, out, _ = run("--json", "list", "support-bot")
    assert [v["version"] for v in out] == [1, 2]

    code, out, _ = run("--json", "show", "support-bot:1")
    assert code == 0
    assert out["metadata"] == {"dataset": "tickets-v3"} and out["base_model"] == "tiny-llama"
    assert {f["path"] for f in out["files"]} == set(read_dir(adapters_dir["lora"]))
    code, out, _ = run("--json", "show", "support-bot")
    assert out["version"] == 2
    code, out, _ = run("show", "support-bot:1", "--json")  # --json after the command works too
    assert code == 0 and out["version"] == 1

    dest = tmp_path / "pulled"
    code, out, _ = run("--json", "pull", "support-bot:1", str(dest))
    assert code == 0 and out["version"] == 1
    assert read_dir(dest) == read_dir(adapters_dir["lora"])

    code, text, _ = run("show", "support-bot:2")
    assert code == 0 and "support-bot:2" in text


def test_pulled_adapter_loads_with_peft(home, adapters_dir, tmp_path):
    import torch
    from peft import PeftModel

    from tests.peft_factory import tiny_llama

    assert run("push", "loadable", str(adapters_dir["lora"]))[0] == 0
    dest = tmp_path / "pulled"
    assert run("pull", "loadable:1", str(dest))[0] == 0
    inputs = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        original = PeftModel.from_pretrained(tiny_llama(), str(adapters_dir["lora"]))
        pulled = PeftModel.from_pretrained(tiny_llama(), str(dest))
        plain = tiny_llama()
        a, b, c = (m(inputs).logits for m in (original, pulled, plain))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)  # the adapter really changes the model


def test_cli_over_http(live_server, adapters_dir, tmp_path):
    code, out, err = run("--url", live_server.url, "--json", "push", "team/remote-bot",
                         str(adapters_dir["ia3"]), "--idempotency-key", "build-1")
    assert code == 0, err
    assert out["version"] == 1
    code, out, _ = run("--url", live_server.url, "--json", "push", "team/remote-bot",
                       str(adapters_dir["ia3"]), "--idempotency-key", "build-1")
    assert (out["version"], out["created"]) == (1, False)
    code, _, err = run("--url", live_server.url, "push", "team/remote-bot",
                       str(adapters_dir["lora"]), "--idempotency-key", "build-1")
    assert code == 4 and err.startswith("error: ") and err.count("\n") == 1
    dest = tmp_path / "remote"
    code, out, _ = run("--url", live_server.url, "--json", "pull", "team/remote-bot:1", str(dest))
    assert code == 0 and read_dir(dest) == read_dir(adapters_dir["ia3"])


def _pickle_dir(tmp_path: Path, adapters_dir) -> Path:
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "adapter_config.json").write_bytes((adapters_dir["lora"] / "adapter_config.json")
                                            .read_bytes())
    (d / "adapter_model.bin").write_bytes(b"\x80\x04.")
    return d


@pytest.mark.parametrize(("args", "code", "fragment"), [
    (["pull", "ghost:1", "{tmp}/x"], 3, "no adapter 'ghost'"),
    (["show", "Bad Name"], 1, "invalid reference"),
    (["show", "bot:zero"], 1, "invalid version"),
    (["lineage", "ghost:1"], 3, "no adapter 'ghost'"),
    (["lineage", "Bad Name"], 1, "invalid reference"),
    (["lineage", "bot@Production"], 1, "invalid alias"),
    (["show", "bot@production"], 3, "no adapter 'bot'"),
    (["push", "bot", "{tmp}/does-not-exist"], 1, "not a directory"),
    (["push", "Bad_Name", "{lora}"], 1, "invalid adapter name"),
    (["push", "bot", "{lora}", "--meta", "novalue"], 1, "key=value"),
    (["push", "bot", "{lora}", "--parent", "bot"], 1, "NAME:VERSION"),
    (["push", "bot", "{pickle}"], 1, "safetensors"),
    (["push", "bot", "{empty}"], 1, "adapter_config.json"),
])
def test_cli_errors_are_one_line(home, adapters_dir, tmp_path, args, code, fragment):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = substitute(args, {"{tmp}": str(tmp_path), "{lora}": str(adapters_dir["lora"]),
                             "{pickle}": str(_pickle_dir(tmp_path, adapters_dir)),
                             "{empty}": str(empty)})
    exit_code, _, err = run(*argv)
    assert_one_line_error(exit_code, err, code=code, fragment=fragment)
    if argv[0] == "push":
        assert run("--json", "list")[1] == []


def test_pull_into_a_non_empty_directory(home, adapters_dir, tmp_path):
    assert run("push", "bot", str(adapters_dir["lora"]))[0] == 0
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    code, _, err = run("pull", "bot:1", str(dest))
    assert_one_line_error(code, err, code=1, fragment="not empty")
    assert "--force" in err and read_dir(dest) == {"notes.txt": b"mine"}
    code, out, err = run("--json", "pull", "bot:1", str(dest), "--force")
    assert code == 0, err
    assert read_dir(dest) == read_dir(adapters_dir["lora"]) and sorted(out["files"]) == sorted(
        read_dir(adapters_dir["lora"]))


def test_lineage_command_embedded_and_over_http(home, adapters_dir, live_server):
    for url in ([], ["--url", live_server.url]):
        assert run(*url, "push", "bot", str(adapters_dir["lora"]))[0] == 0
        assert run(*url, "push", "bot", str(adapters_dir["lora_v2"]), "--parent", "bot:1")[0] == 0
        assert run(*url, "push", "fork", str(adapters_dir["ia3"]), "--parent", "bot:2")[0] == 0
        assert run(*url, "push", "bot", str(adapters_dir["dora"]), "--parent", "bot:1")[0] == 0

        code, out, err = run(*url, "--json", "lineage", "bot:1")
        assert code == 0, err
        assert out["ref"] == "bot:1" and out["ancestors"] == [] and not out["truncated"]
        assert [(n["ref"], n["depth"]) for n in out["descendants"]] == [
            ("bot:2", 1), ("bot:3", 1), ("fork:1", 2)]
        code, out, _ = run(*url, "lineage", "fork", "--json")  # NAME: the latest version
        assert [n["ref"] for n in out["ancestors"]] == ["bot:2", "bot:1"]

        code, text, _ = run(*url, "lineage", "bot:1")
        assert code == 0
        lines = [line.strip() for line in text.splitlines()]
        assert lines[0] == "ancestors: none (a root version)"
        # Printed as a tree: fork:1 right under its parent bot:2, then bot:3.
        order = [line.split()[0] for line in lines if line.startswith(("bot:", "fork:"))]
        assert order == ["bot:1", "bot:2", "fork:1", "bot:3"]
        assert any(line.startswith("fork:1") and "child of bot:2" in line for line in lines)
        code, _, err = run(*url, "lineage", "bot:9")
        assert_one_line_error(code, err, code=3, fragment="no version bot:9")


def test_console_script_unreachable_server_is_one_line(tmp_path):
    env = {**os.environ, "REGISTRY_HOME": str(tmp_path)}
    exe = Path(sys.executable).with_name("adapter-registry")
    proc = subprocess.run([str(exe), "--url", "http://127.0.0.1:9", "list"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 5
    assert proc.stderr.startswith("error: cannot reach the registry") and (
        proc.stderr.count("\n") == 1)
    assert proc.stdout == ""


def test_gc_command(home, adapters_dir):
    assert run("push", "bot", str(adapters_dir["lora"]))[0] == 0
    code, out, _ = run("--json", "gc", "--grace", "0")
    assert code == 0 and out["removed"] == []  # everything is referenced
    code, out, _ = run("--json", "db", "upgrade")
    assert code == 0 and out["revision"]


def test_unreachable_database_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("REGISTRY_HOME", str(tmp_path))
    monkeypatch.setenv("REGISTRY_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:9/none")
    code, _, err = run("list")
    assert code == 5 and err.startswith("error: database unavailable") and err.count("\n") == 1


def test_base_and_compat_commands(home, adapters_dir, base_dirs, tmp_path):
    code, out, err = run("--json", "base", "register", "tiny-gpt2", str(base_dirs["gpt2"]))
    assert code == 0, err
    code, out, _ = run("--json", "base", "register", "tiny-gpt2", str(base_dirs["gpt2"]))
    assert out["created"] is False and out["uploaded"] == []
    code, listed, _ = run("--json", "base", "list")
    assert [b["name"] for b in listed] == ["tiny-gpt2"]
    code, shown, _ = run("--json", "base", "show", "tiny-gpt2")
    assert shown["model_type"] == "gpt2" and shown["fingerprint"] == out["fingerprint"]

    assert run("push", "g", str(adapters_dir["gpt2_lora"]), "--base", "tiny-gpt2")[0] == 0
    code, _, err = run("push", "l", str(adapters_dir["lora"]), "--base", "tiny-gpt2")
    assert code == 0 and err.startswith("warning: l:1 is not compatible with base tiny-gpt2")

    code, verdict, _ = run("--json", "compat", "g:1", "--base", "tiny-gpt2")
    assert code == 0 and verdict["compatible"] is True
    code, verdict, _ = run("--json", "compat", "l:1", "--base", "tiny-gpt2")
    assert verdict["compatible"] is False and verdict["reasons"]
    code, text, _ = run("compat", "l:1", "--base", "tiny-gpt2")
    assert "INCOMPATIBLE" in text and "reason:" in text
    code, found, _ = run("--json", "compat", "--base", "tiny-gpt2")
    assert found == [{"name": "g", "version": 1}]
    code, found, _ = run("--json", "compat", "g")
    assert [b["name"] for b in found] == ["tiny-gpt2"]


@pytest.mark.parametrize(("args", "code", "fragment"), [
    (["base", "register", "b", "{tmp}/missing"], 1, "not a directory"),
    (["base", "register", "b", "{empty}"], 1, "no config.json"),
    (["base", "register", "b", "hf://acme/not-cached"], 1, "not in the local Hugging Face cache"),
    (["base", "register", "B!", "{empty}"], 1, "invalid base model name"),
    (["base", "show", "nope"], 3, "base register nope"),
    (["compat"], 1, "give REF"),
    (["compat", "x:1", "--base", "nope"], 3, "no adapter"),
    (["push", "x", "{lora}", "--base", "nope"], 3, "base register nope"),
])
def test_base_errors_are_one_line(home, adapters_dir, tmp_path, monkeypatch, args, code,
                                  fragment):
    monkeypatch.setenv("REGISTRY_HF_OFFLINE", "true")
    monkeypatch.setenv("REGISTRY_HF_CACHE_DIR", str(tmp_path / "hf"))
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = substitute(args, {"{tmp}": str(tmp_path), "{empty}": str(empty),
                             "{lora}": str(adapters_dir["lora"])})
    exit_code, _, err = run(*argv)
    assert_one_line_error(exit_code, err, code=code, fragment=fragment)
    assert run("--json", "base", "list")[1] == []


def test_embedded_push_of_a_big_new_file(home, tmp_path):
    from tests.integration.helpers import big_lora_dir

    src = big_lora_dir(tmp_path / "big", seed=7)
    code, out, err = run("--json", "push", "big", str(src))
    assert code == 0, err
    assert sorted(out["uploaded"]) == ["adapter_config.json", "adapter_model.safetensors"]
    code, out, err = run("--json", "push", "big-copy", str(src))
    assert code == 0 and out["uploaded"] == [], err  # hashed first this time: stored already
    code, _, err = run("--json", "pull", "big-copy:1", str(tmp_path / "out"))
    assert code == 0, err
    assert read_dir(tmp_path / "out") == read_dir(src)
    blobs = [p for p in (home / "blobs" / "sha256").rglob("*") if p.is_file()]
    assert len(blobs) == 2  # config + weights, each stored once


def _pull_onto_a_full_disk(url: list[str], home: Path, tmp_path: Path) -> None:
    """A local write that fails mid-pull (a file size limit, as on a full disk) is reported as
    what it is, a local write failure naming the file (exit 1), not as an unreachable registry,
    and no file or temporary file is left behind."""
    from tests.integration.helpers import big_lora_dir

    src = big_lora_dir(tmp_path / "big", seed=11)
    assert run(*url, "push", "big", str(src))[0] == 0
    # The weights file is 10.5 MB; the database files stay far below the limit.
    limited = file_size_limit(1024 * 1024)

    dest = tmp_path / "pulled"
    exe = Path(sys.executable).with_name("adapter-registry")
    proc = subprocess.run([str(exe), *url, "pull", "big:1", str(dest)], capture_output=True,
                          text=True, timeout=120, preexec_fn=limited,
                          env={**os.environ, "REGISTRY_HOME": str(home)})
    target = dest / "adapter_model.safetensors"
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == f"error: pull failed: File too large: {target}\n"
    assert not target.exists()
    # Staged beside the destination and installed only when complete: neither exists now.
    assert not dest.exists()
    assert not [p for p in dest.parent.iterdir() if p.name.endswith(".partial")]


def test_embedded_pull_onto_a_full_disk(home, tmp_path):
    _pull_onto_a_full_disk([], home, tmp_path)


def test_pull_over_http_onto_a_full_disk(home, tmp_path, live_server):
    _pull_onto_a_full_disk(["--url", live_server.url], home, tmp_path)


def test_a_full_blob_store_is_507_and_stores_nothing(tmp_path):
    """The server's disk fills up during an upload (a file size limit on the server process):
    507 insufficient_storage with a JSON error, a one-line CLI error (exit 5), no version, and
    no temporary file left in the store."""

    import httpx

    from tests.integration.helpers import big_lora_dir

    home = tmp_path / "server-home"
    server, url = start_server({**os.environ, "REGISTRY_HOME": str(home)}, "--host", "127.0.0.1",
                               preexec_fn=file_size_limit(4 << 20))
    try:

        src = big_lora_dir(tmp_path / "big", seed=5)  # a 10.5 MB weights file
        code, _, err = run("--url", url, "push", "big", str(src))
        assert_one_line_error(code, err, code=5, fragment="File too large")
        response = httpx.put(f"{url}/api/v1/blobs/sha256:{'0' * 64}", content=b"x" * (6 << 20))
        assert response.status_code == 507
        assert response.json()["error"] == "insufficient_storage"
        assert run("--url", url, "--json", "list")[1] == []
        assert [p for p in (home / "blobs").rglob("*") if p.is_file()] == []
    finally:
        stop_server(server)


def test_eval_record_and_evals(home, adapters_dir):
    assert run("push", "bot", str(adapters_dir["lora"]))[0] == 0
    code, out, err = run("--json", "eval", "record", "bot:1", "--suite", "ppl",
                         "perplexity=9.81", "accuracy=0.5")
    assert code == 0, err
    assert [(s["suite"], s["metric"], s["value"], s["source"]) for s in out["scores"]] == [
        ("ppl", "accuracy", 0.5, "ci"), ("ppl", "perplexity", 9.81, "ci")]
    code, out, err = run("--json", "evals", "bot")
    assert code == 0 and {s["metric"] for s in out["scores"]} == {"accuracy", "perplexity"}
    code, out, err = run("evals", "bot:1")
    assert code == 0 and "ppl.perplexity\t9.81" in out
    for args, fragment in ((["perplexity=nan"], "finite"), (["perplexity=fast"], "number"),
                           (["perplexity"], "metric=value"), ([], "metric=value")):
        code, _, err = run("eval", "record", "bot:1", "--suite", "ppl", *args)
        assert_one_line_error(code, err, code=1, fragment=fragment)
    code, _, err = run("eval", "record", "bot:9", "--suite", "ppl", "x=1")
    assert_one_line_error(code, err, code=3, fragment="no version")
    code, out, _ = run("--json", "show", "bot:1")
    assert len(out["scores"]) == 2  # the refused records stored nothing
