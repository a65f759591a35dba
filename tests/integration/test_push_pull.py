"""Push, pull, list and show through the HTTP API, on SQLite + local store and PostgreSQL + S3."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from registry import errors
from registry.client import HttpRegistry
from registry.clientside.transfer import pull, push
from tests.integration.helpers import (
    big_lora_dir,
    digest_of,
    push_raw,
    read_dir,
    version_count,
)


def _tree_digest(directory: Path) -> dict[str, str]:
    return {p: hashlib.sha256(d).hexdigest() for p, d in read_dir(directory).items()}


def test_push_then_pull_round_trip(http: HttpRegistry, settings, adapters_dir, tmp_path,
                                   base_dirs):
    from registry.clientside.transfer import register_base_dir

    register_base_dir(http, name="tiny-llama", directory=base_dirs["llama"], settings=settings)
    src = adapters_dir["lora"]
    first = push(http, name="support-bot", directory=src, settings=settings,
                 base_model="tiny-llama", metadata={"dataset": "tickets-v3"})
    assert (first.version.version, first.version.status, first.created) == (1, "registered", True)
    assert sorted(first.uploaded) == sorted(read_dir(src))
    second = push(http, name="support-bot", directory=adapters_dir["lora_v2"], settings=settings,
                  base_model="tiny-llama")
    assert second.version.version == 2

    v1 = http.get_version("support-bot", 1)
    assert v1.peft_type == "LORA"
    assert v1.base_model == "tiny-llama"
    assert v1.compatibility is not None and v1.compatibility.compatible is True
    assert v1.metadata == {"dataset": "tickets-v3"}
    assert v1.r == json.loads((src / "adapter_config.json").read_text())["r"]
    assert v1.tensor_count > 0
    assert http.get_version("support-bot", None).version == 2

    out = tmp_path / "pulled"
    version, written = pull(http, ref="support-bot:1", directory=out)
    assert version.version == 1
    assert sorted(written) == sorted(read_dir(src))
    assert _tree_digest(out) == _tree_digest(src)
    latest, _ = pull(http, ref="support-bot", directory=tmp_path / "latest")
    assert latest.version == 2
    assert _tree_digest(tmp_path / "latest") == _tree_digest(adapters_dir["lora_v2"])


def test_pushing_stored_content_uploads_nothing(http: HttpRegistry, settings, adapters_dir):
    src = adapters_dir["dora"]
    push(http, name="dedupe", directory=src, settings=settings)
    again = push(http, name="dedupe-copy", directory=src, settings=settings)
    assert again.uploaded == []
    assert sorted(again.skipped) == sorted(read_dir(src))
    assert again.version.version == 1


@pytest.mark.parametrize("kind", ["lora_rank_pattern", "dora", "ia3", "modules_to_save",
                                  "gpt2_lora", "bert_lora", "loha", "lokr", "prompt_tuning"])
def test_every_adapter_kind_registers(http: HttpRegistry, settings, adapters_dir, kind):
    result = push(http, name=f"kind-{kind.replace('_', '-')}", directory=adapters_dir[kind],
                  settings=settings)
    config = json.loads((adapters_dir[kind] / "adapter_config.json").read_text())
    assert result.version.peft_type == config["peft_type"]
    assert result.version.adapter_config == config  # unknown fields kept verbatim


def test_idempotency_key(http: HttpRegistry, settings, adapters_dir, live_server):
    first = push(http, name="ci-bot", directory=adapters_dir["lora"], settings=settings,
                 idempotency_key="run-42")
    retry = push(http, name="ci-bot", directory=adapters_dir["lora"], settings=settings,
                 idempotency_key="run-42")
    assert (retry.version.version, retry.created) == (first.version.version, False)
    with pytest.raises(errors.IdempotencyConflict) as exc:
        push(http, name="ci-bot", directory=adapters_dir["lora_v2"], settings=settings,
             idempotency_key="run-42")
    assert exc.value.status_code == 409
    assert version_count(live_server.url, "ci-bot") == 1


def test_lineage_metadata_and_ci_provenance(http, settings, adapters_dir, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_SHA", "a" * 40)
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.example")
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/bots")
    monkeypatch.setenv("GITHUB_RUN_ID", "777")
    monkeypatch.setenv("GITHUB_ACTOR", "ci-user")
    push(http, name="base-bot", directory=adapters_dir["lora"], settings=settings)
    child = push(http, name="team/child-bot", directory=adapters_dir["lora_v2"],
                 settings=settings, parent="base-bot:1", metadata={"dataset": "d2", "lr": "1e-4"})
    v = http.get_version("team/child-bot", child.version.version)
    assert v.parent is not None and (v.parent.name, v.parent.version) == ("base-bot", 1)
    assert v.git_commit == "a" * 40
    assert v.ci_run_url == "https://github.example/acme/bots/actions/runs/777"
    assert v.created_by == "ci-user"
    assert v.metadata == {"dataset": "d2", "lr": "1e-4"}
    with pytest.raises(errors.VersionNotFound):
        push(http, name="orphan", directory=adapters_dir["lora"], settings=settings,
             parent="base-bot:9")


def test_list_and_show(http: HttpRegistry, settings, adapters_dir):
    push(http, name="alpha", directory=adapters_dir["lora"], settings=settings)
    push(http, name="alpha", directory=adapters_dir["lora_v2"], settings=settings)
    push(http, name="beta", directory=adapters_dir["ia3"], settings=settings)
    listed = {a.name: a for a in http.list_adapters()}
    assert listed["alpha"].latest_version == 2 and listed["alpha"].version_count == 2
    assert listed["beta"].latest_version == 1
    assert [v.version for v in http.list_versions("alpha")] == [1, 2]


def test_concurrent_pushes_get_distinct_consecutive_versions(http, settings, adapters_dir,
                                                             live_server):
    src = adapters_dir["lora"]
    push(http, name="warmup", directory=src, settings=settings)  # blobs stored once

    def one(_: int) -> int:
        client = HttpRegistry(live_server.url)
        try:
            return push(client, name="busy", directory=src, settings=settings).version.version
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=16) as pool:
        versions = list(pool.map(one, range(16)))
    assert sorted(versions) == list(range(1, 17))


def test_pull_missing_version_is_404(http: HttpRegistry, settings, adapters_dir, tmp_path):
    with pytest.raises(errors.AdapterNotFound):
        pull(http, ref="nobody:1", directory=tmp_path / "x")
    push(http, name="somebody", directory=adapters_dir["lora"], settings=settings)
    with pytest.raises(errors.VersionNotFound):
        pull(http, ref="somebody:7", directory=tmp_path / "y")
    assert not (tmp_path / "y").exists()


def test_blob_protocol(live_server):
    url = live_server.url
    data = b"hello adapter" * 1000
    digest = digest_of(data)
    assert httpx.head(f"{url}/api/v1/blobs/{digest}").status_code == 404
    wrong = httpx.put(f"{url}/api/v1/blobs/{digest}", content=data + b"!")
    assert wrong.status_code == 400 and wrong.json()["error"] == "digest_mismatch"
    assert httpx.head(f"{url}/api/v1/blobs/{digest}").status_code == 404
    assert httpx.put(f"{url}/api/v1/blobs/{digest}", content=data).status_code == 201
    head = httpx.head(f"{url}/api/v1/blobs/{digest}")
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(data)
    assert httpx.get(f"{url}/api/v1/blobs/{digest}").content == data
    bad = httpx.head(f"{url}/api/v1/blobs/sha256:..%2F..%2Fetc")
    assert bad.status_code in (404, 422)
    bad = httpx.get(f"{url}/api/v1/blobs/sha256:XYZ")
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_digest"


def test_blob_over_size_limit_is_refused(live_server, settings):
    settings.max_file_bytes = 1000
    data = b"x" * 5000
    r = httpx.put(f"{live_server.url}/api/v1/blobs/{digest_of(data)}", content=data)
    assert r.status_code == 413 and r.json()["error"] == "too_large"

    def chunks():  # no Content-Length: the limit is enforced while streaming
        yield data[:2500]
        yield data[2500:]

    r = httpx.put(f"{live_server.url}/api/v1/blobs/{digest_of(data)}", content=chunks())
    assert r.status_code == 413
    assert httpx.head(f"{live_server.url}/api/v1/blobs/{digest_of(data)}").status_code == 404


def test_version_create_needs_uploaded_blobs(live_server, adapters_dir):
    files = read_dir(adapters_dir["lora"])
    body = {"files": {p: digest_of(d) for p, d in files.items()}}
    r = httpx.post(f"{live_server.url}/api/v1/adapters/lonely/versions", json=body)
    assert r.status_code == 404 and r.json()["error"] == "blob_not_found"
    assert version_count(live_server.url, "lonely") == 0


def test_health_ready_metrics_openapi(live_server):
    url = live_server.url
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    httpx.get(f"{url}/api/v1/adapters")
    metrics = httpx.get(f"{url}/metrics").text
    assert 'registry_http_requests_total{method="GET",route="/api/v1/adapters",status="200"}' in (
        metrics)
    spec = httpx.get(f"{url}/openapi.json").json()
    assert "/api/v1/blobs/{digest}" in spec["paths"]
    missing = httpx.get(f"{url}/api/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    huge = httpx.post(f"{url}/api/v1/adapters/x/versions",
                      content=b"{" + b" " * (9 * 1024 * 1024) + b"}")
    assert huge.status_code == 413
    metrics = httpx.get(f"{url}/metrics").text
    assert 'registry_http_requests_total{method="GET",route="unmatched",status="404"}' in metrics
    assert 'registry_http_requests_total{method="POST",route="unmatched",status="413"}' in metrics


def test_raw_push_of_valid_files_works(live_server, adapters_dir):
    r = push_raw(live_server.url, "raw", read_dir(adapters_dir["lora"]))
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 1


def test_limit_enforced_across_streamed_batches(live_server, settings):
    import os

    settings.max_file_bytes = 6 * 1024 * 1024
    data = os.urandom(13 * 1024 * 1024)

    def chunks():  # several write batches, no Content-Length
        for i in range(0, len(data), 256 * 1024):
            yield data[i : i + 256 * 1024]

    r = httpx.put(f"{live_server.url}/api/v1/blobs/{digest_of(data)}", content=chunks(),
                  timeout=60)
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    assert httpx.head(f"{live_server.url}/api/v1/blobs/{digest_of(data)}").status_code == 404
    assert list(live_server.context.store.iter_blobs()) == []


def test_streamed_upload_over_many_batches_round_trips(live_server):
    import os

    data = os.urandom(13 * 1024 * 1024 + 12345)
    digest = digest_of(data)

    def chunks():  # odd-sized chunks, no Content-Length: the server batches them itself
        for i in range(0, len(data), 300_001):
            yield data[i : i + 300_001]

    r = httpx.put(f"{live_server.url}/api/v1/blobs/{digest}", content=chunks(), timeout=60)
    assert r.status_code == 201, r.text
    back = httpx.get(f"{live_server.url}/api/v1/blobs/{digest}", timeout=60)
    assert back.status_code == 200 and back.content == data


# --- large files: sent without hashing first where the store allows ------------------------------


def _local_store(request: pytest.FixtureRequest) -> bool:
    """Whether this run's blob store is the local one (it names uploads after their content;
    S3 cannot): from the backend parameter, not from the store's own flag."""
    return request.node.callspec.params["settings"] == "sqlite-local"


