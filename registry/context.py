"""The registry's long-lived parts for one process: engine, session factory, blob store."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from registry.config import Settings
from registry.db.engine import (
    current_revision,
    head_revision,
    make_engine,
    make_sessionmaker,
    upgrade,
)
from registry.errors import SchemaOutdated
from registry.storage import BlobStore, open_blob_store


@dataclass
class RegistryContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: BlobStore
    # The alembic head this code expects; /readyz compares the database's revision with it.
    schema_head: str | None = None

    @classmethod
    def open(cls, settings: Settings) -> RegistryContext:
        """Connect to the database and blob store; migrate when settings say so.

        Raises:
            SchemaOutdated: migrations are off and the schema is behind.
        """
        engine = make_engine(settings.resolved_database_url, timeouts=settings.db_timeouts())
        head = head_revision()
        if settings.should_migrate:
            if current_revision(engine) != head:
                upgrade(engine)
        elif current_revision(engine) != head:
            engine.dispose()
            raise SchemaOutdated()
        store = open_blob_store(settings.resolved_blob_url, part_bytes=settings.s3_part_bytes,
                                upload_idle_seconds=settings.s3_upload_idle_seconds)
        return cls(settings, engine, make_sessionmaker(engine), store, schema_head=head)

    def close(self) -> None:
        self.engine.dispose()
