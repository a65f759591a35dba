"""Base models from local directories, the Hugging Face cache (offline) and S3; compat queries."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import httpx
import pytest

from registry import errors
from registry.base_models.schemas import RegisterBaseIn
from registry.client import HttpRegistry
from registry.clientside.transfer import push, register_base_dir
from registry.compat.schemas import CompatibleVersionOut
from tests.peft_factory import save_base, tiny_llama


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_register_local_base_is_content_addressed(http: HttpRegistry, settings, base_dirs,
                                                  live_server):
    base, created, uploaded = register_base_dir(http, name="tiny-llama",
                                                directory=base_dirs["llama"], settings=settings)
    assert created and "model.safetensors" in uploaded and "config.json" in uploaded
    assert base.source_kind == "file" and base.model_type == "llama"
    assert base.architectures == ["LlamaForCausalLM"]
    assert (base.hidden_size, base.num_hidden_layers) == (32, 2)
    assert base.fingerprint.startswith("sha256:")
    tensors = httpx.get(f"{live_server.url}/api/v1/base-models/tiny-llama/tensors").json()
    assert tensors["model.layers.0.self_attn.q_proj.weight"]["shape"] == [32, 32]
    assert all(f.digest for f in base.files)

    again, created, uploaded = register_base_dir(http, name="tiny-llama",
                                                 directory=base_dirs["llama"], settings=settings)
    assert not created and uploaded == [] and again.revision == base.revision
    assert len(http.list_bases()) == 1


def test_new_weights_need_a_new_revision(http: HttpRegistry, settings, tmp_path, base_dirs):
    register_base_dir(http, name="tiny-llama", directory=base_dirs["llama"], settings=settings)
    other = save_base(tiny_llama(seed=7), tmp_path / "retrained")
    with pytest.raises(errors.BaseModelConflict) as exc:
        register_base_dir(http, name="tiny-llama", directory=other, settings=settings)
    assert exc.value.status_code == 409 and "--revision" in exc.value.detail
    v2, created, _ = register_base_dir(http, name="tiny-llama", directory=other,
                                       settings=settings, revision="v2")
    assert created and v2.revision == "v2"
    assert http.get_base("tiny-llama").revision == "v2"  # latest
    first = http.get_base("tiny-llama", http.list_bases()[0].revision)
    assert first.fingerprint == v2.fingerprint  # same shapes, different weights
    with pytest.raises(errors.BaseModelConflict):
        register_base_dir(http, name="tiny-llama", directory=base_dirs["llama"],
                          settings=settings, revision="v2")


def test_sharded_base(http: HttpRegistry, settings, tmp_path):
    model = tiny_llama(seed=3)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").exists()
    base, _, uploaded = register_base_dir(http, name="sharded", directory=sharded,
                                          settings=settings)
    assert len([p for p in uploaded if p.endswith(".safetensors")]) > 1
    assert base.tensor_count == len(model.state_dict())


def _break_index(d: Path) -> None:
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (d / shard).unlink()


@pytest.mark.parametrize(("case", "code"), [
    ("no config", "invalid_base_model"),
    ("no weights", "invalid_base_model"),
    ("missing shard", "invalid_base_model"),
    ("pickle only", "unsafe_format"),
])
def test_bad_local_bases(http: HttpRegistry, settings, tmp_path, base_dirs, case, code,
                         live_server):
    d = tmp_path / "bad"
    if case == "missing shard":
        tiny_llama().save_pretrained(d, max_shard_size="20KB")
        _break_index(d)
    else:
        _copy(base_dirs["llama"], d)
    if case == "no config":
        (d / "config.json").unlink()
    elif case == "no weights":
        (d / "model.safetensors").unlink()
    elif case == "pickle only":
        (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(errors.RegistryError) as exc:
        register_base_dir(http, name="bad", directory=d, settings=settings)
    assert exc.value.code == code
    assert http.list_bases() == []
    # The server refuses the same thing when a client skips its own checks.
    files = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    digests = {}
    for name, data in files.items():
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        httpx.put(f"{live_server.url}/api/v1/blobs/{digest}", content=data)
        digests[name] = digest
    r = httpx.post(f"{live_server.url}/api/v1/base-models",
                   json={"name": "bad", "source": "file:///x", "files": digests})
    assert r.status_code == 422 and r.json()["error"] == code, r.text
    assert http.list_bases() == []


def _hf_cache(root: Path, repo: str, files: dict[str, bytes], commit: str) -> Path:
    """The Hugging Face cache layout, as huggingface_hub writes it."""
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_dir / "blobs").mkdir()
    for name, data in files.items():
        etag = hashlib.sha256(data).hexdigest()
        (repo_dir / "blobs" / etag).write_bytes(data)
        (snapshot / name).symlink_to(Path("../../blobs") / etag)
    return root


def test_hf_source_from_the_offline_cache(http: HttpRegistry, settings, tmp_path, base_dirs):
    commit = "0123456789abcdef0123456789abcdef01234567"
    files = {p.name: p.read_bytes() for p in base_dirs["llama"].iterdir()}
    cache = _hf_cache(tmp_path / "hf-cache", "acme/tiny-llama", files, commit)
    settings.hf_cache_dir = cache
    settings.hf_offline = True
    settings.base_sources = "hf://acme/"
    base, created = http.register_base(RegisterBaseIn(name="hf-llama",
                                                      source="hf://acme/tiny-llama"))
    assert created and base.revision == commit and base.source_kind == "hf"
    assert base.source == f"hf://acme/tiny-llama@{commit}"
    assert all(f.digest is None for f in base.files)  # referenced, not copied
    local, _, _ = register_base_dir(http, name="local-llama", directory=base_dirs["llama"],
                                    settings=settings)
    assert base.fingerprint == local.fingerprint
    again, created = http.register_base(RegisterBaseIn(name="hf-llama",
                                                       source=f"hf://acme/tiny-llama@{commit}"))
    assert not created and again.revision == commit

    with pytest.raises(errors.SourceUnavailable):
        http.register_base(RegisterBaseIn(name="nope", source="hf://acme/not-cached"))
    assert {b.name for b in http.list_bases()} == {"hf-llama", "local-llama"}


def test_s3_source_is_referenced(http: HttpRegistry, settings, base_dirs, request):
    from tests.integration.s3_server import s3_client

    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    client = s3_client(endpoint)
    prefix = f"checkpoints/{request.node.name.replace('[', '-').replace(']', '')}"
    for p in base_dirs["llama"].iterdir():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{p.name}", Body=p.read_bytes())
    settings.base_sources = f"s3://{bucket}/checkpoints/,s3://no-such-bucket-xyz/"
    base, created = http.register_base(RegisterBaseIn(name="s3-llama",
                                                      source=f"s3://{bucket}/{prefix}"))
    assert created and base.source_kind == "s3" and base.model_type == "llama"
    assert all(f.etag and f.digest is None for f in base.files)
    with pytest.raises(errors.SourceUnavailable):
        http.register_base(RegisterBaseIn(name="gone", source="s3://no-such-bucket-xyz/x"))
    with pytest.raises(errors.InvalidInput):
        http.register_base(RegisterBaseIn(name="bad", source="ftp://x"))


def _plant(request, prefix: str, files: dict[str, bytes]) -> str:
    """Put files under s3://<test bucket>/<prefix>/ behind the registry's back."""
    from tests.integration.s3_server import s3_client

    bucket = request.getfixturevalue("s3_bucket")
    client = s3_client(request.getfixturevalue("s3_endpoint"))
    for name, data in files.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=data)
    return bucket


