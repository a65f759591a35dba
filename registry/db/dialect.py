"""The few statements whose SQL differs between SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from registry.db.base import Base


def insert_ignore(
    session: Session, model: type[Base], values: dict[str, Any], *, keys: list[str]
) -> None:
    """``INSERT … ON CONFLICT (keys) DO NOTHING``: create a row unless an equal one exists.

    Safe under concurrency: of two sessions inserting the same key, one inserts and the other
    waits for it (PostgreSQL) or for the database lock (SQLite) and then does nothing.
    """
    dialect = session.get_bind().dialect.name
    module: Any = postgresql if dialect == "postgresql" else sqlite
    stmt = module.insert(model).values(**values).on_conflict_do_nothing(index_elements=keys)
    session.execute(stmt)


def add_unless_exists(session: Session, obj: Base) -> bool:
    """Add and flush ``obj`` inside a savepoint.

    Returns:
        False when a unique constraint says an equal row exists already (another transaction
        won the race); the savepoint is rolled back and the session stays usable.
    """
    try:
        with session.begin_nested():
            session.add(obj)
            session.flush()
    except IntegrityError:
        return False
    return True
