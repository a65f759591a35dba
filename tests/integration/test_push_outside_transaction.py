"""A push on PostgreSQL runs outside a transaction (one read, one write statement); the write
locks the blobs it references and fails whole when one was collected after the read.

The race is made deterministic with a SQLAlchemy cursor event: just before the push's write
statement runs, another connection marks one of its blobs ``deleting`` (what gc's mark does)
and commits. Nothing of the version may be written, and the push must say which file is gone.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, func, select, update

from registry.adapters.schemas import CreateVersionIn
from registry.blobs.service import store_file
from registry.db.engine import session_scope
from registry.db.models import Adapter, AdapterVersion, Blob, BlobState, Event, VersionFile
from registry.errors import BlobNotFound
from registry.local import LocalRegistry
from tests.integration.helpers import digest_of, read_dir


@pytest.fixture
def registry(settings) -> Any:
    if not settings.resolved_database_url.startswith("postgresql"):
        pytest.skip("the unlocked read and the gated write are PostgreSQL's (SQLite: one "
                    "transaction, one writer at a time)")
    reg = LocalRegistry(settings)
    try:
        yield reg
    finally:
        reg.ctx.close()


def _upload(reg: LocalRegistry, directory: Any) -> dict[str, str]:
    files = {}
    for path, data in read_dir(directory).items():
        target = reg.ctx.settings.home / f"upload-{digest_of(data)[7:19]}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        store_file(reg.ctx.sessions, reg.ctx.store, target, digest=digest_of(data),
                   max_size=reg.ctx.settings.max_file_bytes)
        files[path] = digest_of(data)
    return files


def _counts(reg: LocalRegistry) -> tuple[int, int, int, int]:
    with session_scope(reg.ctx.sessions) as s:
        return (s.scalar(select(func.count()).select_from(AdapterVersion)) or 0,
                s.scalar(select(func.count()).select_from(VersionFile)) or 0,
                s.scalar(select(func.count()).select_from(Event)) or 0,
                s.scalar(select(func.coalesce(func.sum(Adapter.version_counter), 0))) or 0)


def test_a_blob_collected_between_read_and_write_leaves_nothing_behind(registry, adapters_dir):
    files = _upload(registry, adapters_dir["lora"])
    registry.create_version("team/bot", CreateVersionIn(files=files))  # version 1, counter 1
    before = _counts(registry)
    victim = files["adapter_model.safetensors"]

    def collect_first(conn, cursor, statement, *_a: Any) -> None:
        if statement.lstrip().startswith("WITH") and "INSERT INTO adapters" in statement:
            # gc's mark, from another connection, committed before the write runs.
            with registry.ctx.engine.begin() as other:
                other.execute(update(Blob).where(Blob.digest == victim)
                              .values(state=BlobState.deleting))

    event.listen(registry.ctx.engine, "before_cursor_execute", collect_first)
    try:
        with pytest.raises(BlobNotFound, match=r"adapter_model\.safetensors"):
            registry.create_version("team/bot", CreateVersionIn(files=files))
    finally:
        event.remove(registry.ctx.engine, "before_cursor_execute", collect_first)
    # No version, file, event, nor a number taken.
    assert _counts(registry) == before