def _post_base(live_server, source: str, **extra: object) -> httpx.Response:
    return httpx.post(f"{live_server.url}/api/v1/base-models",
                      json={"name": "probe", "source": source, **extra}, timeout=60)


def test_referenced_sources_must_be_allowlisted(http: HttpRegistry, settings, base_dirs,
                                                live_server, request):
    """The server reads hf:// and s3:// sources with its own credentials and answers with the
    config and file listing: without an allowlist a client could read any bucket it can name."""
    files = {p.name: p.read_bytes() for p in base_dirs["llama"].iterdir()}
    config = json.loads(files["config.json"])
    files["config.json"] = json.dumps({**config, "note": "planted-secret"}).encode()
    bucket = _plant(request, f"secrets/{uuid4_hex()}", files)

    def refused(source: str) -> str:
        r = _post_base(live_server, source)
        assert r.status_code == 403 and r.json()["error"] == "source_not_allowed", r.text
        assert "planted-secret" not in r.text and "model.safetensors" not in r.text
        return r.json()["detail"].replace(source, "SOURCE")

    assert settings.base_sources == ""  # the default: no referenced source at all
    details = {refused(f"s3://{bucket}/secrets"), refused("s3://no-such-bucket-xyz/x"),
               refused("hf://acme/private-model")}
    assert len(details) == 1  # the same answer whether or not the bucket exists

    settings.base_sources = f"s3://{bucket}/checkpoints,hf://acme/tiny-llama"
    refused(f"s3://{bucket}/secrets")
    refused(f"s3://{bucket}/checkpoints-private/x")  # prefixes match whole segments
    refused(f"s3://{bucket}")
    refused("hf://acme/tiny-llama-private")
    refused("hf://acme-private/tiny-llama")
    assert http.list_bases() == []


