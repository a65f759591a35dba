"""Garbage collection: unreferenced blobs go after the grace period; referenced ones never."""

from __future__ import annotations

from datetime import timedelta

import httpx

from registry.blobs.service import collect_garbage
from registry.clientside.transfer import push
from registry.db.base import utcnow
from tests.integration.helpers import digest_of, read_dir


def test_gc_removes_only_old_unreferenced_blobs(http, live_server, settings, adapters_dir):
    ctx = live_server.context
    push(http, name="kept", directory=adapters_dir["lora"], settings=settings)
    stray = b"uploaded but never used"
    assert httpx.put(f"{live_server.url}/api/v1/blobs/{digest_of(stray)}",
                     content=stray).status_code == 201

    # Within the grace period nothing goes.
    report = http.gc(grace_seconds=None, dry_run=False)
    assert report["removed"] == []
    assert ctx.store.exists(digest_of(stray))

    dry = http.gc(grace_seconds=0, dry_run=True)
    assert dry["removed"] == [digest_of(stray)]
    assert ctx.store.exists(digest_of(stray))

    report = http.gc(grace_seconds=0, dry_run=False)
    assert report["removed"] == [digest_of(stray)]
    assert report["removed_bytes"] == len(stray)
    assert not ctx.store.exists(digest_of(stray))
    head = httpx.head(f"{live_server.url}/api/v1/blobs/{digest_of(stray)}")
    assert head.status_code == 404

    # Every referenced blob survives, even far past any grace period.
    later = utcnow() + timedelta(days=365)
    collect_garbage(ctx.sessions, ctx.store, grace_seconds=0, now=later)
    for path, data in read_dir(adapters_dir["lora"]).items():
        assert ctx.store.exists(digest_of(data)), path
    assert http.get_version("kept", 1).version == 1


def test_gc_removes_store_objects_without_a_row(live_server, http):
    ctx = live_server.context
    data = b"orphan object: the server died before recording it"
    with ctx.store.writer(digest_of(data)) as w:
        w.write(data)
        w.commit()
    assert http.gc(grace_seconds=3600, dry_run=False)["orphans_removed"] == []
    later = utcnow() + timedelta(hours=2)
    report = collect_garbage(ctx.sessions, ctx.store, grace_seconds=3600, now=later)
    assert report.orphans_removed == [digest_of(data)]
    assert not ctx.store.exists(digest_of(data))


def test_push_survives_gc_between_head_and_create(http, live_server, settings, adapters_dir,
                                                  tmp_path):
    """A blob HEAD found (old, unreferenced) is collected before the version is created: the
    client uploads it again and the push still succeeds."""
    import shutil

    from registry.clientside.transfer import push

    src = tmp_path / "adapter"
    shutil.copytree(adapters_dir["lora"], src)
    # Uploads go in path order: the one new file sorts last, so every HEAD has been answered
    # ("stored") before its upload runs the collection.
    (src / "zz-notes.txt").write_text("a new file, so one upload happens")
    for name in ("README.md", "adapter_config.json", "adapter_model.safetensors"):
        data = (src / name).read_bytes()
        httpx.put(f"{live_server.url}/api/v1/blobs/{digest_of(data)}", content=data)

    collected: list[list[str]] = []

    def progress(desc: str, total: int):
        def update(_n: int) -> None:
            if not collected:  # during the first upload, after HEAD said the others exist
                report = collect_garbage(live_server.context.sessions, live_server.context.store,
                                         grace_seconds=0, now=utcnow() + timedelta(days=1))
                collected.append(report.removed)
        return update, lambda: None

    result = push(http, name="raced", directory=src, settings=settings, progress=progress)
    assert len(collected[0]) == 3  # the pre-uploaded blobs were collected mid-push
    assert result.version.version == 1
    out = tmp_path / "pulled"
    from registry.clientside.transfer import pull

    pull(http, ref="raced:1", directory=out)
    assert read_dir(out) == read_dir(src)
