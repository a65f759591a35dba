"""Aliases, gated promotion, rollback, history and archive, through both backends.

Every scenario runs against ``HttpRegistry`` (a live server) and ``LocalRegistry`` (embedded),
on SQLite + local store and PostgreSQL + S3. Version statuses ``validated`` / ``failed`` are set
with test-only SQL (``set_status``): the validation worker that sets them lives in another
branch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from pydantic import ValidationError
from sqlalchemy import create_engine, text

from registry import errors
from registry.adapters.schemas import CreateVersionIn
from registry.backend import RegistryBackend
from registry.clientside.transfer import push, register_base_dir
from registry.config import Settings
from registry.evals.schemas import RecordScoresIn
from registry.lifecycle.schemas import AliasChangeIn, PolicyIn, PromoteIn, RollbackIn


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


def set_status(settings: Settings, name: str, version: int, status: str) -> None:
    """Test-only: what the validation worker does to a version's status (another branch)."""
    engine = create_engine(settings.resolved_database_url)
    try:
        with engine.begin() as conn:
            done = conn.execute(text(
                "UPDATE adapter_versions SET status = :s WHERE version = :v AND adapter_id = "
                "(SELECT id FROM adapters WHERE name = :n)"), {"s": status, "v": version,
                                                                "n": name})
            assert done.rowcount == 1
    finally:
        engine.dispose()


@pytest.fixture
def reg(backend: RegistryBackend, settings: Settings, adapters_dir, base_dirs) -> RegistryBackend:
    """bare:1 (pushed before any base: linked to none), bot:1..4 (one LoRA, linked to
    tiny-llama), bot:5 (a GPT-2 LoRA linked to tiny-llama: statically incompatible), other:1."""
    bare = push(backend, name="bare", directory=adapters_dir["gpt2_lora"], settings=settings)
    assert bare.version.base_model is None
    register_base_dir(backend, name="tiny-llama", directory=base_dirs["llama"],
                      settings=settings)
    first = push(backend, name="bot", directory=adapters_dir["lora"], settings=settings,
                 base_model="tiny-llama")
    files = {f.path: f.digest for f in first.version.files}
    for i in range(2, 5):  # the blobs are stored: only the create call
        backend.create_version("bot", CreateVersionIn(files=files, base_model="tiny-llama",
                                                      metadata={"i": str(i)}))
    gpt2 = {f.path: f.digest for f in bare.version.files}
    backend.create_version("bot", CreateVersionIn(files=gpt2, base_model="tiny-llama"))
    backend.create_version("other", CreateVersionIn(files=files, base_model="tiny-llama"))
    return backend


def promote(b: RegistryBackend, version: int | str, alias: str = "production", name: str = "bot",
            **kw):
    return b.promote(name, alias, PromoteIn(version=version, actor="alice", **kw))


def moves(b: RegistryBackend, name: str = "bot", alias: str | None = None):
    return [(e.action, e.from_version, e.to_version) for e in b.history(name, alias=alias)]


def lifecycle_events(b: RegistryBackend) -> list[tuple[str, str | None, int | None]]:
    return [(e.type, e.alias, e.version) for e in b.list_events(limit=1000).events
            if e.type != "version.created"]


