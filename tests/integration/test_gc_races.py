"""Garbage collection racing pushes: a version that was created is always pullable, and a
HEAD 200 means a GET succeeds, whatever the interleaving (SQLite + local store, PostgreSQL +
S3). Crash leftovers (temp files, multipart uploads) go after the grace period."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from safetensors.numpy import save_file
from sqlalchemy import select, update

from registry import errors
from registry.blobs.service import collect_garbage
from registry.client import HttpRegistry
from registry.clientside.transfer import pull, push
from registry.config import Settings
from registry.db.engine import session_scope
from registry.db.models import Blob, BlobState
from tests.integration.helpers import digest_of, read_dir, server_env, start_server

# 20 rounds as the issue asks; .ci/run sets fewer (REGISTRY_STRESS_ROUNDS) to stay short.
ROUNDS = int(os.environ.get("REGISTRY_STRESS_ROUNDS", "20"))
PUSHES_PER_ROUND = 16


def fresh_adapter(directory: Path, seed: int) -> Path:
    """A small valid LoRA directory whose bytes no other call produces."""
    rng = np.random.default_rng(seed)
    stem = "base_model.model.model.layers.0.self_attn.q_proj"
    directory.mkdir(parents=True)
    save_file({f"{stem}.lora_A.weight": rng.standard_normal((4, 64), dtype=np.float32),
               f"{stem}.lora_B.weight": rng.standard_normal((64, 4), dtype=np.float32)},
              str(directory / "adapter_model.safetensors"))
    (directory / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"],
         "seed": seed}))
    return directory


class GcLoop:
    """``POST /api/v1/admin/gc {"grace_seconds": 0}`` in a loop on a thread of its own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.runs = 0
        self.removed = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self._stop.is_set():
                response = client.post("/api/v1/admin/gc", json={"grace_seconds": 0})
                if response.status_code != 200:
                    self.errors.append(response.text)
                    continue
                self.runs += 1
                self.removed += response.json()["removed_count"]

    def __enter__(self) -> GcLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


@pytest.mark.stress
def test_pushes_racing_gc_stay_pullable(live_server, settings: Settings, tmp_path):
    """16 concurrent pushes of fresh content per round with gc --grace 0 running in a loop:
    every push succeeds (the client retries what gc took away), and every created version
    pulls byte-identical afterwards. A quarter of the pushes find their blobs already
    uploaded but unreferenced (HEAD 200, the upload skipped), gc's favourite prey."""
    seeds = iter(range(10_000))
    created: list[tuple[str, int, Path]] = []
    failures: list[str] = []
    lock = threading.Lock()

    def one_push(name: str, source: Path, preupload: bool) -> None:
        client = HttpRegistry(live_server.url)
        try:
            if preupload:
                for data in read_dir(source).values():
                    httpx.put(f"{live_server.url}/api/v1/blobs/{digest_of(data)}",
                              content=data, timeout=60)
            result = push(client, name=name, directory=source, settings=settings)
            with lock:
                created.append((name, result.version.version, source))
        except Exception as exc:  # every failure is reported below, with its push
            with lock:
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
        finally:
            client.close()

    with GcLoop(live_server.url) as gc:
        for round_no in range(ROUNDS):
            threads = []
            for i in range(PUSHES_PER_ROUND):
                seed = next(seeds)
                source = fresh_adapter(tmp_path / f"r{round_no}-{i}", seed)
                threads.append(threading.Thread(
                    target=one_push, args=(f"stress-{seed}", source, i % 4 == 0)))
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=300)
    assert not failures, failures
    assert not gc.errors, gc.errors
    assert gc.runs > ROUNDS  # gc really ran throughout
    assert len(created) == ROUNDS * PUSHES_PER_ROUND

    client = HttpRegistry(live_server.url)
    try:
        for name, version, source in created:
            out = tmp_path / "pulled" / name
            pull(client, ref=f"{name}:{version}", directory=out)
            assert read_dir(out) == read_dir(source), name
    finally:
        client.close()
    assert_every_present_row_has_its_object(live_server)


def assert_every_present_row_has_its_object(live_server) -> None:
    """HEAD 200 means GET succeeds: each present row's object exists and hashes right."""
    ctx = live_server.context
    with session_scope(ctx.sessions) as session:
        rows = session.execute(select(Blob.digest, Blob.state)).all()
    assert rows
    for digest, state in rows:
        assert state == BlobState.present, digest
        response = httpx.get(f"{live_server.url}/api/v1/blobs/{digest}", timeout=60)
        assert response.status_code == 200, digest
        assert digest_of(response.content) == digest


