"""Merged export through the registry: compat gate, streaming merge, upload, reuse, pull."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from registry import errors
from registry.client import HttpRegistry
from registry.clientside.export import export
from registry.clientside.transfer import push, register_base_dir
from tests.integration.helpers import file_size_limit, read_dir


def _logits(model, inputs):
    with torch.no_grad():
        return model(inputs).logits


@pytest.fixture
def registered(http: HttpRegistry, settings, base_dirs, adapters_dir):
    register_base_dir(http, name="tiny-llama", directory=base_dirs["llama"], settings=settings)
    push(http, name="bot", directory=adapters_dir["lora"], settings=settings,
         base_model="tiny-llama")
    return http


def test_export_equals_peft_and_is_recorded(registered, settings, base_dirs, adapters_dir,
                                            tmp_path, live_server):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    result = export(registered, ref="bot:1", base="tiny-llama", out=out, settings=settings,
                    upload=True, max_shard_bytes=20_000)
    assert not result.reused and result.shards and result.shards > 1
    assert (out / "model.safetensors.index.json").exists()
    for f in result.files:
        data = (out / f["path"]).read_bytes()
        assert f["digest"] == f"sha256:{hashlib.sha256(data).hexdigest()}"

    inputs = torch.tensor([[1, 7, 42, 99, 3]])
    merged = AutoModelForCausalLM.from_pretrained(out)
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dirs["llama"]), str(adapters_dir["lora"])
    )
    assert torch.allclose(_logits(merged, inputs), _logits(peft_model, inputs), atol=1e-4)

    version = registered.get_version("bot", 1)
    assert [(e.base, e.dtype) for e in version.exports] == [("tiny-llama", result.dtype)]

    again = export(registered, ref="bot:1", base="tiny-llama", out=tmp_path / "again",
                   settings=settings, upload=True)
    assert again.reused and read_dir(tmp_path / "again") == read_dir(out)

    # Referenced by the export, its blobs survive garbage collection.
    registered.gc(grace_seconds=0, dry_run=False)
    third = export(registered, ref="bot:1", base="tiny-llama", out=tmp_path / "third",
                   settings=settings, upload=True)
    assert third.reused and read_dir(tmp_path / "third") == read_dir(out)


def test_export_refuses_incompatible_and_unmergeable(http: HttpRegistry, settings, base_dirs,
                                                     adapters_dir, tmp_path):
    register_base_dir(http, name="tiny-gpt2", directory=base_dirs["gpt2"], settings=settings)
    register_base_dir(http, name="tiny-llama", directory=base_dirs["llama"], settings=settings)
    push(http, name="llama-bot", directory=adapters_dir["lora"], settings=settings)
    push(http, name="prompt", directory=adapters_dir["prompt_tuning"], settings=settings)
    out = tmp_path / "never"
    with pytest.raises(errors.Unmergeable) as exc:
        export(http, ref="llama-bot:1", base="tiny-gpt2", out=out, settings=settings)
    assert "not compatible" in exc.value.detail
    with pytest.raises(errors.Unmergeable):
        export(http, ref="prompt:1", base="tiny-llama", out=out, settings=settings)
    assert not out.exists()
    assert http.get_version("llama-bot", 1).exports == []
    with pytest.raises(errors.VersionNotFound):
        export(http, ref="llama-bot:9", base="tiny-llama", out=out, settings=settings)
    with pytest.raises(errors.BaseModelNotFound):
        export(http, ref="llama-bot:1", base="nope", out=out, settings=settings)


def test_export_into_non_empty_directory(registered, settings, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(errors.InvalidInput) as exc:
        export(registered, ref="bot:1", base="tiny-llama", out=out, settings=settings)
    assert "--force" in exc.value.detail and (out / "keep.txt").exists()
    result = export(registered, ref="bot:1", base="tiny-llama", out=out, settings=settings,
                    force=True, dtype="bfloat16")
    assert result.dtype == "bfloat16" and not (out / "keep.txt").exists()


def test_export_from_hf_cache_base(http: HttpRegistry, settings, base_dirs, adapters_dir,
                                   tmp_path):
    from registry.base_models.schemas import RegisterBaseIn
    from tests.integration.test_base_models import _hf_cache

    commit = "89abcdef0123456789abcdef0123456789abcdef"
    files = {p.name: p.read_bytes() for p in base_dirs["llama"].iterdir()}
    settings.hf_cache_dir = _hf_cache(tmp_path / "hf", "acme/tiny-llama", files, commit)
    settings.hf_offline = True
    settings.base_sources = "hf://acme/"
    http.register_base(RegisterBaseIn(name="hf-llama", source="hf://acme/tiny-llama"))
    push(http, name="bot", directory=adapters_dir["dora"], settings=settings,
         base_model="hf-llama")
    out = tmp_path / "merged"
    result = export(http, ref="bot:1", base="hf-llama", out=out, settings=settings)
    assert result.merged_modules and (out / "config.json").exists()


def test_export_cli(home_with_registry, tmp_path):
    run, _ = home_with_registry
    code, out, err = run("--json", "export", "bot:1", "--base", "tiny-llama", "--out",
                         str(tmp_path / "m"), "--upload")
    assert code == 0, err
    assert set(out) >= {"out", "files"} and any(f["path"] == "config.json" for f in out["files"])
    code, _, err = run("--json", "pull", "bot:1", str(tmp_path / "p"), "--export-base",
                            "tiny-llama")
    assert code == 0, err
    assert read_dir(tmp_path / "p") == read_dir(tmp_path / "m")
    # The recorded export is listed with the version and in its lineage.
    code, text, _ = run("show", "bot:1")
    assert code == 0 and "exports (merged checkpoints):" in text
    export_lines = [line for line in text.splitlines() if line.strip().startswith("tiny-llama@")]
    assert len(export_lines) == 1 and "float32" in export_lines[0]
    code, text, _ = run("lineage", "bot:1")
    assert code == 0 and "export: tiny-llama@" in text
    code, _, err = run("export", "bot:1", "--base", "tiny-llama", "--out", str(tmp_path / "m"))
    assert code == 1 and "--force" in err and err.count("\n") == 1
    code, _, err = run("pull", "bot:1", str(tmp_path / "q"), "--export-base", "other")
    assert code == 3 and err.count("\n") == 1


def test_export_console_script(home_with_registry, tmp_path):
    """The installed command in its own process (it ends through
    registry.clientside.process.exit_process once torch is loaded): complete JSON on stdout,
    exit codes, one-line errors."""
    _, home = home_with_registry
    exe = Path(sys.executable).with_name("adapter-registry")
    env = {**os.environ, "REGISTRY_HOME": str(home)}
    argv = [str(exe), "--json", "export", "bot:1", "--base", "tiny-llama", "--out",
            str(tmp_path / "m")]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert {f["path"] for f in out["files"]} == set(read_dir(tmp_path / "m"))
    again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr.startswith("error: ") and again.stderr.count("\n") == 1
    assert "--force" in again.stderr


@pytest.fixture
def home_with_registry(tmp_path, monkeypatch, base_dirs, adapters_dir):
    from tests.e2e.test_cli import run

    monkeypatch.setenv("REGISTRY_HOME", str(tmp_path / "home"))
    for var in ("REGISTRY_URL", "REGISTRY_DATABASE_URL", "REGISTRY_BLOB_URL"):
        monkeypatch.delenv(var, raising=False)
    assert run("base", "register", "tiny-llama", str(base_dirs["llama"]))[0] == 0
    assert run("push", "bot", str(adapters_dir["lora"]), "--base", "tiny-llama")[0] == 0
    return run, Path(tmp_path / "home")


def test_export_that_cannot_write_leaves_nothing_and_records_nothing(home_with_registry,
                                                                      tmp_path, base_dirs):
    """A write that fails mid-export (here: a file size limit, as on a full disk): one line,
    non-zero exit, no output directory, no temporary directory left, no export recorded."""
    run, home = home_with_registry
    shard = max(p.stat().st_size for p in base_dirs["llama"].glob("*.safetensors"))
    exe = Path(sys.executable).with_name("adapter-registry")
    env = {**os.environ, "REGISTRY_HOME": str(home)}
    out = tmp_path / "exports" / "merged"
    out.parent.mkdir()
    proc = subprocess.run(
        [str(exe), "export", "bot:1", "--base", "tiny-llama", "--out", str(out), "--upload"],
        capture_output=True, text=True, env=env, timeout=300,
        preexec_fn=file_size_limit(shard // 2),
    )
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr == f"error: export failed: File too large: {out}\n"
    assert list(out.parent.iterdir()) == []  # neither the output nor a .partial directory
    code, version, _ = run("--json", "show", "bot:1")
    assert code == 0 and version["exports"] == []
    # With room to write, the same export goes through and is recorded.
    code, _, err = run("export", "bot:1", "--base", "tiny-llama", "--out", str(out), "--upload")
    assert code == 0, err
    assert run("--json", "show", "bot:1")[1]["exports"]