def test_promote_resolve_rollback_history(reg: RegistryBackend):
    first = promote(reg, 1, reason="first release")
    assert (first.version, first.previous, first.action) == (1, None, "promote")
    assert [g.gate for g in first.gates] == ["not-failed", "compatible"]
    assert all(g.passed for g in first.gates)
    assert promote(reg, "bot:2").previous == 1
    out = promote(reg, "bot@production", alias="staging")  # an alias names a version too
    assert (out.alias, out.version) == ("staging", 2)
    third = promote(reg, 3)
    assert (third.version, third.previous) == (3, 2)

    shown = reg.resolve_alias("bot", "production")
    assert shown == reg.get_version("bot", 3)  # the same version object
    assert shown.aliases == ["production"] and reg.get_version("bot", 2).aliases == ["staging"]
    assert [(a.alias, a.version, a.updated_by) for a in reg.list_aliases("bot")] == [
        ("production", 3, "alice"), ("staging", 2, "alice")]
    [adapter] = [a for a in reg.list_adapters() if a.name == "bot"]
    assert adapter.aliases == {"production": 3, "staging": 2}
    again = promote(reg, 3)  # already there: nothing recorded
    assert (again.action, again.previous, again.gates) == ("none", 3, [])

    back = reg.rollback("bot", "production", RollbackIn(actor="bob", reason="bad outputs"))
    assert (back.version, back.previous) == (2, 3)
    # A rollback is a move too: the move that made bot:2 holder came from bot:3.
    assert reg.rollback("bot", "production", RollbackIn()).version == 3
    assert reg.rollback("bot", "production", RollbackIn(to=1)).version == 1
    with pytest.raises(errors.NoRollbackTarget, match="never held"):
        reg.rollback("bot", "production", RollbackIn(to=4))

    history = reg.history("bot", alias="production")
    assert [(e.action, e.from_version, e.to_version) for e in history] == [
        ("rollback", 3, 1), ("rollback", 2, 3), ("rollback", 3, 2), ("promote", 2, 3),
        ("promote", 1, 2), ("promote", None, 1)]
    assert (history[3].actor, history[5].reason) == ("alice", "first release")
    assert (history[2].actor, history[2].reason, history[2].gates) == ("bob", "bad outputs", [])
    assert [g.gate for g in history[3].gates] == ["not-failed", "compatible"]
    assert {e.alias for e in reg.history("bot")} == {"production", "staging"}
    assert [e.to_version for e in reg.history("bot", alias="production", limit=2)] == [1, 3]
    assert lifecycle_events(reg) == [
        ("alias.promoted", "production", 1), ("alias.promoted", "production", 2),
        ("alias.promoted", "staging", 2), ("alias.promoted", "production", 3),
        ("alias.rolled_back", "production", 2), ("alias.rolled_back", "production", 3),
        ("alias.rolled_back", "production", 1)]
    promoted = reg.list_events(types=("alias.promoted",)).events[0]
    assert promoted.actor == "alice" and promoted.payload["from_version"] is None

    deleted = reg.delete_alias("bot", "staging", AliasChangeIn(actor="carol"))
    assert deleted.previous == 2
    with pytest.raises(errors.AliasNotFound):
        reg.resolve_alias("bot", "staging")
    assert moves(reg, alias="staging") == [("delete", 2, None), ("promote", None, 2)]
    assert reg.list_events(types=("alias.deleted",)).events[0].actor == "carol"

    # --expect-current: compare-and-set for CI.
    assert promote(reg, 1, alias="canary", expect_current="none").version == 1
    with pytest.raises(errors.AliasMoved, match="points at bot:1, not none"):
        promote(reg, 2, alias="canary", expect_current="none")
    with pytest.raises(errors.AliasMoved, match="points at bot:1, not bot:3"):
        promote(reg, 2, alias="canary", expect_current=3)
    assert promote(reg, 2, alias="canary", expect_current=1).previous == 1
    assert moves(reg, alias="canary") == [("promote", 1, 2), ("promote", None, 1)]


def test_rollback_skips_archived_and_archive_rules(reg: RegistryBackend):
    for v in (1, 2, 3):
        promote(reg, v)
    with pytest.raises(errors.VersionAliased, match="bot@production"):
        reg.archive("bot", 3, AliasChangeIn())
    archived = reg.archive("bot", 2, AliasChangeIn(actor="alice", reason="leaks PII"))
    assert archived.status == "archived"
    assert reg.archive("bot", 2, AliasChangeIn()).status == "archived"  # no-op
    [event] = reg.list_events(types=("version.archived",)).events
    assert (event.version, event.actor, event.payload["previous_status"]) == (
        2, "alice", "registered")

    back = reg.rollback("bot", "production", RollbackIn())
    assert (back.version, back.previous) == (1, 3)  # bot:2 is archived: skipped
    with pytest.raises(errors.VersionArchived):
        promote(reg, 2)
    with pytest.raises(errors.VersionArchived):
        promote(reg, 2, force=True)  # --force skips gates, not archiving
    with pytest.raises(errors.VersionArchived):
        reg.rollback("bot", "production", RollbackIn(to=2))
    # The rollback that made bot:1 holder came from bot:3: rolling back again returns there.
    assert reg.rollback("bot", "production", RollbackIn()).version == 3
    promote(reg, 1, alias="canary")
    with pytest.raises(errors.NoRollbackTarget, match="no earlier version"):
        reg.rollback("bot", "canary", RollbackIn())
    # From bot:4 back over archived bot:1 there is nothing older: refused, nothing changed.
    promote(reg, 4, alias="canary")
    reg.archive("bot", 1, AliasChangeIn())
    with pytest.raises(errors.NoRollbackTarget, match=r"archived, skipped: bot:1"):
        reg.rollback("bot", "canary", RollbackIn())
    assert reg.resolve_alias("bot", "canary").version == 4


