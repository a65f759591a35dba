"""Lineage: ancestors, descendants (forks into other adapters included) and the merged exports of
each, through the HTTP API on SQLite + local store and PostgreSQL + S3."""

from __future__ import annotations

import httpx
import pytest

from registry import errors
from registry.adapters import service as adapters
from registry.client import HttpRegistry
from registry.clientside.export import export
from registry.clientside.transfer import push, register_base_dir
from registry.db.engine import session_scope


def _refs(nodes) -> list[tuple[str, int]]:
    return [(n.ref, n.depth) for n in nodes]


@pytest.fixture
def family(http: HttpRegistry, settings, base_dirs, adapters_dir, tmp_path):
    """bot:1 <- bot:2 <- bot:3, bot:2 <- fork:1 <- fork:2; other:1 unrelated; an export of bot:2."""
    register_base_dir(http, name="tiny-llama", directory=base_dirs["llama"], settings=settings)

    def add(name: str, kind: str, parent: str | None = None) -> None:
        push(http, name=name, directory=adapters_dir[kind], settings=settings,
             base_model="tiny-llama", parent=parent)

    add("bot", "lora")
    add("bot", "lora_v2", "bot:1")
    add("bot", "dora", "bot:2")
    add("fork", "lora", "bot:2")
    add("fork", "lora_rank_pattern", "fork:1")
    add("other", "lora")
    export(http, ref="bot:2", base="tiny-llama", out=tmp_path / "merged", settings=settings,
           upload=True)
    return http


def test_lineage_lists_ancestors_descendants_and_exports(family: HttpRegistry):
    lin = family.lineage("bot", 2)
    assert lin.ref == "bot:2" and (lin.version.ref, lin.version.depth) == ("bot:2", 0)
    assert _refs(lin.ancestors) == [("bot:1", 1)]
    # Breadth-first, oldest first within a generation; the fork in another adapter included.
    assert _refs(lin.descendants) == [("bot:3", 1), ("fork:1", 1), ("fork:2", 2)]
    assert [(n.parent.name, n.parent.version) for n in lin.descendants if n.parent] == [
        ("bot", 2), ("bot", 2), ("fork", 1)]
    assert not lin.truncated
    # The export of bot:2 shows with the version itself...
    assert [(e.base, e.dtype) for e in lin.version.exports] == [("tiny-llama", "float32")]
    assert lin.version.exports == family.get_version("bot", 2).exports
    assert all(not n.exports for n in lin.ancestors + lin.descendants)

    # ... and in the lineage of every relative.
    lin = family.lineage("fork", 2)
    assert _refs(lin.ancestors) == [("fork:1", 1), ("bot:2", 2), ("bot:1", 3)]
    assert lin.ancestors[1].exports and not lin.ancestors[0].exports
    assert lin.descendants == []
    lin = family.lineage("bot", 1)
    assert lin.ancestors == []
    assert _refs(lin.descendants) == [("bot:2", 1), ("bot:3", 2), ("fork:1", 2), ("fork:2", 3)]
    assert lin.descendants[0].exports

    lin = family.lineage("other", 1)
    assert (lin.ancestors, lin.descendants, lin.truncated) == ([], [], False)


def test_lineage_is_capped_and_says_so(family: HttpRegistry, live_server):
    with session_scope(live_server.context.sessions) as session:
        lin = adapters.lineage(session, name="bot", version=1, limit=2)
        assert _refs(lin.descendants) == [("bot:2", 1), ("bot:3", 2)] and lin.truncated
        lin = adapters.lineage(session, name="fork", version=2, limit=1)
        assert _refs(lin.ancestors) == [("fork:1", 1)] and lin.truncated
        lin = adapters.lineage(session, name="bot", version=2, limit=3)
        assert len(lin.descendants) == 3 and not lin.truncated


def test_lineage_of_what_does_not_exist(http: HttpRegistry, live_server, adapters_dir, settings):
    push(http, name="bot", directory=adapters_dir["lora"], settings=settings)
    with pytest.raises(errors.AdapterNotFound):
        http.lineage("nosuch", 1)
    with pytest.raises(errors.VersionNotFound):
        http.lineage("bot", 2)
    for path, status in [("bot/versions/0/lineage", 422), ("bot/versions/x/lineage", 422),
                         ("Bad%20Name/versions/1/lineage", 422),
                         ("bot/versions/99999999999/lineage", 422),
                         ("nosuch/versions/1/lineage", 404)]:
        r = httpx.get(f"{live_server.url}/api/v1/adapters/{path}")
        assert r.status_code == status, (path, r.text)
        assert set(r.json()) == {"error", "detail"}, r.text