def _set_state(ctx, digest: str, state: BlobState) -> None:
    with session_scope(ctx.sessions) as session:
        session.execute(update(Blob).where(Blob.digest == digest).values(state=state))


def test_a_deleting_row_reads_as_absent(live_server, http: HttpRegistry, settings, tmp_path):
    """While gc owns a digest (row ``deleting``): HEAD and GET say 404, and a version that
    names it is refused (the client re-uploads); nothing half-made is created."""
    ctx = live_server.context
    source = fresh_adapter(tmp_path / "a", 1)
    files = read_dir(source)
    for data in files.values():
        assert httpx.put(f"{live_server.url}/api/v1/blobs/{digest_of(data)}",
                         content=data).status_code == 201
    weights = digest_of(files["adapter_model.safetensors"])
    _set_state(ctx, weights, BlobState.deleting)
    assert httpx.head(f"{live_server.url}/api/v1/blobs/{weights}").status_code == 404
    assert httpx.get(f"{live_server.url}/api/v1/blobs/{weights}").status_code == 404
    body = {"files": {p: digest_of(d) for p, d in files.items()}}
    refused = httpx.post(f"{live_server.url}/api/v1/adapters/a/versions", json=body)
    assert refused.status_code == 404 and refused.json()["error"] == "blob_not_found"
    with pytest.raises(errors.AdapterNotFound):
        http.list_versions("a")


def test_an_upload_waits_for_gc_to_finish_with_its_digest(live_server, tmp_path):
    """A PUT of a digest gc is removing waits until gc is done, then publishes its own
    object: afterwards the row is present and the object there (not deleted under it)."""
    ctx = live_server.context
    data = b"uploaded while gc removes the same content"
    digest = digest_of(data)
    assert httpx.put(f"{live_server.url}/api/v1/blobs/{digest}", content=data).status_code == 201
    _set_state(ctx, digest, BlobState.deleting)

    def finish_gc() -> None:  # what gc's second phase does, a little later
        time.sleep(0.5)
        ctx.store.delete(digest)
        with session_scope(ctx.sessions) as session:
            session.execute(Blob.__table__.delete().where(Blob.digest == digest))

    gc = threading.Thread(target=finish_gc)
    gc.start()
    started = time.monotonic()
    response = httpx.put(f"{live_server.url}/api/v1/blobs/{digest}", content=data, timeout=60)
    gc.join()
    assert response.status_code == 201
    assert time.monotonic() - started >= 0.4  # it waited for gc
    assert ctx.store.exists(digest)
    assert httpx.get(f"{live_server.url}/api/v1/blobs/{digest}").content == data


def test_gc_finishes_what_a_dead_gc_left(live_server, http: HttpRegistry):
    ctx = live_server.context
    data = b"marked deleting by a gc that died before removing it"
    httpx.put(f"{live_server.url}/api/v1/blobs/{digest_of(data)}", content=data)
    _set_state(ctx, digest_of(data), BlobState.deleting)
    report = http.gc(grace_seconds=86400, dry_run=False)  # whatever the grace period
    assert report["removed"] == [digest_of(data)]
    assert not ctx.store.exists(digest_of(data))
    with session_scope(ctx.sessions) as session:
        assert session.scalars(select(Blob)).all() == []


def test_dry_run_reports_orphans(live_server, http: HttpRegistry):
    ctx = live_server.context
    data = b"an object the store has but no row records"
    with ctx.store.writer(digest_of(data)) as w:
        w.write(data)
        w.commit()
    dry = http.gc(grace_seconds=0, dry_run=True)
    assert dry["orphans_removed"] == [digest_of(data)] and dry["dry_run"] is True
    assert ctx.store.exists(digest_of(data))
    assert http.gc(grace_seconds=0, dry_run=False)["orphans_removed"] == [digest_of(data)]
    assert not ctx.store.exists(digest_of(data))


# --- crash leftovers: a server killed in the middle of an upload -------------------------------