def _requests(url: str, method: str, route: str, status: int) -> float:
    prefix = (f'registry_http_requests_total{{method="{method}",route="{route}",'
              f'status="{status}"}} ')
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.removeprefix(prefix))
    return 0.0


def test_big_new_file_is_sent_once_and_dedupe_still_holds(http: HttpRegistry, settings,
                                                          live_server, tmp_path, request):
    from registry.clientside.transfer import UNHASHED_UPLOAD_MIN

    src = big_lora_dir(tmp_path / "big", seed=1)
    weights = src / "adapter_model.safetensors"
    assert weights.stat().st_size >= UNHASHED_UPLOAD_MIN
    local_store = _local_store(request)
    first = push(http, name="big", directory=src, settings=settings)
    assert sorted(first.uploaded) == ["adapter_config.json", "adapter_model.safetensors"]
    url = live_server.url
    # The weights went through POST /uploads (server-named) on the local store, PUT on S3.
    assert _requests(url, "POST", "/api/v1/blobs/uploads", 201) == (1 if local_store else 0)
    assert _requests(url, "PUT", "/api/v1/blobs/{digest}", 201) == (1 if local_store else 2)
    stored = {f.path: f.digest for f in first.version.files}
    assert stored["adapter_model.safetensors"] == digest_of(weights.read_bytes())

    # The same weights again under another name: the size is known now, so the client hashes
    # first, finds the blob and uploads nothing.
    again = push(http, name="big-copy", directory=src, settings=settings)
    assert again.uploaded == [] and sorted(again.skipped) == sorted(read_dir(src))
    assert _requests(url, "POST", "/api/v1/blobs/uploads", 201) == (1 if local_store else 0)

    out = tmp_path / "pulled"
    pull(http, ref="big-copy:1", directory=out)
    assert read_dir(out) == read_dir(src)


