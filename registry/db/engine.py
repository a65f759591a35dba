"""Engines (with their timeouts), the session scope, and applying migrations."""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from registry.db.timeouts import DbTimeouts

# A pooled PostgreSQL connection idle for longer than this is pinged before it is handed out.
PING_AFTER_IDLE_SECONDS = 1.0

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def make_engine(url: str, *, timeouts: DbTimeouts | None = None, **kwargs: Any) -> Engine:
    """Create an engine configured for the registry's concurrency rules and timeouts.

    SQLite gets WAL, foreign keys and ``BEGIN IMMEDIATE`` transactions: writers queue on the
    database lock up front instead of failing half-way when a read turns into a write. They
    queue for at most the statement timeout (the busy timeout), so a request stuck behind a
    long write still answers in time.

    PostgreSQL gets a connect timeout (a server that accepts TCP and never answers fails the
    attempt instead of holding a thread forever), a server-side ``statement_timeout`` and
    a pre-ping on connections idle for more than ``PING_AFTER_IDLE_SECONDS`` (a connection the
    server dropped while it sat in the pool is replaced at checkout, not handed out).

    Args:
        url: SQLAlchemy database URL (``sqlite:///...`` or ``postgresql+psycopg://...``).
        timeouts: connect, pool checkout and statement bounds (default: ``DbTimeouts()``).

    Returns:
        A new engine.
    """
    timeouts = timeouts or DbTimeouts()
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            # A file database gets a QueuePool; an in-memory one a pool without a timeout.
            kwargs.setdefault("pool_timeout", timeouts.pool_seconds)
        busy_ms = int(timeouts.statement_seconds * 1000)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": timeouts.statement_seconds},
            **kwargs,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Hand transaction control to SQLAlchemy's "begin" event below.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={busy_ms}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    kwargs.setdefault("pool_timeout", timeouts.pool_seconds)
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        # libpq counts whole seconds and treats anything under 2 as 2.
        connect_args["connect_timeout"] = max(2, math.ceil(timeouts.connect_seconds))
        # Set at connection start (no extra round trip per checkout); options already in the
        # URL come after ours, so a statement_timeout given there wins.
        statement = f"-c statement_timeout={int(timeouts.statement_seconds * 1000)}"
        own = parsed.query.get("options")
        own_options = own if isinstance(own, str) else " ".join(own or ())
        connect_args["options"] = f"{statement} {own_options}".strip()
    if parsed.get_driver_name() == "psycopg":
        _cache_long_statements()
    engine = create_engine(url, connect_args=connect_args, **kwargs)
    _ping_after_idle(engine, PING_AFTER_IDLE_SECONDS)

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except Exception as exc:
            # psycopg raises a timed-out attempt's error from a frame that still holds the
            # attempt (and its socket) in a reference cycle, so the socket stays open, parked
            # on the unresponsive server, until the cyclic GC happens to run. Clearing the
            # frames closes it now.
            traceback.clear_frames(exc.__traceback__)
            raise

    return engine


# psycopg converts a statement's text (named placeholders to $1…) once and keeps the result in
# an LRU cache of 128 entries, but only for statements of at most 4,096 characters and 50
# parameters (psycopg/_queries.py: ORM-generated multi-row inserts rarely repeat). A push's
# one statement (registry/adapters/writes.py, built once per shape) is longer: converting it
# again on every push cost ~0.35 ms, a tenth of a push's time in the server. The cache stays
# bounded; only what may enter it is widened.
PSYCOPG_CACHED_STATEMENT_LENGTH = 64 * 1024
PSYCOPG_CACHED_STATEMENT_PARAMS = 1024


def _cache_long_statements() -> None:
    from psycopg import _queries  # psycopg is the PostgreSQL driver: not needed on SQLite

    for name, value in (("MAX_CACHED_STATEMENT_LENGTH", PSYCOPG_CACHED_STATEMENT_LENGTH),
                        ("MAX_CACHED_STATEMENT_PARAMS", PSYCOPG_CACHED_STATEMENT_PARAMS)):
        if isinstance(getattr(_queries, name, None), int):  # absent in another version: skip
            setattr(_queries, name, max(getattr(_queries, name), value))


def _ping_after_idle(engine: Engine, idle_seconds: float) -> None:
    """Pre-ping a pooled connection at checkout only when it sat idle for ``idle_seconds``.

    SQLAlchemy's ``pool_pre_ping`` pings on every checkout: one extra round trip per request,
    the largest part of a cached resolve. A connection checked in a moment ago was alive a
    moment ago (HikariCP's ``aliveBypassWindowMs`` makes the same bet, at 500 ms); if the
    server dropped it in between, the request's own statement fails, the error handler answers
    503 and the pool discards the connection. Raising ``DisconnectionError`` here makes the
    pool replace a dead idle connection and retry the checkout.
    """

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < idle_seconds:
            return  # a new connection, or one in use a moment ago
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            raise DisconnectionError("pooled connection failed its pre-ping") from exc
        if not alive:
            raise DisconnectionError("pooled connection failed its pre-ping")


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception.

    Services only ``flush()``; this is the one place that commits.
    """
    session = factory()
    try:
        yield session
    except BaseException:
        end_session(session, commit=False)
        raise
    end_session(session, commit=True)


@contextmanager
def write_scope(factory: sessionmaker[Session], *, one_statement: bool) -> Iterator[Session]:
    """``session_scope``, or, on PostgreSQL when the work writes everything it writes in one
    statement (``one_statement``), a session outside any transaction: each statement commits
    by itself (autocommit), so the work costs neither a BEGIN nor a COMMIT round trip. Such
    work must not depend on locks held between statements; its one write either commits
    whole or fails whole."""
    engine = factory.kw["bind"]
    if not one_statement or engine.dialect.name != "postgresql":
        with session_scope(factory) as session:
            yield session
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        session = factory(bind=conn)
        try:
            yield session
            session.commit()  # nothing to commit: runs the after-commit hooks (wake-ups)
        finally:
            session.close()


def autocommitting(session: Session) -> bool:
    """Whether ``session`` came from ``write_scope(one_statement=True)`` on PostgreSQL."""
    return session.connection().get_execution_options().get("isolation_level") == "AUTOCOMMIT"


def end_session(session: Session, *, commit: bool) -> None:
    """Commit (rolled back if the commit fails) or roll back, then close: the end of a unit of
    work, here and in the API's async session dependency (which runs it on a thread)."""
    try:
        if commit:
            session.commit()
        else:
            session.rollback()
    except BaseException:
        if commit:
            session.rollback()
        raise
    finally:
        session.close()


# Alembic loads only when migrations are looked at: most CLI calls never need it.


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config  # on first use, not at start-up

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (the only way a schema is created)."""
    from alembic import command  # on first use, not at start-up

    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    from alembic import command  # on first use, not at start-up

    command.downgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext  # on first use, not at start-up

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory  # on first use, not at start-up

    cfg = alembic_config(make_engine("sqlite://"))
    return ScriptDirectory.from_config(cfg).get_current_head()
