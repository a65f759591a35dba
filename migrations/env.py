"""Alembic environment: runs on the engine the registry passes in, or REGISTRY_DATABASE_URL."""

from __future__ import annotations

from alembic import context

from registry.db import models  # noqa: F401  (registers the tables on Base.metadata)
from registry.db.base import Base

config = context.config
target_metadata = Base.metadata


def _engine():
    engine = config.attributes.get("engine")
    if engine is None:
        # Only when alembic runs without the registry (its own CLI): settings from the env.
        from registry.config import Settings
        from registry.db.engine import make_engine

        settings = Settings()
        engine = make_engine(settings.resolved_database_url, timeouts=settings.db_timeouts())
    return engine


def run_migrations_online() -> None:
    engine = _engine()
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # The engine's statement_timeout bounds a request, not a migration: building an
                # index on a large table may take longer. LOCAL: it ends with this transaction.
                connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `adapter-registry db upgrade`")
run_migrations_online()
