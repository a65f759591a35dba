"""Database faults answer 503 in bounded time and leave nothing stuck: a port that accepts TCP and
never answers, a lock held too long, a schema dropped under a running server."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from registry.config import Settings
from registry.context import RegistryContext
from registry.db.engine import PING_AFTER_IDLE_SECONDS, make_engine, upgrade
from registry.db.faults import translate
from registry.db.timeouts import DbTimeouts
from registry.errors import DatabaseUnavailable
from tests.conftest import PG_HOST, PG_PORT, pg_url
from tests.integration.helpers import serve
from tests.integration.tcp_proxy import TcpProxy

Z = "sha256:" + "0" * 64
# Short timeouts keep the tests short; the defaults (5/10/30 s) are checked in tests/unit.
FAST = {"db_connect_timeout_seconds": 2, "db_pool_timeout_seconds": 3,
        "db_statement_timeout_seconds": 2}


@pytest.fixture
def proxy(pg_migrated: str) -> Iterator[TcpProxy]:
    p = TcpProxy((PG_HOST, int(PG_PORT)))
    try:
        yield p
    finally:
        p.close()


def _wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return bool(condition())


def test_a_database_that_accepts_and_never_answers(tmp_path, pg_migrated, proxy):
    """More concurrent calls than the server has worker threads while the database port is a
    black hole: each answers 503 database_unavailable (connect timeouts and pool timeouts
    alike), /healthz answers all along, /readyz says not ready, and once the database is back
    every call works and no connection is left waiting on the black hole."""
    url = make_url(pg_migrated).set(host="127.0.0.1", port=proxy.port)
    settings = Settings(home=tmp_path / "home", auto_migrate=False,
                        database_url=url.render_as_string(hide_password=False), **FAST)
    context = RegistryContext.open(settings)
    try:
        with serve(context) as base:
            assert httpx.get(f"{base}/api/v1/adapters", timeout=10).status_code == 200
            proxy.black_hole()

            def call(_: int) -> httpx.Response:
                # The client's timeout is the bound: a call still hanging after 30 s fails here.
                return httpx.get(f"{base}/api/v1/adapters", timeout=30)

            # anyio's threadpool has 40 threads: 60 calls occupy all of them and queue the rest.
            with ThreadPoolExecutor(60) as pool:
                answers = pool.map(call, range(60))
                time.sleep(1)
                health = httpx.get(f"{base}/healthz", timeout=5)
                ready = httpx.get(f"{base}/readyz", timeout=30)
                answers = list(answers)
            assert health.status_code == 200 and health.json() == {"status": "ok"}
            assert ready.status_code == 503, ready.text
            assert ready.json()["checks"]["database"].startswith("error"), ready.text
            for r in answers:
                assert r.status_code == 503, r.text
                assert r.json()["error"] == "database_unavailable", r.text
                assert str(proxy.port) not in r.text  # the endpoint stays in the server log

            proxy.forward()
            assert _wait_until(
                lambda: httpx.get(f"{base}/api/v1/adapters", timeout=30).status_code == 200, 15)
            for _ in range(20):
                r = httpx.get(f"{base}/api/v1/adapters", timeout=30)
                assert r.status_code == 200, r.text
            assert httpx.get(f"{base}/readyz", timeout=30).status_code == 200
            # Every attempt made against the black hole gave up (connect timeout), and every
            # connection went back to the pool.
            assert _wait_until(lambda: proxy.stuck() == 0, 10), proxy.stuck()
            assert context.engine.pool.checkedout() == 0
    finally:
        context.close()


@contextmanager
def _lock_everything(settings: Settings) -> Iterator[None]:
    """Another session holds the lock every request needs, for as long as the block runs."""
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        conn = sqlite3.connect(make_url(url).database or "", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")  # the write lock every registry transaction takes
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    engine = create_engine(url)
    with engine.connect() as conn:
        conn.execute(text("LOCK TABLE adapters IN ACCESS EXCLUSIVE MODE"))
        try:
            yield
        finally:
            conn.rollback()
    engine.dispose()


def test_a_lock_held_too_long_is_503(settings):
    settings = settings.model_copy(update=FAST)
    context = RegistryContext.open(settings)
    try:
        with serve(context) as base:
            assert httpx.get(f"{base}/api/v1/adapters", timeout=10).status_code == 200
            with _lock_everything(settings):
                r = httpx.get(f"{base}/api/v1/adapters", timeout=20)
                assert r.status_code == 503, r.text
                assert r.json()["error"] == "database_unavailable"
            r = httpx.get(f"{base}/api/v1/adapters", timeout=20)
            assert r.status_code == 200, r.text
            # Nothing leaked: every connection comes back (the webhook dispatcher, polling in
            # the background, may hold one for a moment).
            assert _wait_until(lambda: context.engine.pool.checkedout() == 0, 5)
    finally:
        context.close()


def test_statement_timeout_is_set_on_postgres(pg_migrated):
    engine = make_engine(pg_migrated, timeouts=DbTimeouts(statement_seconds=1))
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW statement_timeout")).scalar() == "1s"
            with pytest.raises(OperationalError) as info:
                conn.execute(text("SELECT pg_sleep(5)"))
        assert isinstance(translate(info.value), DatabaseUnavailable)
    finally:
        engine.dispose()


@pytest.fixture
def scratch_pg(pg_migrated: str) -> Iterator[str]:
    """A database of its own (its schema gets dropped), migrated, removed afterwards."""
    admin = create_engine(pg_url("postgres"), isolation_level="AUTOCOMMIT")
    name = f"adapter_registry_faults_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = make_engine(pg_url(name))
    upgrade(engine)
    engine.dispose()
    try:
        yield pg_url(name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _drop_schema(url: str) -> None:
    if url.startswith("sqlite"):
        conn = sqlite3.connect(make_url(url).database or "", isolation_level=None)
        conn.execute("PRAGMA foreign_keys=OFF")
        tables = [row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        for table in tables:
            conn.execute(f'DROP TABLE "{table}"')
        conn.close()
        return
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_dropped_schema_is_503_schema_out_of_date(backend, tmp_path, request):
    """The database answers but its tables are gone (dropped and recreated empty): /readyz
    says not ready because the schema is not at the head revision, every call answers 503
    schema_out_of_date, and migrating again brings everything back."""
    if backend == "sqlite":
        settings = Settings(home=tmp_path / "home")
    else:
        settings = Settings(home=tmp_path / "home", auto_migrate=False,
                            database_url=request.getfixturevalue("scratch_pg"))
    context = RegistryContext.open(settings)
    try:
        with serve(context) as base:
            assert httpx.get(f"{base}/readyz", timeout=30).status_code == 200
            _drop_schema(settings.resolved_database_url)

            ready = httpx.get(f"{base}/readyz", timeout=30)
            assert ready.status_code == 503, ready.text
            assert ready.json()["checks"]["database"] == "ok"
            assert ready.json()["checks"]["schema"].startswith("error: at revision None"), (
                ready.text)
            calls = [
                ("GET", "/api/v1/adapters", None),
                ("GET", "/api/v1/adapters/x/versions/1", None),
                ("GET", "/api/v1/base-models", None),
                ("GET", "/api/v1/blobs/sizes/10", None),
                ("POST", "/api/v1/adapters/x/versions", {"files": {"adapter_config.json": Z}}),
            ]
            for method, path, body in calls:
                r = httpx.request(method, base + path, json=body, timeout=30)
                assert r.status_code == 503, (path, r.text)
                assert r.json()["error"] == "schema_out_of_date", (path, r.text)
            assert httpx.head(f"{base}/api/v1/blobs/{Z}", timeout=30).status_code == 503

            engine = make_engine(settings.resolved_database_url)
            upgrade(engine)
            engine.dispose()
            assert httpx.get(f"{base}/readyz", timeout=30).status_code == 200
            r = httpx.get(f"{base}/api/v1/adapters", timeout=30)
            assert r.status_code == 200 and r.json() == []
    finally:
        context.close()


def test_an_idle_connection_the_server_dropped_is_replaced_at_checkout(pg_migrated):
    """The pre-ping runs on connections idle for PING_AFTER_IDLE_SECONDS: a backend the server
    terminated while its connection sat in the pool is replaced, not handed out. A connection
    checked in a moment ago is not pinged (that round trip is what the window saves), so its
    request fails once and the pool discards it."""
    engine = make_engine(pg_migrated, pool_size=1, max_overflow=0)
    admin = create_engine(pg_url("postgres"), isolation_level="AUTOCOMMIT")

    def backend_pid() -> int:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())

    def kill(pid: int) -> None:
        with admin.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
        assert _wait_until(lambda: not _backend_alive(admin, pid), 5)

    try:
        first = backend_pid()
        kill(first)
        time.sleep(PING_AFTER_IDLE_SECONDS + 0.2)
        second = backend_pid()  # pinged, found dead, replaced: no error
        assert second != first

        kill(second)  # and used again at once: inside the window, so not pinged
        with pytest.raises(OperationalError):
            backend_pid()
        assert backend_pid() not in (first, second)  # the broken one was discarded
    finally:
        engine.dispose()
        admin.dispose()


def _backend_alive(admin, pid: int) -> bool:  # type: ignore[no-untyped-def]
    with admin.connect() as conn:
        return bool(conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"),
                                 {"p": pid}).scalar())