def test_blob_size_query_and_content_named_upload(live_server, request):
    import os

    url = live_server.url
    local_store = _local_store(request)
    data = os.urandom(5 * 1024 * 1024 + 3)
    r = httpx.get(f"{url}/api/v1/blobs/sizes/{len(data)}")
    assert r.status_code == 200
    assert r.json() == {"size": len(data), "stored": False, "upload_without_digest": local_store}
    for bad in ("-1", "abc", str(2**63), "9" * 40):
        r = httpx.get(f"{url}/api/v1/blobs/sizes/{bad}")
        assert r.status_code == 422 and r.json()["error"] == "invalid_input", (bad, r.text)

    r = httpx.post(f"{url}/api/v1/blobs/uploads", content=data, timeout=60)
    if not local_store:
        assert r.status_code == 422 and "PUT /api/v1/blobs/" in r.json()["detail"]
        assert list(live_server.context.store.iter_blobs()) == []
        return
    assert r.status_code == 201, r.text
    assert r.json() == {"digest": digest_of(data), "size": len(data)}
    assert r.headers["docker-content-digest"] == digest_of(data)
    assert httpx.get(f"{url}/api/v1/blobs/{digest_of(data)}", timeout=60).content == data
    assert httpx.get(f"{url}/api/v1/blobs/sizes/{len(data)}").json()["stored"] is True