def test_gates(reg: RegistryBackend, settings, base_dirs):
    """Each kind of gate passing and failing; one scenario, so the fixture is built once."""
    always_rules_and_force(reg, settings)
    policy_gates(reg, settings)
    no_regression_in_both_directions(reg, settings, base_dirs)


def always_rules_and_force(reg: RegistryBackend, settings):
    set_status(settings, "bot", 2, "failed")
    with pytest.raises(errors.GateFailed) as exc:
        promote(reg, 2)
    assert exc.value.detail == "gate failed: not validated (status: failed)"
    with pytest.raises(errors.GateFailed, match="incompatible with its base tiny-llama"):
        promote(reg, 5)
    # No linked base: no compatibility check.
    assert promote(reg, "bare:1", name="bare", alias="staging").version == 1
    assert moves(reg) == []  # refusals change nothing

    forced = promote(reg, 2, alias="canary", force=True, reason="hotfix")
    assert forced.action == "force"
    assert [(g.gate, g.passed) for g in forced.gates] == [("not-failed", False),
                                                           ("compatible", True)]
    [entry] = reg.history("bot")
    assert (entry.action, entry.reason, [g.passed for g in entry.gates]) == (
        "force", "hotfix", [False, True])
    assert reg.list_events(types=("alias.promoted",)).events[-1].payload["action"] == "force"


def policy_gates(reg: RegistryBackend, settings):
    score = lambda v, **s: reg.record_scores("bot", v, RecordScoresIn(  # noqa: E731
        suite="ppl-support", scores=s))
    score(1, perplexity=9.2, accuracy=0.9)
    score(2, perplexity=9.81, accuracy=0.95)
    set_status(settings, "bot", 2, "failed")
    reg.set_policy("bot", "production", PolicyIn(
        require_validated=True, max_scores={"ppl-support.perplexity": 9.5},
        min_scores={"ppl-support.accuracy": 0.8}))
    with pytest.raises(errors.GateFailed) as exc:
        promote(reg, 2)
    assert exc.value.detail == (
        "gate failed: ppl-support.perplexity 9.81 > max 9.5; not validated (status: failed)")
    with pytest.raises(errors.GateFailed, match=r"ppl-support.accuracy: no score \(min 0.8\)"):
        promote(reg, 3)
    with pytest.raises(errors.GateFailed, match=r"^gate failed: not validated "
                                                r"\(status: registered\)$"):
        promote(reg, 1)
    set_status(settings, "bot", 1, "validated")
    out = promote(reg, 1)
    assert [(g.gate, g.passed) for g in out.gates] == [
        ("min:ppl-support.accuracy", True), ("max:ppl-support.perplexity", True),
        ("validated", True), ("compatible", True)]
    assert out.gates[1].detail == "ppl-support.perplexity 9.2 <= max 9.5"
    # Only the production policy applies to production: staging has none.
    assert promote(reg, 3, alias="staging").version == 3

    # require-base and protected; a registry-wide default applies where no own policy is.
    with pytest.raises(errors.BaseModelNotFound):
        reg.set_policy(None, "production", PolicyIn(require_base="nope"))
    reg.set_policy(None, "production", PolicyIn(require_base="tiny-llama", protected=True))
    with pytest.raises(errors.GateFailed) as exc:
        promote(reg, "bare:1", name="bare")
    assert exc.value.detail == ("gate failed: linked to no base, policy requires tiny-llama; "
                                "protected alias: a move needs --reason")
    out = promote(reg, 1, name="other", reason="release 1")
    assert [g.gate for g in out.gates] == ["not-failed", "compatible", "base", "protected"]
    with pytest.raises(errors.AliasProtected):
        reg.delete_alias("other", "production", AliasChangeIn())
    [own, default] = [reg.list_policies("bot")[0], reg.list_policies("other")[0]]
    assert (own.scope, own.adapter, own.require_validated) == ("adapter", "bot", True)
    assert (default.scope, default.adapter, default.protected) == ("default", None, True)
    assert [p.alias for p in reg.list_policies(None)] == ["production"]
    reg.delete_policy(None, "production")
    with pytest.raises(errors.PolicyNotFound):
        reg.delete_policy(None, "production")
    assert reg.list_policies("other") == []

    for bad in (PolicyIn(max_scores={"perplexity": 1.0}),  # no SUITE.
                PolicyIn(min_scores={"Bad.Suite.x": 1.0})):
        with pytest.raises(errors.InvalidInput):
            reg.set_policy("bot", "production", bad)
    for values in ({"no_regression": {"s.loss": -1.0}}, {"max_scores": {"s.loss": math.inf}},
                   {"min_scores": {"s.acc": math.nan}}):
        with pytest.raises(ValidationError):  # the same schema checks the HTTP body
            PolicyIn.model_validate(values)
    assert reg.list_policies("bot")[0].max_scores == {"ppl-support.perplexity": 9.5}


