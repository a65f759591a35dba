"""Alembic migrations: the only way a schema is created."""