def _slow_body(total: int, sent: threading.Event, killed: threading.Event) -> Iterator[bytes]:
    chunk = os.urandom(1 << 20)
    for i in range(total >> 20):
        if i == (total >> 20) // 2:
            sent.set()  # half-way: the server holds a temp file / multipart upload now
            killed.wait(timeout=60)  # the server is killed meanwhile
        yield chunk


def _leftovers(settings: Settings, ctx) -> int:
    from registry.storage.local import LocalBlobStore

    store = ctx.store
    if isinstance(store, LocalBlobStore):
        return len(list(store.tmp_dir.glob("*.tmp"))) if store.tmp_dir.exists() else 0
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket,
                                                  Prefix=store._blob_prefix)
    return len(uploads.get("Uploads", []))


def test_a_killed_server_leaves_nothing_behind_after_gc(settings: Settings, context):
    """kill -9 of the server in the middle of a 40 MiB PUT leaves a temp file (local) or an
    incomplete multipart upload (S3). Starting the server again removes local ones older
    than the grace period; gc removes both."""
    # The server subprocess uses the same database and blob store as `context`.
    proc, url = start_server(server_env(settings))
    sent, killed = threading.Event(), threading.Event()
    digest = "sha256:" + "ab" * 32
    outcome: list[str] = []

    def upload() -> None:
        try:
            with httpx.Client(timeout=120) as client:
                client.put(f"{url}/api/v1/blobs/{digest}",
                           content=_slow_body(40 << 20, sent, killed),
                           headers={"Content-Length": str(40 << 20)})
            outcome.append("answered")
        except httpx.HTTPError:
            outcome.append("connection lost")

    uploader = threading.Thread(target=upload, daemon=True)
    uploader.start()
    assert sent.wait(timeout=60)
    time.sleep(1.0)  # let the server write what it received
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    killed.set()
    uploader.join(timeout=60)
    assert outcome == ["connection lost"]
    assert _leftovers(settings, context) == 1

    # A restart within the grace period keeps it (it might be someone's live upload)...
    proc, url = start_server(server_env(settings))
    proc.terminate()
    proc.wait(timeout=30)
    assert _leftovers(settings, context) == 1
    # ...and gc with a grace period it has outlived removes it.
    if not settings.is_embedded:
        context.store.upload_idle_seconds = 0.5
    time.sleep(1.1)
    report = collect_garbage(context.sessions, context.store, grace_seconds=1)
    assert report.temp_removed == 1
    assert _leftovers(settings, context) == 0


def test_server_start_removes_old_local_temp_files(tmp_path):
    """The local store: a server start removes dead uploads' temp files older than the grace
    period (a live upload holds a lock, so another process's upload is never touched)."""
    settings = Settings(home=tmp_path / "home")
    tmp_dir = settings.home / "blobs" / "tmp"
    tmp_dir.mkdir(parents=True)
    stale = tmp_dir / f"{'cd' * 32}.{'0' * 32}.tmp"
    stale.write_bytes(b"half an upload")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    fresh = tmp_dir / f"{'ef' * 32}.{'1' * 32}.tmp"
    fresh.write_bytes(b"a recent one")
    proc, _ = start_server(server_env(settings, REGISTRY_GC_GRACE_SECONDS="3600"))
    proc.terminate()
    proc.wait(timeout=30)
    assert not stale.exists() and fresh.exists()


def test_gc_loop_and_pushes_leave_consistent_rows(live_server, settings, tmp_path):
    """A short, always-run round of the stress test above (CI runs the long one with fewer
    rounds): 8 pushes against a gc loop, then the invariant on every row."""
    client = HttpRegistry(live_server.url)
    results = []
    try:
        with GcLoop(live_server.url) as gc:
            for i in range(8):
                source = fresh_adapter(tmp_path / f"s{i}", 50_000 + i)
                if i % 2:
                    for data in read_dir(source).values():
                        httpx.put(f"{live_server.url}/api/v1/blobs/{digest_of(data)}",
                                  content=data)
                results.append((push(client, name=f"short-{i}", directory=source,
                                     settings=settings), source))
                time.sleep(random.uniform(0, 0.02))
        assert gc.runs > 0 and not gc.errors
        for result, source in results:
            out = tmp_path / "out" / result.version.name
            pull(client, ref=result.version.ref, directory=out)
            assert read_dir(out) == read_dir(source)
    finally:
        client.close()
    assert_every_present_row_has_its_object(live_server)
