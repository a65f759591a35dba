"""`pull REF DIR --if-changed` and the pull manifest, over HTTP and on the embedded registry, on
both deployment shapes: what a serving node's sidecar polling NAME@production relies on."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from registry.clientside.transfer import push
from registry.config import Settings
from registry.lifecycle.schemas import PromoteIn
from tests.integration.helpers import read_dir

MANIFEST = ".adapter-registry.json"

Run = Callable[..., tuple[int, dict, str]]


@pytest.fixture(params=["http", "embedded"])
def run(request: pytest.FixtureRequest, settings: Settings, monkeypatch) -> Run:
    """The CLI against this test's registry: over --url, or embedded (its settings as env)."""
    for var in ("REGISTRY_URL", "REGISTRY_DATABASE_URL", "REGISTRY_BLOB_URL",
                "REGISTRY_AUTO_MIGRATE"):
        monkeypatch.delenv(var, raising=False)
    prefix: list[str] = []
    if request.param == "http":
        prefix = ["--url", request.getfixturevalue("live_server").url]
    else:
        monkeypatch.setenv("REGISTRY_HOME", str(settings.home))
        if settings.database_url is not None:
            monkeypatch.setenv("REGISTRY_DATABASE_URL", settings.database_url)
            monkeypatch.setenv("REGISTRY_BLOB_URL", str(settings.blob_url))
            monkeypatch.setenv("REGISTRY_AUTO_MIGRATE", "false")

    def invoke(*args: str) -> tuple[int, dict, str]:
        result = CliRunner().invoke(cli, [*prefix, "--json", *args], catch_exceptions=False)
        out = json.loads(result.stdout) if result.stdout.strip() else {}
        return result.exit_code, out, result.stderr

    return invoke


@pytest.fixture
def backend(request: pytest.FixtureRequest, settings: Settings):
    if settings.database_url is None:
        from registry.local import LocalRegistry

        local = LocalRegistry(settings)
        request.addfinalizer(local.close)
        return local
    return request.getfixturevalue("http")


def stamps(directory: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime in ns) of the directory and everything in it."""
    out = {".": (directory.stat().st_ino, directory.stat().st_mtime_ns)}
    for p in sorted(directory.rglob("*")):
        st = p.stat()
        out[p.relative_to(directory).as_posix()] = (st.st_ino, st.st_mtime_ns)
    return out


def test_if_changed_follows_the_alias_and_touches_nothing_otherwise(
        run: Run, backend, settings, tmp_path, adapters_dir):
    v1 = push(backend, name="bot", directory=adapters_dir["lora"], settings=settings).version
    v2 = push(backend, name="bot", directory=adapters_dir["lora_v2"], settings=settings).version
    backend.promote("bot", "production", PromoteIn(version=1))
    serving = tmp_path / "serving" / "bot"

    code, out, err = run("pull", "bot@production", str(serving), "--if-changed")
    assert code == 0, err
    assert (out["name"], out["version"], out["changed"]) == ("bot", 1, True)
    assert sorted(out["files"]) == sorted(f.path for f in v1.files)
    assert read_dir(serving) == read_dir(adapters_dir["lora"])
    manifest = json.loads((serving / MANIFEST).read_text())
    assert (manifest["name"], manifest["version"], manifest["ref"], manifest["requested"]) == (
        "bot", 1, "bot:1", "bot@production")
    assert manifest["content_digest"] == v1.content_digest
    assert {f["path"]: (f["digest"], f["size"]) for f in manifest["files"]} == {
        f.path: (f.digest, f.size) for f in v1.files}

    # Same version: exit 0, nothing rewritten (not even the manifest).
    before = stamps(serving)
    code, out, err = run("pull", "bot@production", str(serving), "--if-changed")
    assert code == 0, err
    assert (out["version"], out["changed"]) == (1, False)
    assert sorted(out["files"]) == sorted(f.path for f in v1.files)
    assert stamps(serving) == before

    # A promotion changes what the same command writes: v2, swapped in whole.
    backend.promote("bot", "production", PromoteIn(version=2))
    code, out, err = run("pull", "bot@production", str(serving), "--if-changed")
    assert code == 0, err
    assert (out["version"], out["changed"]) == (2, True)
    assert read_dir(serving) == read_dir(adapters_dir["lora_v2"])
    assert json.loads((serving / MANIFEST).read_text())["content_digest"] == v2.content_digest
    assert [p.name for p in serving.parent.iterdir()] == ["bot"]  # no staging or old copy left

    # A file no longer as pulled (truncated): pulled again rather than trusted.
    weights = serving / "adapter_model.safetensors"
    os.truncate(weights, 10)
    code, out, err = run("pull", "bot@production", str(serving), "--if-changed")
    assert code == 0 and out["changed"] is True, err
    assert read_dir(serving) == read_dir(adapters_dir["lora_v2"])

    # A pulled directory pushed again: the manifest is not one of its files.
    again = push(backend, name="bot", directory=serving, settings=settings).version
    assert again.content_digest == v2.content_digest
    assert MANIFEST not in {f.path for f in again.files}


def test_plain_pull_writes_the_manifest_and_foreign_directories_are_kept(
        run: Run, backend, settings, tmp_path, adapters_dir):
    push(backend, name="bot", directory=adapters_dir["lora"], settings=settings)
    plain = tmp_path / "plain"
    code, out, err = run("pull", "bot:1", str(plain))
    assert code == 0 and out["changed"] is True, err
    assert json.loads((plain / MANIFEST).read_text())["version"] == 1
    # --if-changed on what a plain pull left: already there.
    code, out, _ = run("pull", "bot", str(plain), "--if-changed")
    assert (code, out["changed"]) == (0, False)

    # A non-empty directory no pull wrote is still refused, and left alone.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    code, _, err = run("pull", "bot:1", str(mine), "--if-changed")
    assert code == 1 and "not empty" in err and err.count("\n") == 1, err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    # A manifest that is not ours (garbage) does not make it replaceable either.
    (mine / MANIFEST).write_text("{not json")
    code, _, err = run("pull", "bot:1", str(mine), "--if-changed")
    assert code == 1 and "not empty" in err, err
    code, out, err = run("pull", "bot:1", str(mine), "--if-changed", "--force")
    assert code == 0 and out["changed"] is True, err
    assert read_dir(mine) == read_dir(adapters_dir["lora"])

    code, _, err = run("pull", "bot:1", str(tmp_path / "e"), "--if-changed",
                       "--export-base", "tiny-llama")
    assert code == 1 and "--if-changed" in err, err
    code, _, err = run("pull", "bot@production", str(tmp_path / "n"), "--if-changed")
    assert code == 3, err
    assert not (tmp_path / "n").exists()