def no_regression_in_both_directions(reg: RegistryBackend, settings, base_dirs):
    def score(v: int, base: str | None = None, **s: float) -> None:
        reg.record_scores("bot", v, RecordScoresIn(suite="s", scores=s, base=base))

    set_status(settings, "bot", 2, "registered")  # the always-rules scenario failed it
    reg.set_policy("bot", "beta", PolicyIn(no_regression={"s.perplexity": 0.1,
                                                          "s.accuracy": None}))
    score(1, perplexity=9.0, accuracy=0.80)
    first = promote(reg, 1, alias="beta")
    assert [g.detail for g in first.gates[:2]] == [
        "s.accuracy 0.8: nothing to compare with (new alias)",
        "s.perplexity 9: nothing to compare with (new alias)"]
    score(2, perplexity=9.3, accuracy=0.75)  # perplexity: lower is better; accuracy: higher
    with pytest.raises(errors.GateFailed) as exc:
        promote(reg, 2, alias="beta")
    assert exc.value.detail == (
        "gate failed: s.accuracy 0.75 < 0.8 (bot:1) (higher is better); "
        "s.perplexity 9.3 > 9 (bot:1) + tolerance 0.1 (lower is better)")
    score(2, perplexity=9.05, accuracy=0.85)  # worse, within the tolerance; better accuracy
    out = promote(reg, 2, alias="beta")
    assert [g.passed for g in out.gates] == [True, True, True, True]
    assert out.gates[1].detail == ("s.perplexity 9.05 <= 9 (bot:1) + tolerance 0.1 "
                                   "(lower is better)")
    with pytest.raises(errors.GateFailed, match=r"s\.perplexity: no score"):
        promote(reg, 4, alias="beta")

    # Compared on the same base only: bot:2's newer, better scores on another base (the same
    # weights registered under a second name) do not count against bot:3.
    register_base_dir(reg, name="llama-copy", directory=base_dirs["llama"], settings=settings)
    score(2, base="llama-copy", perplexity=1.0, accuracy=1.0)
    score(3, perplexity=9.1, accuracy=0.85)
    out = promote(reg, 3, alias="beta")
    assert out.gates[1].detail == ("s.perplexity 9.1 <= 9.05 (bot:2) + tolerance 0.1 "
                                   "(lower is better)")


def test_bad_input_changes_nothing(reg: RegistryBackend):
    promote(reg, 1)
    before = (moves(reg), lifecycle_events(reg), reg.resolve_alias("bot", "production").version)
    cases = [
        (lambda: reg.resolve_alias("bot", "canary"), errors.AliasNotFound),
        (lambda: reg.resolve_alias("ghost", "production"), errors.AdapterNotFound),
        (lambda: reg.resolve_alias("bot", "Prod"), errors.InvalidAlias),
        (lambda: reg.resolve_alias("bot", "a/b"), errors.InvalidAlias),
        (lambda: promote(reg, 1, alias="9lives"), errors.InvalidAlias),
        (lambda: promote(reg, 1, alias="x" * 64), errors.InvalidAlias),
        (lambda: promote(reg, 9), errors.VersionNotFound),
        (lambda: promote(reg, "other:1"), errors.InvalidReference),
        (lambda: promote(reg, "bot@canary"), errors.AliasNotFound),
        (lambda: promote(reg, 1, name="ghost"), errors.AdapterNotFound),
        (lambda: reg.rollback("bot", "production", RollbackIn()), errors.NoRollbackTarget),
        (lambda: reg.rollback("bot", "canary", RollbackIn()), errors.AliasNotFound),
        (lambda: reg.rollback("bot", "production", RollbackIn(to="other:1")),
         errors.InvalidReference),
        (lambda: reg.rollback("bot", "production", RollbackIn(to=1)), errors.NoRollbackTarget),
        (lambda: reg.delete_alias("bot", "canary", AliasChangeIn()), errors.AliasNotFound),
        (lambda: reg.history("bot", limit=0), errors.InvalidInput),
        (lambda: reg.history("ghost"), errors.AdapterNotFound),
        (lambda: reg.archive("bot", 1, AliasChangeIn()), errors.VersionAliased),
        (lambda: reg.archive("bot", 99, AliasChangeIn()), errors.VersionNotFound),
        (lambda: reg.set_policy("ghost", "production", PolicyIn()), errors.AdapterNotFound),
    ]
    for call, expected in cases:
        with pytest.raises(expected) as exc:
            call()
        assert type(exc.value) is expected and exc.value.detail
    reg.archive("bot", 4, AliasChangeIn())
    with pytest.raises(errors.VersionArchived):
        promote(reg, 4)
    after = (moves(reg), [e for e in lifecycle_events(reg) if e[0] != "version.archived"],
             reg.resolve_alias("bot", "production").version)
    assert after == before