def test_unreadable_sources_do_not_say_why(http: HttpRegistry, settings, live_server, request):
    """Allowed or not, a client must not learn whether a bucket exists from the error."""
    bucket = request.getfixturevalue("s3_bucket")
    settings.base_sources = f"s3://{bucket}/,s3://no-such-bucket-xyz/"
    details = set()
    for source in (f"s3://{bucket}/empty-prefix-{uuid4_hex()}", "s3://no-such-bucket-xyz/x"):
        r = _post_base(live_server, source)
        assert r.status_code == 422 and r.json()["error"] == "source_unavailable", r.text
        details.add(r.json()["detail"].replace(source, "SOURCE"))
    assert len(details) == 1, details
    assert "NoSuchBucket" not in details.pop()
    assert http.list_bases() == []


def test_embedded_registry_reads_any_source_with_its_users_credentials(settings, base_dirs,
                                                                      request):
    """The embedded CLI reads sources with the user's own AWS/HF credentials: no allowlist."""
    from registry.local import LocalRegistry

    prefix = f"mine/{uuid4_hex()}"
    bucket = _plant(request, prefix, {p.name: p.read_bytes() for p in base_dirs["llama"].iterdir()})
    assert settings.base_sources == ""
    local = LocalRegistry(settings)
    try:
        base, created = local.register_base(RegisterBaseIn(name="s3-llama",
                                                           source=f"s3://{bucket}/{prefix}"))
        assert created and base.model_type == "llama"
        with pytest.raises(errors.InvalidInput, match="invalid revision"):
            local.register_base(RegisterBaseIn(name="s3-llama", source=f"s3://{bucket}/{prefix}",
                                               revision="../../etc"))
        with pytest.raises(errors.InvalidInput, match="invalid revision"):
            local.register_base(RegisterBaseIn(name="hf-x", source="hf://acme/x@refs/../../x"))
    finally:
        local.close()


def uuid4_hex() -> str:
    import uuid

    return uuid.uuid4().hex[:12]


