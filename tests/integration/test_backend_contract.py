"""One scenario suite for the RegistryBackend contract, run against both implementations.

``HttpRegistry`` (a live server) and ``LocalRegistry`` (the embedded registry) must answer
every call the same way, errors included, on SQLite + local store and PostgreSQL + S3, the
way tests/integration/test_blob_store.py runs one suite against both stores.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry import errors
from registry.backend import RegistryBackend
from registry.clientside.transfer import pull, push, register_base_dir
from registry.compat.schemas import CompatibleBaseOut, CompatibleVersionOut
from registry.config import Settings
from registry.exports.schemas import CreateExportIn
from tests.integration.helpers import read_dir


@pytest.fixture(params=["http", "local"])
def backend(request: pytest.FixtureRequest, settings: Settings) -> Iterator[RegistryBackend]:
    if request.param == "http":
        yield request.getfixturevalue("http")
        return
    from registry.local import LocalRegistry

    local = LocalRegistry(settings)
    try:
        yield local
    finally:
        local.close()


def _same_tree(a: Path, b: Path) -> bool:
    digest = {p: hashlib.sha256(d).hexdigest() for p, d in read_dir(a).items()}
    return digest == {p: hashlib.sha256(d).hexdigest() for p, d in read_dir(b).items()}


@pytest.fixture
def family(backend: RegistryBackend, settings: Settings, adapters_dir, base_dirs):
    """A base, a version and its child, pushed through the backend under test."""
    register_base_dir(backend, name="tiny-llama", directory=base_dirs["llama"], settings=settings)
    push(backend, name="bot", directory=adapters_dir["lora"], settings=settings,
         base_model="tiny-llama", metadata={"dataset": "d1"}, idempotency_key="run-1")
    push(backend, name="bot", directory=adapters_dir["lora_v2"], settings=settings,
         base_model="tiny-llama", parent="bot:1")
    return backend


def test_push_pull_show_list(family: RegistryBackend, adapters_dir, tmp_path, settings):
    v1 = family.get_version("bot", 1)
    assert (v1.name, v1.version, v1.status, v1.base_model) == ("bot", 1, "registered",
                                                               "tiny-llama")
    assert v1.metadata == {"dataset": "d1"}
    assert v1.compatibility is not None and v1.compatibility.compatible
    assert family.get_version("bot", None).version == 2
    assert [v.version for v in family.list_versions("bot")] == [1, 2]
    [adapter] = family.list_adapters()
    assert (adapter.name, adapter.latest_version, adapter.version_count) == ("bot", 2, 2)

    version, written = pull(family, ref="bot:1", directory=tmp_path / "out")
    assert version.version == 1 and sorted(written) == sorted(read_dir(adapters_dir["lora"]))
    assert _same_tree(tmp_path / "out", adapters_dir["lora"])

    again = push(family, name="bot", directory=adapters_dir["lora"], settings=settings,
                 base_model="tiny-llama", metadata={"dataset": "d1"}, idempotency_key="run-1")
    assert (again.created, again.version.version, again.uploaded) == (False, 1, [])


def test_lineage(family: RegistryBackend):
    lin = family.lineage("bot", 1)
    assert [d.ref for d in lin.descendants] == ["bot:2"] and lin.ancestors == []
    up = family.lineage("bot", 2)
    assert [a.ref for a in up.ancestors] == ["bot:1"] and not up.truncated


def test_compat_both_ways(family: RegistryBackend):
    verdict = family.compat_verdict("bot", 1, base="tiny-llama")
    assert (verdict.compatible, verdict.method, verdict.base) == (True, "static", "tiny-llama")
    assert verdict.reasons == []
    assert family.compatible_versions(base="tiny-llama") == [
        CompatibleVersionOut(name="bot", version=1), CompatibleVersionOut(name="bot", version=2)]
    base = family.get_base("tiny-llama")
    assert family.compatible_bases("bot", None) == [
        CompatibleBaseOut(name="tiny-llama", revision=base.revision)]


def test_export_record_and_list(family: RegistryBackend, base_dirs, settings, tmp_path,
                                request: pytest.FixtureRequest):
    # Any stored safetensors checkpoint files stand in for a merge's output here.
    from registry.clientside.transfer import upload_files

    files, _, _ = upload_files(family, base_dirs["llama"], sorted(read_dir(base_dirs["llama"])),
                               None)
    body = CreateExportIn(name="bot", version=1, base="tiny-llama",
                          base_revision=family.get_base("tiny-llama").revision,
                          dtype="float32", files=files)
    export, created = family.create_export(body)
    assert created and export.dtype == "float32" and export.name == "bot"
    # Who recorded it is the registry's to say: no authentication over HTTP yet (anyone), the
    # embedded registry itself otherwise; only the latter is an identity a client can trust.
    embedded = request.node.callspec.params["backend"] == "local"
    assert export.provenance == ("embedded" if embedded else "anonymous")
    assert export.created_by is None
    assert family.export_provenance() == ("embedded" if embedded else None)
    assert family.create_export(body)[1] is False
    [listed] = family.list_exports("bot", 1, base="tiny-llama", dtype="float32")
    assert {f.path: f.digest for f in listed.files} == files
    assert family.list_exports("bot", 2) == []
    assert [e.dtype for e in family.get_version("bot", 1).exports] == ["float32"]


def test_gc_keeps_referenced_blobs(family: RegistryBackend, adapters_dir, tmp_path):
    report = family.gc(grace_seconds=0, dry_run=True)
    assert report["dry_run"] is True and report["removed"] == []
    report = family.gc(grace_seconds=0, dry_run=False)
    assert report["removed"] == []
    pull(family, ref="bot:2", directory=tmp_path / "v2")
    assert _same_tree(tmp_path / "v2", adapters_dir["lora_v2"])


def test_blob_calls(family: RegistryBackend, tmp_path):
    data = b"contract blob"
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    assert family.blob_exists(digest) is False
    family.upload_blob(digest, path)
    assert family.blob_exists(digest) is True
    assert family.read_blob_range(digest, 2, 4) == data[2:6]
    assert family.read_blob_range(digest, len(data) + 10, 4) == b""

    class Sink:
        def __init__(self) -> None:
            self.parts: list[bytes] = []

        def write(self, chunk: bytes) -> int:
            self.parts.append(bytes(chunk))
            return len(chunk)

    sink = Sink()
    family.download_blob(digest, sink)  # type: ignore[arg-type]
    assert b"".join(sink.parts) == data
    local = family.local_blob_path(digest)
    assert local is None or local.read_bytes() == data  # an optional capability


ERROR_CASES = [
    ("no adapter", lambda b: b.get_version("nope", 1), errors.AdapterNotFound),
    ("no version", lambda b: b.get_version("bot", 9), errors.VersionNotFound),
    ("no base", lambda b: b.get_base("nope"), errors.BaseModelNotFound),
    ("verdict on no base", lambda b: b.compat_verdict("bot", 1, base="nope"),
     errors.BaseModelNotFound),
    ("no blob", lambda b: b.download_blob("sha256:" + "0" * 64, None), errors.BlobNotFound),
    ("bad name", lambda b: b.list_versions("Bad Name"), errors.InvalidName),
    ("bad digest", lambda b: b.blob_exists("md5:abc"), errors.InvalidDigest),
    ("export of no version", lambda b: b.list_exports("bot", 7), errors.VersionNotFound),
]


@pytest.mark.parametrize(("what", "call", "expected"), ERROR_CASES,
                         ids=[c[0] for c in ERROR_CASES])
def test_errors_are_the_same_classes(family: RegistryBackend, what, call, expected):
    with pytest.raises(expected) as exc:
        call(family)
    assert type(exc.value) is expected, what
    assert exc.value.detail


def test_conflicts_are_the_same(family: RegistryBackend, adapters_dir, settings):
    with pytest.raises(errors.IdempotencyConflict):
        push(family, name="bot", directory=adapters_dir["dora"], settings=settings,
             idempotency_key="run-1")
    with pytest.raises(errors.UnsafeFormat):
        bad = adapters_dir["lora"].parent / "pickled"
        bad.mkdir(exist_ok=True)
        (bad / "adapter_config.json").write_bytes(
            (adapters_dir["lora"] / "adapter_config.json").read_bytes())
        (bad / "adapter_model.bin").write_bytes(b"\x80\x04 pickle")
        push(family, name="bot", directory=bad, settings=settings)
    assert [v.version for v in family.list_versions("bot")] == [1, 2]


def test_scores_record_and_show(family: RegistryBackend):
    from registry.evals.schemas import RecordScoresIn

    recorded = family.record_scores("bot", 1, RecordScoresIn(
        suite="ppl-support", scores={"perplexity": 9.5, "tokens": 1200}, n=32))
    assert [(s.suite, s.metric, s.value, s.source, s.base) for s in recorded] == [
        ("ppl-support", "perplexity", 9.5, "ci", "tiny-llama"),
        ("ppl-support", "tokens", 1200.0, "ci", "tiny-llama")]
    family.record_scores("bot", 1, RecordScoresIn(suite="ppl-support",
                                                  scores={"perplexity": 9.1}))
    shown = {(s.suite, s.metric): s.value for s in family.get_version("bot", 1).scores}
    assert shown == {("ppl-support", "perplexity"): 9.1, ("ppl-support", "tokens"): 1200.0}
    assert family.get_version("bot", 2).scores == []
    for bad in ({"perplexity": float("nan")}, {"perplexity": float("inf")}, {"bad name!": 1.0},
                {}):
        with pytest.raises(errors.InvalidInput):
            family.record_scores("bot", 1, RecordScoresIn(suite="ppl-support", scores=bad))
    with pytest.raises(errors.InvalidInput):
        family.record_scores("bot", 1, RecordScoresIn(suite="Bad.Suite", scores={"x": 1}))
    with pytest.raises(errors.BaseModelNotFound):
        family.record_scores("bot", 1, RecordScoresIn(suite="s", scores={"x": 1}, base="nope"))
    assert len(family.get_version("bot", 1).scores) == 2  # nothing recorded by the refusals


def test_events_page_through_version_creations(family: RegistryBackend):
    page = family.list_events(after=0, limit=1)
    [first] = page.events
    assert (first.type, first.adapter, first.version) == ("version.created", "bot", 1)
    assert first.payload["base_model"] == "tiny-llama"
    rest = family.list_events(after=page.next_after or 0)
    assert [(e.type, e.version) for e in rest.events] == [("version.created", 2)]
    assert rest.events[0].payload["parent"] == "bot:1"
    assert family.list_events(after=rest.next_after or 0).events == []
    assert family.list_events(types=("alias.promoted",)).events == []
    with pytest.raises(errors.InvalidInput):
        family.list_events(limit=0)


def test_pins(family: RegistryBackend, tmp_path):
    stored = family.get_version("bot", 1).files[0].digest
    absent = "sha256:" + "1" * 64
    assert family.pin_blobs([stored, absent], seconds=60) == [absent]
    assert family.pin_blobs([], seconds=60) == []
    for seconds in (0, 3601):
        with pytest.raises(errors.InvalidInput):
            family.pin_blobs([stored], seconds=seconds)
    with pytest.raises(errors.InvalidDigest):
        family.pin_blobs(["sha256:xyz"], seconds=60)
    data = b"pinned upload"
    path = tmp_path / "p.bin"
    path.write_bytes(data)
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    family.upload_blob(digest, path, pin_seconds=60)
    assert family.gc(grace_seconds=0, dry_run=False)["removed"] == []  # pinned: kept
    assert family.blob_exists(digest)
def test_aliases_and_their_errors(family: RegistryBackend):
    from registry.lifecycle.schemas import AliasChangeIn, PolicyIn, PromoteIn, RollbackIn

    out = family.promote("bot", "production", PromoteIn(version=1, actor="ci"))
    assert (out.version, out.previous, out.action) == (1, None, "promote")
    assert family.promote("bot", "production", PromoteIn(version="bot:2")).previous == 1
    assert family.resolve_alias("bot", "production") == family.get_version("bot", 2)
    assert [(a.alias, a.version) for a in family.list_aliases("bot")] == [("production", 2)]
    assert family.rollback("bot", "production", RollbackIn()).version == 1
    assert [e.action for e in family.history("bot")] == ["rollback", "promote", "promote"]
    assert family.archive("bot", 2, AliasChangeIn()).status == "archived"
    assert family.set_policy("bot", "production", PolicyIn(protected=True)).protected
    family.set_policy(None, "staging", PolicyIn(require_validated=True))
    assert [p.scope for p in family.list_policies("bot")] == ["adapter", "default"]
    cases = [
        (lambda: family.resolve_alias("bot", "canary"), errors.AliasNotFound),
        (lambda: family.resolve_alias("bot", "Bad"), errors.InvalidAlias),
        (lambda: family.promote("bot", "production", PromoteIn(version=2)),
         errors.VersionArchived),
        (lambda: family.promote("bot", "canary", PromoteIn(version=1, expect_current=2)),
         errors.AliasMoved),
        (lambda: family.promote("bot", "canary", PromoteIn(version=1)), None),
        (lambda: family.rollback("bot", "canary", RollbackIn()), errors.NoRollbackTarget),
        (lambda: family.delete_alias("bot", "production", AliasChangeIn()),
         errors.AliasProtected),
        (lambda: family.archive("bot", 1, AliasChangeIn()), errors.VersionAliased),
        (lambda: family.delete_policy(None, "production"), errors.PolicyNotFound),
        (lambda: family.promote("bot", "staging", PromoteIn(version=1)), errors.GateFailed),
    ]
    for call, expected in cases:
        if expected is None:
            call()
            continue
        with pytest.raises(expected) as exc:
            call()
        assert type(exc.value) is expected and exc.value.detail
    assert family.delete_alias("bot", "canary", AliasChangeIn()).previous == 1
