"""The web UI with 10,000 versions: each page costs a fixed number of SQL statements (pagination
and filters in SQL), the same on the first page as on the last.

The rows are inserted in bulk (a real push per version would take minutes); they are complete
versions as far as the pages are concerned.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from sqlalchemy import event, insert, select

from registry.context import RegistryContext
from registry.db.base import utcnow
from registry.db.engine import session_scope
from registry.db.models import Adapter, AdapterVersion, Alias, EvalScore, ScoreSource
from tests.conftest import LiveServer

ADAPTERS = 250  # x 20 versions, plus one adapter with 5,000: 10,000 versions
PER_ADAPTER = 20
BIG = 5000


def seed_bulk(ctx: RegistryContext) -> None:
    now = utcnow()
    version = {"status": "registered", "peft_type": "LORA", "target_modules": ["q_proj"],
               "adapter_config": {"peft_type": "LORA", "r": 8}, "tensor_manifest": {},
               "tensor_count": 2, "total_size": 1024, "content_digest": "sha256:" + "0" * 64,
               "meta": {}, "created_at": now}
    with session_scope(ctx.sessions) as session:
        session.execute(insert(Adapter), [
            {"name": f"team-{i:04d}/bot", "version_counter": PER_ADAPTER, "created_at": now}
            for i in range(ADAPTERS)] + [{"name": "big", "version_counter": BIG,
                                          "created_at": now}])
        ids = dict(session.execute(select(Adapter.name, Adapter.id)).tuples().all())
        rows = [{**version, "adapter_id": ids[f"team-{i:04d}/bot"], "version": v}
                for i in range(ADAPTERS) for v in range(1, PER_ADAPTER + 1)]
        rows += [{**version, "adapter_id": ids["big"], "version": v} for v in range(1, BIG + 1)]
        session.execute(insert(AdapterVersion), rows)
        versions = dict(session.execute(
            select(AdapterVersion.version, AdapterVersion.id)
            .where(AdapterVersion.adapter_id == ids["big"])).tuples().all())
        session.execute(insert(EvalScore), [
            {"adapter_version_id": versions[v], "suite": "smoke", "metric": "accuracy",
             "value": v / BIG, "source": ScoreSource.ci, "created_at": now}
            for v in range(1, BIG + 1)])
        session.execute(insert(Alias), [
            {"adapter_id": ids[f"team-{i:04d}/bot"], "name": "production",
             "version_id": session.scalar(select(AdapterVersion.id).where(
                 AdapterVersion.adapter_id == ids[f"team-{i:04d}/bot"],
                 AdapterVersion.version == 1)),
             "updated_at": now} for i in range(0, ADAPTERS, 50)])


@contextmanager
def counted(ctx: RegistryContext) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(ctx.engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(ctx.engine, "before_cursor_execute", record)


@pytest.fixture
def big_registry(live_server: LiveServer) -> LiveServer:
    seed_bulk(live_server.context)
    return live_server


def _queries(server: LiveServer, client: httpx.Client, url: str) -> tuple[int, float, str]:
    with counted(server.context) as statements:
        start = time.perf_counter()
        r = client.get(url)
        elapsed = time.perf_counter() - start
    assert r.status_code == 200, r.text
    # The server's webhook dispatcher polls on its own thread meanwhile: not the page's.
    selects = [s for s in statements if s.lstrip().upper().startswith(("SELECT", "WITH"))
               and "webhook" not in s]
    return len(selects), elapsed, r.text


def test_pages_cost_a_fixed_number_of_statements(big_registry: LiveServer):
    with httpx.Client(base_url=big_registry.url, timeout=60) as client:
        client.get("/ui")  # warm up (connections, caches)
        first, t_first, text = _queries(big_registry, client, "/ui")
        assert re.search(r'data-testid="total">251<', text)
        assert len(re.findall(r'<a class="strong" href="/ui/adapters/', text)) == 50
        last, t_last, text = _queries(big_registry, client, "/ui?page=6")
        assert len(re.findall(r'<a class="strong" href="/ui/adapters/', text)) == 1
        filtered, _, text = _queries(big_registry, client, "/ui?alias=production&q=team")
        assert len(re.findall(r'<a class="strong" href="/ui/adapters/', text)) == 5
        assert first == last == filtered <= 6, (first, last, filtered)

        big, t_big, text = _queries(big_registry, client, "/ui/adapters/big")
        assert len(re.findall(r'<tr data-version="', text)) == 50
        assert text.count('<circle class="point"') == 200  # the newest 200 scored versions
        deep, _, text = _queries(big_registry, client, "/ui/adapters/big?page=100")
        assert re.findall(r'<tr data-version="(\d+)"', text)[-1] == "1"
        assert big == deep <= 20, (big, deep)
        version, t_version, _ = _queries(big_registry, client, "/ui/adapters/big/versions/2500")
        assert version <= 30
        # Generous bounds for 2 shared cores: the point is no time proportional to 10,000.
        assert max(t_first, t_last, t_big, t_version) < 5, (t_first, t_last, t_big, t_version)