def test_compat_queries_both_ways(http: HttpRegistry, settings, adapters_dir, base_dirs,
                                  tmp_path):
    register_base_dir(http, name="tiny-llama", directory=base_dirs["llama"], settings=settings)
    register_base_dir(http, name="tiny-gpt2", directory=base_dirs["gpt2"], settings=settings)
    push(http, name="llama-bot", directory=adapters_dir["lora"], settings=settings,
         base_model="tiny-llama")
    push(http, name="gpt2-bot", directory=adapters_dir["gpt2_lora"], settings=settings,
         base_model="tiny-gpt2")

    ok = http.compat_verdict("llama-bot", 1, base="tiny-llama")
    assert ok.compatible is True and ok.reasons == []
    bad = http.compat_verdict("gpt2-bot", 1, base="tiny-llama")
    assert bad.compatible is False and bad.reasons
    assert all(r.code and r.message for r in bad.reasons)

    assert http.compatible_versions(base="tiny-llama") == [
        CompatibleVersionOut(name="llama-bot", version=1)]
    assert http.compatible_versions(base="tiny-gpt2") == [
        CompatibleVersionOut(name="gpt2-bot", version=1)]
    assert [b.name for b in http.compatible_bases("llama-bot", 1)] == ["tiny-llama"]

    # A base registered later is checked against the versions already there.
    wide = save_base(tiny_llama(hidden=48), tmp_path / "wide-llama")
    register_base_dir(http, name="wide-llama", directory=wide, settings=settings)
    assert http.compatible_versions(base="wide-llama") == []
    verdict = http.compat_verdict("llama-bot", None, base="wide-llama")
    assert verdict.compatible is False
    assert any(r.code == "shape_mismatch" for r in verdict.reasons)

    with pytest.raises(errors.BaseModelNotFound) as exc:
        http.compatible_versions(base="nope")
    assert "base register" in exc.value.detail


def test_push_with_unregistered_base_is_refused(http: HttpRegistry, settings, adapters_dir,
                                                live_server):
    with pytest.raises(errors.BaseModelNotFound) as exc:
        push(http, name="bot", directory=adapters_dir["lora"], settings=settings,
             base_model="unknown-base")
    assert "adapter-registry base register unknown-base" in exc.value.detail
    assert http.list_adapters() == []


def test_declared_base_links_by_default(http: HttpRegistry, settings, adapters_dir, base_dirs):
    register_base_dir(http, name="tiny-llama", directory=base_dirs["llama"], settings=settings)
    # The factory's adapters declare base_model_name_or_path = "tiny-llama".
    result = push(http, name="auto", directory=adapters_dir["dora"], settings=settings)
    assert result.version.base_model == "tiny-llama"
    assert result.version.compatibility is not None


def test_registration_race_on_one_name(http: HttpRegistry, settings, base_dirs, live_server):
    """Two transactions register the same base at once: the second waits on the unique row,
    then returns the first one's row instead of failing (PostgreSQL; SQLite serialises them)."""
    import threading
    import time

    from registry.base_models import service as bases
    from registry.db.engine import session_scope
    from registry.formats.sources import SourceAllowlist

    register_base_dir(http, name="warm", directory=base_dirs["llama"], settings=settings)
    files = {f.path: str(f.digest) for f in http.get_base("warm").files}
    body = RegisterBaseIn(name="raced", source="file:///x", files=files)
    ctx = live_server.context
    first_flushed = threading.Event()
    results: dict[str, object] = {}

    def first() -> None:
        with session_scope(ctx.sessions) as session:
            results["first"] = bases.register_base(session, ctx.store, body=body,
                                                   settings=settings,
                                                   sources=SourceAllowlist())[1]
            first_flushed.set()
            time.sleep(0.5)  # the second transaction is now blocked on our row

    def second() -> None:
        first_flushed.wait(30)
        with session_scope(ctx.sessions) as session:
            results["second"] = bases.register_base(session, ctx.store, body=body,
                                                    settings=settings,
                                                    sources=SourceAllowlist())[1]

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {"first": True, "second": False}
    assert [b.name for b in http.list_bases()].count("raced") == 1
