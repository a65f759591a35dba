"""Merged export through the registry: compat gate, streaming merge, upload, reuse, pull."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

from registry import errors
from registry.client import HttpRegistry
from registry.clientside.export import export
from registry.clientside.transfer import push, register_base_dir
from tests.integration.helpers import digest_of, file_size_limit, read_dir


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
    assert result.export is not None
    assert (result.export.provenance, result.export.created_by) == ("anonymous", None)

    # Recorded anonymously (no tokens yet), the export is nobody's in particular: a client does
    # not reuse it, it merges again, and uploading the same files finds the same record.
    again = export(registered, ref="bot:1", base="tiny-llama", out=tmp_path / "again",
                   settings=settings, upload=True, max_shard_bytes=20_000)
    assert not again.reused and again.untrusted == ["anonymous"]
    assert read_dir(tmp_path / "again") == read_dir(out)
    assert again.export is not None and again.export.created_at == result.export.created_at
    # One export.created event, for the one record (the second upload found it).
    created = [e for e in registered.list_events(limit=1000).events if e.type == "export.created"]
    assert [(e.adapter, e.version) for e in created] == [("bot", 1)]

    # Referenced by the export, its blobs survive garbage collection.
    registered.gc(grace_seconds=0, dry_run=False)
    [recorded] = registered.list_exports("bot", 1, base="tiny-llama")
    from registry.clientside.export import pull_export

    pull_export(registered, recorded, tmp_path / "third", force=False, progress=None)
    assert read_dir(tmp_path / "third") == read_dir(out)


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
    # Recorded by the embedded registry itself: exporting again reuses it, and says whose.
    code, again, err = run("--json", "export", "bot:1", "--base", "tiny-llama", "--out",
                           str(tmp_path / "m2"))
    assert code == 0, err
    assert again["reused"] is True and again["untrusted_exports"] == []
    assert again["reused_export"]["provenance"] == "embedded"
    assert again["reused_export"]["trusted_because"] == "recorded by this embedded registry"
    assert read_dir(tmp_path / "m2") == read_dir(tmp_path / "m")
    code, text, err = run("export", "bot:1", "--base", "tiny-llama", "--out", str(tmp_path / "m3"))
    assert code == 0 and "reused the export recorded by embedded at " in text, err
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


# --- what an export record may hold, and whose records a client reuses -----------------------


def _post_export(url: str, files: dict[str, bytes], *, dtype: str = "float32",
                 base_revision: str) -> httpx.Response:
    for data in files.values():
        assert httpx.put(f"{url}/api/v1/blobs/{digest_of(data)}", content=data).status_code in (
            200, 201)
    return httpx.post(f"{url}/api/v1/exports", json={
        "name": "bot", "version": 1, "base": "tiny-llama", "base_revision": base_revision,
        "dtype": dtype, "files": {p: digest_of(d) for p, d in files.items()}}, timeout=60)


def _st(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()})


def _truncate(data: bytes) -> bytes:
    return data[:-4]


def _planted_cases(base: dict[str, bytes]) -> list[tuple[str, dict[str, bytes], str, str]]:
    from safetensors.torch import load

    tensors = load(base["model.safetensors"])
    first = sorted(tensors)[0]
    reshaped = {**tensors, first: torch.zeros(3, 3)}
    evil = {"evil.weight": torch.zeros(2, 2)}
    index = {"metadata": {}, "weight_map": {n: "model-00001-of-00001.safetensors"
                                            for n in sorted(tensors)[1:]}}
    return [
        ("unrelated tensors", {**base, "model.safetensors": _st(evil)}, "float32",
         "invalid_export"),
        ("a tensor of another shape", {**base, "model.safetensors": _st(reshaped)}, "float32",
         "invalid_export"),
        ("one tensor more", {**base, "model.safetensors": _st({**tensors, **evil})}, "float32",
         "invalid_export"),
        ("declared bfloat16, holds float32", base, "bfloat16", "invalid_export"),
        ("config.json not JSON", {**base, "config.json": b"{nope"}, "float32", "invalid_export"),
        ("config of another architecture",
         {**base, "config.json": json.dumps({**json.loads(base["config.json"]),
                                             "model_type": "gpt2"}).encode()},
         "float32", "invalid_export"),
        ("truncated safetensors", {**base, "model.safetensors": _truncate(
            base["model.safetensors"])}, "float32", "invalid_safetensors"),
        ("a safetensors file outside the checkpoint",
         {**base, "extra/model.safetensors": _st(evil)}, "float32", "invalid_export"),
        ("an index that omits a tensor",
         {**{k: v for k, v in base.items() if k != "model.safetensors"},
          "model-00001-of-00001.safetensors": base["model.safetensors"],
          "model.safetensors.index.json": json.dumps(index).encode()}, "float32",
         "invalid_export"),
        ("an index naming a missing shard",
         {**base, "model.safetensors.index.json": json.dumps(index).encode()}, "float32",
         "invalid_export"),
        ("pickle weights", {**base, "pytorch_model.bin": b"\x80\x04."}, "float32",
         "unsafe_format"),
    ]


def test_export_records_must_be_the_bases_checkpoint(registered, base_dirs, live_server):
    """Uploaded blobs become a recorded export only if they load as this base, merged: the
    files are read (headers only) before anything is recorded."""
    base = read_dir(base_dirs["llama"])
    revision = registered.get_base("tiny-llama").revision
    for case, files, dtype, code in _planted_cases(base):
        r = _post_export(live_server.url, files, dtype=dtype, base_revision=revision)
        assert r.status_code == 422 and r.json()["error"] == code, (case, r.text)
        assert registered.get_version("bot", 1).exports == [], case
    # The base's own files have its tensors: the shape of a merge, so they are accepted.
    r = _post_export(live_server.url, base, base_revision=revision)
    assert r.status_code == 201, r.text
    assert (r.json()["provenance"], r.json()["created_by"]) == ("anonymous", None)


def test_a_planted_export_is_not_reused(registered, settings, base_dirs, live_server, tmp_path):
    """Anyone can record an export (no tokens yet); a client merges again rather than reuse
    files from an uploader it cannot trust, and its own records are its own."""
    from registry.local import LocalRegistry

    planted = read_dir(base_dirs["llama"])  # right names and shapes, but not merged
    revision = registered.get_base("tiny-llama").revision
    assert _post_export(live_server.url, planted, base_revision=revision).status_code == 201

    over_http = export(registered, ref="bot:1", base="tiny-llama", out=tmp_path / "http",
                       settings=settings)
    assert not over_http.reused and over_http.untrusted == ["anonymous"]
    merged = read_dir(tmp_path / "http")
    assert merged["model.safetensors"] != planted["model.safetensors"]
    # Another anonymous upload of other files cannot take the planted record's place either.
    with pytest.raises(errors.Conflict, match="by anonymous"):
        export(registered, ref="bot:1", base="tiny-llama", out=tmp_path / "http2",
               settings=settings, upload=True)

    # The embedded CLI on the same database: not its record either; its own upload is.
    local = LocalRegistry(settings)
    try:
        first = export(local, ref="bot:1", base="tiny-llama", out=tmp_path / "local",
                       settings=settings, upload=True)
        assert not first.reused and first.untrusted == ["anonymous"]
        assert first.export is not None and first.export.provenance == "embedded"
        again = export(local, ref="bot:1", base="tiny-llama", out=tmp_path / "local2",
                       settings=settings)
        assert again.reused and again.export is not None
        assert (again.export.provenance, again.trusted_because) == (
            "embedded", "recorded by this embedded registry")
        assert again.untrusted == ["anonymous"]
        assert read_dir(tmp_path / "local2") == merged
        # Over HTTP the embedded registry's record is not the caller's either.
        third = export(registered, ref="bot:1", base="tiny-llama", out=tmp_path / "http3",
                       settings=settings)
        assert not third.reused and sorted(third.untrusted) == ["anonymous", "embedded"]
    finally:
        local.close()
    assert sorted(e.provenance for e in registered.list_exports("bot", 1)) == [
        "anonymous", "embedded"]
