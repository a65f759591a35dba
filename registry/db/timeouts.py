"""How long a database call may wait: to connect, for a pooled connection, for one statement.

Kept free of SQLAlchemy so that ``registry.config`` can take its defaults from here without
slowing down the start of every CLI command.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DbTimeouts:
    """Bounds that let a request answer (503 at worst) within about 30 s whatever the database
    does: a server that accepts TCP and never answers, a full pool, a lock held for minutes.

    Attributes:
        connect_seconds: opening a connection, TCP and startup included (libpq counts whole
            seconds and at least 2).
        pool_seconds: waiting for a free connection when the pool is exhausted.
        statement_seconds: one statement, lock waits included (PostgreSQL
            ``statement_timeout``; SQLite's busy timeout, its only wait).
    """

    connect_seconds: float = 5.0
    pool_seconds: float = 10.0
    statement_seconds: float = 30.0