def test_content_named_upload_over_the_limit_stores_nothing(live_server, settings, request):
    import os

    if not _local_store(request):
        assert httpx.post(f"{live_server.url}/api/v1/blobs/uploads",
                          content=b"x").status_code == 422
        return
    settings.max_file_bytes = 1024 * 1024
    data = os.urandom(3 * 1024 * 1024)

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for i in range(0, len(data), 256 * 1024):
            yield data[i : i + 256 * 1024]

    r = httpx.post(f"{live_server.url}/api/v1/blobs/uploads", content=chunks(), timeout=60)
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    declared = httpx.post(f"{live_server.url}/api/v1/blobs/uploads", content=data, timeout=60)
    assert declared.status_code == 413
    assert list(live_server.context.store.iter_blobs()) == []


# --- one idempotency key, several adapters; a retry that changes lineage or base ---------------


def test_one_idempotency_key_on_two_adapters(http: HttpRegistry, settings, adapters_dir):
    """A key belongs to one adapter: the same key (and content) pushed to another adapter is a
    new version of that adapter, not the first adapter's version handed back."""
    alpha = push(http, name="alpha", directory=adapters_dir["lora"], settings=settings,
                 idempotency_key="ci-run-7")
    beta = push(http, name="beta", directory=adapters_dir["lora"], settings=settings,
                idempotency_key="ci-run-7")
    assert (alpha.version.ref, alpha.created) == ("alpha:1", True)
    assert (beta.version.ref, beta.created) == ("beta:1", True)
    retry = push(http, name="beta", directory=adapters_dir["lora"], settings=settings,
                 idempotency_key="ci-run-7")
    assert (retry.version.ref, retry.created) == ("beta:1", False)
    assert [v.ref for v in http.list_versions("alpha")] == ["alpha:1"]


def test_idempotent_retry_with_another_parent_or_base_is_a_conflict(
        http: HttpRegistry, settings, adapters_dir, base_dirs, live_server):
    from registry.clientside.transfer import register_base_dir

    push(http, name="root", directory=adapters_dir["lora_v2"], settings=settings)
    # Not the adapter's declared base name ("tiny-llama"), so nothing links it by default.
    register_base_dir(http, name="other-llama", directory=base_dirs["llama"], settings=settings)
    first = push(http, name="ci", directory=adapters_dir["lora"], settings=settings,
                 idempotency_key="k1")
    assert (first.version.parent, first.version.base_model) == (None, None)
    with pytest.raises(errors.IdempotencyConflict):
        push(http, name="ci", directory=adapters_dir["lora"], settings=settings,
             idempotency_key="k1", parent="root:1")
    with pytest.raises(errors.IdempotencyConflict):
        push(http, name="ci", directory=adapters_dir["lora"], settings=settings,
             idempotency_key="k1", base_model="other-llama")
    same = push(http, name="ci", directory=adapters_dir["lora"], settings=settings,
                idempotency_key="k1")
    assert (same.version.ref, same.created) == ("ci:1", False)
    assert version_count(live_server.url, "ci") == 1


# --- pulls: all or nothing, never into someone's files ------------------------------------------


