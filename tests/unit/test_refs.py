"""Adapter names and references."""

from __future__ import annotations

import pytest

from registry.errors import InvalidAlias, InvalidName, InvalidReference
from registry.refs import Ref, parse_ref, validate_alias, validate_name


@pytest.mark.parametrize("name", ["a", "support-bot", "team/support-bot", "v1.2_x", "0abc"])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "Upper", "-lead", ".lead", "a/b/c", "a//b", "/a", "a/",
                                  "sp ace", "a/../b", "a..b", "x" * 201, "ünï"])
def test_invalid_names(name):
    with pytest.raises(InvalidName):
        validate_name(name)


@pytest.mark.parametrize(("ref", "expected"), [
    ("bot", Ref("bot")),
    ("bot:3", Ref("bot", version=3)),
    ("team/bot:12", Ref("team/bot", version=12)),
    ("bot@production", Ref("bot", alias="production")),
])
def test_parse_ref(ref, expected):
    assert parse_ref(ref) == expected
    assert str(parse_ref(ref)) == ref


@pytest.mark.parametrize("ref", ["", "bot:", "bot:0", "bot:-1", "bot:x", "bot:1.5", "bot@",
                                 "bot@Prod", "Bot:1", "bot:\u0661"])
def test_bad_refs(ref):
    with pytest.raises(InvalidReference):
        parse_ref(ref)


@pytest.mark.parametrize("alias", ["production", "staging", "canary-2", "a", "x" * 63])
def test_valid_aliases(alias):
    assert validate_alias(alias) == alias
    assert parse_ref(f"bot@{alias}") == Ref("bot", alias=alias)


@pytest.mark.parametrize("alias", ["", "Prod", "2nd", "-x", "a_b", "a.b", "a/b", "x" * 64,
                                   "prod\n", "prod uction", "ünï"])
def test_invalid_aliases(alias):
    with pytest.raises(InvalidAlias):
        validate_alias(alias)
    with pytest.raises(InvalidReference):
        parse_ref(f"bot@{alias}")
