"""The lifecycle from the CLI: NAME@ALIAS in every command that takes a REF, promote, rollback,
history, policies, archive, alias rm; JSON shapes, exit codes and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_cli import assert_one_line_error, run
from tests.integration.helpers import read_dir


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "registry-home"
    monkeypatch.setenv("REGISTRY_HOME", str(home))
    for var in ("REGISTRY_URL", "REGISTRY_DATABASE_URL", "REGISTRY_BLOB_URL"):
        monkeypatch.delenv(var, raising=False)
    return home

PROMOTE_KEYS = {"name", "alias", "version", "previous", "gates", "action"}
HISTORY_KEYS = {"id", "alias", "action", "from_version", "to_version", "actor", "reason", "at",
                "gates"}


def test_alias_in_every_ref_command(home, adapters_dir, base_dirs, live_server, tmp_path,
                                    monkeypatch):
    monkeypatch.setenv("REGISTRY_ACTOR", "release-bot")  # the actor a move records
    for n, url in enumerate(([], ["--url", live_server.url])):
        out_dir = tmp_path / f"run{n}"
        assert run(*url, "base", "register", "tiny-llama", str(base_dirs["llama"]))[0] == 0
        assert run(*url, "push", "bot", str(adapters_dir["lora"]), "--base", "tiny-llama")[0] == 0

        code, out, err = run(*url, "--json", "promote", "bot:1", "--alias", "production",
                             "--reason", "first")
        assert code == 0, err
        assert set(out) == PROMOTE_KEYS and (out["version"], out["previous"]) == (1, None)
        assert [g["gate"] for g in out["gates"]] == ["not-failed", "compatible"]

        code, out, err = run(*url, "--json", "show", "bot@production")
        assert (code, out["version"], out["aliases"]) == (0, 1, ["production"]), err
        code, out, err = run(*url, "--json", "pull", "bot@production", str(out_dir / "pulled"))
        assert code == 0 and out["version"] == 1, err
        assert read_dir(out_dir / "pulled") == read_dir(adapters_dir["lora"])
        code, out, err = run(*url, "--json", "compat", "bot@production", "--base", "tiny-llama")
        assert code == 0 and out["compatible"] and out["version"] == 1, err
        code, out, _ = run(*url, "--json", "compat", "bot@production")
        assert [b["name"] for b in out] == ["tiny-llama"]
        code, out, err = run(*url, "--json", "eval", "record", "bot@production", "--suite", "s",
                             "perplexity=9")
        assert code == 0 and out["version"] == 1, err
        code, out, _ = run(*url, "--json", "evals", "bot@production")
        assert out["version"] == 1 and out["scores"][0]["value"] == 9.0
        # --parent takes an alias too: lineage records the version it points at.
        code, out, err = run(*url, "--json", "push", "bot", str(adapters_dir["lora_v2"]),
                             "--base", "tiny-llama", "--parent", "bot@production")
        assert code == 0 and out["version"] == 2, err
        code, out, _ = run(*url, "--json", "lineage", "bot@production")
        assert out["ref"] == "bot:1" and [d["ref"] for d in out["descendants"]] == ["bot:2"]
        code, out, err = run(*url, "--json", "export", "bot@production", "--base", "tiny-llama",
                             "--out", str(out_dir / "merged"), "--upload")
        assert code == 0 and out["files"], err
        code, out, err = run(*url, "--json", "pull", "bot@production", str(out_dir / "copy"),
                             "--export-base", "tiny-llama")
        assert code == 0 and out["version"] == 1 and out["export"]["base"] == "tiny-llama", err

        # Moves: another alias as the source, rollback, history, list and show.
        assert run(*url, "promote", "bot@production", "--alias", "staging")[0] == 0
        assert run(*url, "promote", "bot:2", "--alias", "production")[0] == 0
        code, out, err = run(*url, "--json", "rollback", "bot", "--alias", "production")
        assert code == 0, err
        assert out == {"name": "bot", "alias": "production", "version": 1, "previous": 2}
        code, out, _ = run(*url, "--json", "history", "bot")
        assert all(set(e) == HISTORY_KEYS for e in out)
        assert [(e["alias"], e["action"], e["from_version"], e["to_version"]) for e in out] == [
            ("production", "rollback", 2, 1), ("production", "promote", 1, 2),
            ("staging", "promote", None, 1), ("production", "promote", None, 1)]
        assert out[-1]["actor"] == "release-bot" and out[-1]["reason"] == "first"
        code, out, _ = run(*url, "--json", "history", "bot", "--alias", "staging", "--limit", "5")
        assert len(out) == 1
        code, text, _ = run(*url, "history", "bot")
        assert "production\trollback\t2 -> 1\tby release-bot" in text
        code, out, _ = run(*url, "--json", "list")
        assert out[0]["aliases"] == {"production": 1, "staging": 1}
        code, text, _ = run(*url, "list")
        assert text.strip().endswith("production=1 staging=1")
        code, text, _ = run(*url, "list", "bot")
        assert text.splitlines()[0].endswith("@production,@staging")
        code, text, _ = run(*url, "show", "bot@staging")
        assert "aliases:      bot@production, bot@staging" in text

        # Gates from a policy; compare-and-set; archive; alias rm.
        code, out, err = run(*url, "--json", "policy", "set", "bot", "--alias", "staging",
                             "--max", "s.perplexity=8.5", "--no-regression", "s.perplexity=0.5",
                             "--require-base", "tiny-llama")
        assert code == 0 and out["max_scores"] == {"s.perplexity": 8.5}, err
        assert out["no_regression"] == {"s.perplexity": 0.5}
        code, _, err = run(*url, "promote", "bot:2", "--alias", "staging")
        assert_one_line_error(code, err, code=6, fragment="gate failed: s.perplexity: no score")
        code, out, _ = run(*url, "--json", "policy", "show", "bot")
        assert [(p["alias"], p["scope"]) for p in out] == [("staging", "adapter")]
        code, _, err = run(*url, "promote", "bot:2", "--alias", "production",
                           "--expect-current", "2")
        assert_one_line_error(code, err, code=4, fragment="points at bot:1, not bot:2")
        code, _, err = run(*url, "archive", "bot@production")
        assert_one_line_error(code, err, code=4, fragment="bot@production, bot@staging point")
        code, out, _ = run(*url, "--json", "alias", "rm", "bot", "staging")
        assert out == {"name": "bot", "alias": "staging", "previous": 1}
        assert run(*url, "promote", "bot:2", "--alias", "production", "--force")[0] == 0
        code, out, _ = run(*url, "--json", "archive", "bot:1")
        assert code == 0 and out["status"] == "archived"
        code, out, _ = run(*url, "--json", "alias", "list", "bot")
        assert [(a["alias"], a["version"]) for a in out] == [("production", 2)]

        # Each run starts afresh: the next one uses the server's registry.
        assert run(*url, "policy", "rm", "bot", "--alias", "staging")[0] == 0


def test_lifecycle_errors_are_one_line(home, adapters_dir):
    assert run("push", "bot", str(adapters_dir["lora"]))[0] == 0
    assert run("push", "other", str(adapters_dir["lora"]))[0] == 0
    assert run("promote", "bot:1", "--alias", "production")[0] == 0
    cases = [
        (["show", "bot@canary"], 3, "no alias 'canary' on adapter 'bot'"),
        (["pull", "bot@Prod", "x"], 1, "invalid alias"),
        (["promote", "bot:1", "--alias", "Prod"], 1, "invalid alias"),
        (["promote", "bot:9", "--alias", "production"], 3, "no version bot:9"),
        (["promote", "ghost:1", "--alias", "production"], 3, "no adapter 'ghost'"),
        (["promote", "bot:1", "--alias", "canary", "--expect-current", "x"], 1,
         "--expect-current"),
        (["rollback", "bot", "--alias", "production"], 4, "nothing to roll back"),
        (["rollback", "bot", "--alias", "canary"], 3, "no alias 'canary'"),
        (["rollback", "bot", "--alias", "production", "--to", "other:1"], 1,
         "is a version of 'other'"),
        (["rollback", "bot", "--alias", "production", "--to", "1"], 4, "already points at"),
        (["alias", "rm", "bot", "canary"], 3, "no alias 'canary'"),
        (["history", "ghost"], 3, "no adapter 'ghost'"),
        (["history", "bot", "--alias", "Bad"], 1, "invalid alias"),
        (["archive", "bot:1"], 4, "bot@production points at"),
        (["policy", "set", "bot", "--alias", "production", "--max", "ppl"], 1,
         "SUITE.METRIC=VALUE"),
        (["policy", "set", "bot", "--alias", "production", "--max", "ppl=1"], 1,
         "expected SUITE.METRIC"),
        (["policy", "set", "bot", "--alias", "production", "--min", "s.acc=nan"], 1,
         "not finite"),
        (["policy", "set", "bot", "--alias", "production", "--require-base", "nope"], 3,
         "no base model 'nope'"),
        (["policy", "set", "--alias", "production"], 1, "give NAME"),
        (["policy", "rm", "bot", "--alias", "production"], 3, "no promotion policy"),
    ]
    for args, code, fragment in cases:
        exit_code, _, err = run(*args)
        assert_one_line_error(exit_code, err, code=code, fragment=fragment)
    code, out, _ = run("--json", "history", "bot")
    assert len(out) == 1  # nothing above changed anything
    assert run("--json", "policy", "show", "bot")[1] == []