def _corrupt_blob(store, digest: str) -> None:
    """Replace a stored blob's bytes (same size) behind the registry's back, as bit rot or a
    tampered bucket would."""
    from registry.storage import LocalBlobStore, S3BlobStore

    if isinstance(store, LocalBlobStore):
        path = store.path_for(digest)
        path.chmod(0o644)
        path.write_bytes(bytes(b ^ 0xFF for b in path.read_bytes()))
    else:
        assert isinstance(store, S3BlobStore)
        key = store.key_for(digest)
        data = store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read()
        store.client.put_object(Bucket=store.bucket, Key=key, Body=bytes(b ^ 0xFF for b in data))


def _partials(directory: Path) -> list[str]:
    return [p.name for p in directory.rglob("*") if p.name.endswith(".partial")]


def test_a_failed_pull_leaves_nothing_behind(http: HttpRegistry, settings, adapters_dir,
                                            tmp_path, live_server):
    src = adapters_dir["lora"]
    version = push(http, name="rotten", directory=src, settings=settings).version
    weights = next(f for f in version.files if f.path == "adapter_model.safetensors")
    _corrupt_blob(live_server.context.store, weights.digest)
    # The other files are pulled (and verified) first, the weights fail: nothing may remain.
    assert [f.path for f in version.files][-1] == "adapter_model.safetensors"

    work = tmp_path / "work"
    fresh = work / "fresh"
    with pytest.raises(errors.DigestMismatch):
        pull(http, ref="rotten:1", directory=fresh)
    assert not fresh.exists() and _partials(work) == []

    empty = work / "empty"
    empty.mkdir()
    with pytest.raises(errors.DigestMismatch):
        pull(http, ref="rotten:1", directory=empty)
    assert list(empty.iterdir()) == []

    mine = work / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    with pytest.raises(errors.DigestMismatch):
        pull(http, ref="rotten:1", directory=mine, force=True)
    assert read_dir(mine) == {"keep.txt": b"mine"}
    assert sorted(p.name for p in work.iterdir()) == ["empty", "mine"]


def test_pull_refuses_a_non_empty_directory_unless_forced(http: HttpRegistry, settings,
                                                          adapters_dir, tmp_path):
    push(http, name="bot", directory=adapters_dir["lora"], settings=settings)
    push(http, name="bot", directory=adapters_dir["dora"], settings=settings)
    work = tmp_path / "work"
    out = work / "out"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    with pytest.raises(errors.OutputExists) as exc:
        pull(http, ref="bot:1", directory=out)
    assert "--force" in exc.value.detail
    assert read_dir(out) == {"keep.txt": b"mine"}

    pull(http, ref="bot:1", directory=out, force=True)
    assert _tree_digest(out) == _tree_digest(adapters_dir["lora"])  # replaced, not merged
    pull(http, ref="bot:2", directory=out, force=True)
    assert _tree_digest(out) == _tree_digest(adapters_dir["dora"])
    assert [p.name for p in work.iterdir()] == ["out"]  # no staging or old copy left

    a_file = work / "a-file"
    a_file.write_text("x")
    with pytest.raises(errors.OutputExists, match="not a directory"):
        pull(http, ref="bot:1", directory=a_file, force=True)


def test_pull_into_an_existing_empty_directory_keeps_that_directory(
        http: HttpRegistry, settings, adapters_dir, tmp_path):
    """An empty target (a fresh mount point, the current directory) is filled, not replaced."""
    push(http, name="bot", directory=adapters_dir["modules_to_save"], settings=settings)
    out = tmp_path / "mount"
    out.mkdir()
    inode = out.stat().st_ino
    pull(http, ref="bot:1", directory=out)
    assert out.stat().st_ino == inode
    assert _tree_digest(out) == _tree_digest(adapters_dir["modules_to_save"])
    assert _partials(out) == []


@pytest.mark.parametrize("bad_path", ["adapter_config.json/x", "adapter_model\u202egnp.exe",
                                      "ADAPTER_CONFIG.JSON", "x" * 300])
def test_pull_refuses_a_stored_path_set_it_cannot_write(http: HttpRegistry, settings,
                                                        adapters_dir, tmp_path, live_server,
                                                        bad_path):
    """A version recorded before today's path rules (or by a server that skipped them): the
    client checks the whole set before it writes anything."""
    from sqlalchemy import update

    from registry.db.engine import session_scope
    from registry.db.models import VersionFile

    push(http, name="legacy", directory=adapters_dir["lora"], settings=settings)
    with session_scope(live_server.context.sessions) as session:
        session.execute(update(VersionFile).where(VersionFile.path == "adapter_model.safetensors")
                        .values(path=bad_path))
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(errors.InvalidPath):
        pull(http, ref="legacy:1", directory=work / "out")
    assert list(work.iterdir()) == []