def test_concurrent_promotions_serialise(http, settings: Settings, adapters_dir):
    """16 promotions of one alias to 16 versions at once, over HTTP (16 server threads): they
    serialise on the adapter row, so the history is one unbroken chain of 16 moves and the
    alias ends where its newest entry says."""
    import threading

    import httpx

    first = push(http, name="bot", directory=adapters_dir["lora"], settings=settings)
    files = {f.path: f.digest for f in first.version.files}
    for i in range(2, 17):
        http.create_version("bot", CreateVersionIn(files=files, metadata={"i": str(i)}))
    start = threading.Barrier(16)
    statuses: list[int] = []

    def move(version: int) -> None:
        start.wait()
        r = httpx.put(f"{http.url}/api/v1/adapters/bot/aliases/production",
                      json={"version": version, "actor": f"ci-{version}"}, timeout=120)
        statuses.append(r.status_code)

    threads = [threading.Thread(target=move, args=(v,)) for v in range(1, 17)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 16
    history = http.history("bot", alias="production")
    assert len(history) == 16 and {e.action for e in history} == {"promote"}
    assert http.resolve_alias("bot", "production").version == history[0].to_version
    chain = list(reversed(history))  # oldest first: each move starts where the last ended
    assert [e.from_version for e in chain] == [None] + [e.to_version for e in chain[:-1]]
    assert sorted(e.to_version for e in chain) == list(range(1, 17))
    assert sorted(e.actor for e in chain) == sorted(f"ci-{v}" for v in range(1, 17))
    events = http.list_events(types=("alias.promoted",)).events
    assert [e.version for e in events] == [e.to_version for e in chain]


def test_resolve_serves_the_current_version_object(http, settings: Settings, adapters_dir):
    """The server keeps version objects by stamp; every change to one shows at once."""
    first = push(http, name="bot", directory=adapters_dir["lora"], settings=settings)
    files = {f.path: f.digest for f in first.version.files}
    http.create_version("bot", CreateVersionIn(files=files))
    promote(http, 1)
    assert http.resolve_alias("bot", "production") == http.get_version("bot", 1)
    assert http.resolve_alias("bot", "production") == http.get_version("bot", 1)  # a hit
    http.record_scores("bot", 1, RecordScoresIn(suite="s", scores={"accuracy": 0.5}))
    assert [s.value for s in http.resolve_alias("bot", "production").scores] == [0.5]
    promote(http, 1, alias="staging")
    assert http.resolve_alias("bot", "production").aliases == ["production", "staging"]
    set_status(settings, "bot", 1, "validated")
    assert http.resolve_alias("bot", "production").status == "validated"
    promote(http, 2)
    assert http.resolve_alias("bot", "production") == http.get_version("bot", 2)
    http.delete_alias("bot", "staging", AliasChangeIn())
    promote(http, 1)
    assert http.resolve_alias("bot", "production") == http.get_version("bot", 1)
    assert http.resolve_alias("bot", "production").aliases == ["production"]


def test_resolve_shows_the_validation_job_as_it_moves(http, settings: Settings, adapters_dir,
                                                      base_dirs):
    """The version object's last validation is part of what a cached resolve must notice:
    queued, claimed (running), released (queued again), claimed by another worker."""
    register_base_dir(http, name="tiny-llama", directory=base_dirs["llama"], settings=settings)
    push(http, name="bot", directory=adapters_dir["lora"], settings=settings,
         base_model="tiny-llama")  # auto-validate queues a job
    promote(http, 1)
    queued = http.resolve_alias("bot", "production").validation
    assert queued is not None and queued.status == "queued"
    claimed = http.claim_job("w1")
    assert claimed is not None
    running = http.resolve_alias("bot", "production").validation
    assert running is not None and (running.status, running.attempts) == ("running", 1)
    http.release_job(claimed.job.id, worker="w1", attempt=claimed.attempt)
    released = http.resolve_alias("bot", "production").validation
    assert released is not None and released.status == "queued"
    assert http.claim_job("w2") is not None
    seen = http.resolve_alias("bot", "production").validation
    assert seen is not None and seen.status == "running"
    assert http.resolve_alias("bot", "production") == http.get_version("bot", 1)
