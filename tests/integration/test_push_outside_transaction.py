"""A push on PostgreSQL runs outside a transaction (one read, one write statement); the write
locks the blobs it references and fails whole when one was collected after the read.

The race is made deterministic with a SQLAlchemy cursor event: just before the push's write
statement runs, another connection marks one of its blobs ``deleting`` (what gc's mark does)
and commits. Nothing of the version may be written, and the push must say which file is gone.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import delete, event, func, select, update

from registry.adapters import reads
from registry.adapters.schemas import CreateVersionIn
from registry.blobs.service import store_file
from registry.clientside.transfer import register_base_dir
from registry.db.engine import session_scope
from registry.db.models import (
    Adapter,
    AdapterVersion,
    BaseModelRow,
    Blob,
    BlobState,
    Compatibility,
    Event,
    VersionFile,
)
from registry.errors import BlobNotFound
from registry.local import LocalRegistry
from tests.integration.helpers import digest_of, read_dir


# PostgreSQL only (the conftest's settings fixture, narrowed to that shape): the unlocked
# read and the gated write are PostgreSQL's; on SQLite a push is one transaction, and one
# writer runs at a time.
pytestmark = pytest.mark.parametrize("settings", ["postgres-s3"], indirect=True)


@pytest.fixture
def registry(settings) -> Any:
    assert settings.resolved_database_url.startswith("postgresql")
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


def _verdict_bases(reg: LocalRegistry, name: str, number: int) -> set[int]:
    with session_scope(reg.ctx.sessions) as s:
        version_id = s.scalar(select(AdapterVersion.id).join(Adapter).where(
            Adapter.name == name, AdapterVersion.version == number))
        return set(s.scalars(select(Compatibility.base_model_id).where(
            Compatibility.adapter_version_id == version_id)))


def test_a_base_registered_elsewhere_since_the_last_push_gets_its_verdict(
        registry, settings, adapters_dir, base_dirs):
    """The second push starts from what the first one read (kept): its write finds the bases
    changed (another replica registered one), writes nothing, and the push reads again."""
    register_base_dir(registry, name="tiny-llama", directory=base_dirs["llama"],
                      settings=settings)
    files = _upload(registry, adapters_dir["lora"])
    for _ in range(2):  # the first parses the base's manifest, the second keeps its reads
        registry.create_version("team/bot", CreateVersionIn(files=files,
                                                            base_model="tiny-llama"))
    assert reads.kept_for(registry.ctx.engine).get(files) is not None
    other = LocalRegistry(settings)  # another process's engine: nothing kept in common
    try:
        register_base_dir(other, name="tiny-gpt2", directory=base_dirs["gpt2"],
                          settings=settings)
    finally:
        other.ctx.close()
    third, _ = registry.create_version("team/bot", CreateVersionIn(files=files,
                                                                    base_model="tiny-llama"))
    assert third.version == 3  # no number lost to the write that wrote nothing
    with session_scope(registry.ctx.sessions) as s:
        every_base = set(s.scalars(select(BaseModelRow.id)))
    assert len(every_base) == 2
    assert _verdict_bases(registry, "team/bot", 2) < every_base
    assert _verdict_bases(registry, "team/bot", 3) == every_base


def test_a_blob_collected_and_uploaded_again_is_found_under_its_new_row(registry,
                                                                         adapters_dir):
    """A kept blob row whose blob was collected and uploaded again (a new row, a new id) is
    not taken for the new one: the write checks id and digest, and the push reads again."""
    files = _upload(registry, adapters_dir["lora"])
    registry.create_version("team/bot", CreateVersionIn(files=files))
    assert reads.kept_for(registry.ctx.engine).get(files) is not None
    victim = files["adapter_model.safetensors"]
    with session_scope(registry.ctx.sessions) as s:
        old_id = s.scalar(select(Blob.id).where(Blob.digest == victim))
        # What gc leaves once it is done with a blob no version references: no row. (The
        # version above references it, so its file row goes first, as if it never existed.)
        s.execute(delete(VersionFile).where(VersionFile.blob_id == old_id))
        s.execute(delete(Blob).where(Blob.id == old_id))
    _upload(registry, adapters_dir["lora"])  # the same digest, a new row
    with session_scope(registry.ctx.sessions) as s:
        new_id = s.scalar(select(Blob.id).where(Blob.digest == victim))
    assert new_id != old_id
    second, created = registry.create_version("team/bot", CreateVersionIn(files=files))
    assert created and second.version == 2
    with session_scope(registry.ctx.sessions) as s:
        assert s.scalar(select(func.count()).select_from(VersionFile).where(
            VersionFile.blob_id == new_id)) == 1
