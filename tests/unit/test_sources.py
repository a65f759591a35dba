"""Referenced base-model sources: parsing, revisions, and the REGISTRY_BASE_SOURCES allowlist."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from registry.config import Settings
from registry.errors import InvalidInput, SourceNotAllowed
from registry.formats.sources import HfRef, S3Ref, SourceAllowlist, check_revision, parse_remote


@pytest.mark.parametrize("revision", ["main", "v1.0", "0123456789abcdef" * 2, "rc_2-final"])
def test_plain_revisions(revision: str) -> None:
    assert check_revision(revision) == revision


@pytest.mark.parametrize("revision", ["../x", "..", "a/../b", "a/b", "refs/pr/1", ".hidden",
                                      "-x", "a..b", "", "a b", "x" * 201, "a\\b", "a\x00"])
def test_path_like_revisions_are_refused(revision: str) -> None:
    with pytest.raises(InvalidInput, match="invalid revision"):
        check_revision(revision)


def test_parse_remote() -> None:
    assert parse_remote("hf://org/repo") == HfRef("org/repo", None)
    assert parse_remote("hf://gpt2@v1") == HfRef("gpt2", "v1")
    assert parse_remote("s3://bucket/a/b/") == S3Ref("bucket", "a/b")
    for bad in ("hf://org/repo@../../etc", "hf://org/repo@", "hf://../x", "s3://b/../x",
                "s3://B/x", "gopher://x", "/local/dir"):
        with pytest.raises(InvalidInput):
            parse_remote(bad)


ALLOW = SourceAllowlist.parse(" s3://models/, s3://team/llama ,hf://My-Org/,hf://acme/tiny ,")


@pytest.mark.parametrize(("source", "allowed"), [
    ("s3://models", True),
    ("s3://models/any/thing", True),
    ("s3://models-private/x", False),
    ("s3://team/llama", True),
    ("s3://team/llama/7b", True),
    ("s3://team/llama-private", False),  # whole segments only
    ("s3://team", False),
    ("s3://team/other", False),
    ("hf://my-org/model", True),
    ("hf://MY-ORG/model@main", True),  # Hub ids are case-insensitive
    ("hf://my-org-evil/model", False),
    ("hf://my-org", False),  # a repository named like the owner, not under it
    ("hf://acme/tiny", True),
    ("hf://acme/TINY", True),
    ("hf://acme/tiny-private", False),
    ("hf://acme/other", False),
    ("hf://gpt2", False),
])
def test_allowlist_matching(source: str, allowed: bool) -> None:
    assert ALLOW.allows(parse_remote(source)) is allowed
    if allowed:
        assert ALLOW.check(source) == parse_remote(source)
    else:
        with pytest.raises(SourceNotAllowed) as exc:
            ALLOW.check(source)
        assert exc.value.status_code == 403 and exc.value.code == "source_not_allowed"


def test_empty_allowlist_allows_nothing_and_everything_allows_all() -> None:
    nothing = SourceAllowlist.parse("")
    assert nothing == SourceAllowlist()
    for source in ("s3://models/x", "hf://org/repo"):
        with pytest.raises(SourceNotAllowed):
            nothing.check(source)
        assert SourceAllowlist.everything().check(source) == parse_remote(source)
    with pytest.raises(InvalidInput):  # still parsed: malformed is malformed everywhere
        SourceAllowlist.everything().check("hf://org/repo@../x")


@pytest.mark.parametrize("entry", ["gopher://x", "models/", "hf://org/repo@main", "hf://a/b/",
                                   "hf://../x", "s3://UPPER/", "s3://b/../x", "*"])
def test_malformed_entries_fail_at_start_up(entry: str) -> None:
    with pytest.raises(InvalidInput, match="REGISTRY_BASE_SOURCES"):
        SourceAllowlist.parse(entry)
    with pytest.raises(ValidationError, match="REGISTRY_BASE_SOURCES"):
        Settings(base_sources=entry)


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_BASE_SOURCES", "s3://models/,hf://my-org/")
    allow = Settings().base_source_allowlist()
    assert allow.allows(S3Ref("models", "x")) and allow.allows(HfRef("my-org/m", None))
    assert not allow.allows(S3Ref("other", ""))
    monkeypatch.delenv("REGISTRY_BASE_SOURCES")
    assert Settings().base_source_allowlist() == SourceAllowlist()
