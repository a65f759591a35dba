"""What a database failure means for the caller: unavailable (retry later), schema out of date, or
a bug; the API answers the first two with a 503 instead of a 500."""

from __future__ import annotations

from sqlalchemy.exc import (
    DBAPIError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from registry.errors import DatabaseUnavailable, RegistryError, SchemaOutdated

# PostgreSQL SQLSTATEs of a schema that is not the one the code expects (dropped, or migrated
# to another revision): undefined table, undefined column, invalid schema name.
_MISSING_SCHEMA_STATES = frozenset({"42P01", "42703", "3F000"})
_QUERY_CANCELED = "57014"  # statement_timeout fired
# SQLite says it in the message only.
_SQLITE_MISSING = ("no such table", "no such column")


def _sqlstate(exc: DBAPIError) -> str | None:
    state = getattr(exc.orig, "sqlstate", None)
    return state if isinstance(state, str) else None


def translate(exc: SQLAlchemyError) -> RegistryError | None:
    """The RegistryError a database failure amounts to, or None for one that is a bug.

    Args:
        exc: what SQLAlchemy raised.

    Returns:
        ``SchemaOutdated`` when tables or columns the code uses are missing,
        ``DatabaseUnavailable`` when the database cannot be reached, answers too late, or no
        pooled connection came free in time; None otherwise (a bug: the caller reports a 500).
    """
    if isinstance(exc, PoolTimeout):
        return DatabaseUnavailable(
            "the registry database is busy (no connection came free in time); try again later"
        )
    if not isinstance(exc, DBAPIError):
        return None
    state = _sqlstate(exc)
    message = str(exc.orig).lower()
    if state in _MISSING_SCHEMA_STATES or message.startswith(_SQLITE_MISSING):
        return SchemaOutdated()
    if state == _QUERY_CANCELED:
        return DatabaseUnavailable(
            "the registry database did not answer in time; try again later"
        )
    if isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated:
        return DatabaseUnavailable()
    return None
