"""The embedded registry: the RegistryBackend protocol served in-process, without HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

from registry.adapters import service as adapters
from registry.adapters.schemas import AdapterOut, CreateVersionIn, LineageOut, VersionOut
from registry.base_models import service as bases
from registry.base_models.schemas import BaseModelOut, RegisterBaseIn
from registry.blobs import service as blobs
from registry.client import Progress
from registry.compat import service as compat
from registry.config import Settings
from registry.context import RegistryContext
from registry.db.engine import session_scope
from registry.errors import BlobNotFound, TooLarge
from registry.exports import service as exports
from registry.exports.schemas import CreateExportIn, ExportOut


class LocalRegistry:
    """Runs the same services the API runs, on ``$REGISTRY_HOME`` (or configured URLs)."""

    def __init__(self, settings: Settings) -> None:
        self.ctx = RegistryContext.open(settings)

    def blob_exists(self, digest: str) -> bool:
        with session_scope(self.ctx.sessions) as session:
            return blobs.get_blob(session, digest=digest) is not None

    def upload_blob(self, digest: str, path: Path, *, progress: Progress = None) -> None:
        limit = self.ctx.settings.max_file_bytes
        if path.stat().st_size > limit:
            raise TooLarge(f"{path.name} exceeds the limit of {limit} bytes")
        with self.ctx.store.writer(digest, max_size=limit) as writer, path.open("rb") as fh:
            while chunk := fh.read(1024 * 1024):
                writer.write(chunk)
                if progress:
                    progress(len(chunk))
            size = writer.commit()
        with session_scope(self.ctx.sessions) as session:
            blobs.record_blob(session, digest=digest, size=size)

    def can_upload_unhashed(self, size: int) -> bool:
        if not self.ctx.store.digest_after_upload:
            return False
        with session_scope(self.ctx.sessions) as session:
            return not blobs.size_stored(session, size=size)

    def upload_new_blob(self, path: Path, *, progress: Progress = None) -> str:
        limit = self.ctx.settings.max_file_bytes
        if path.stat().st_size > limit:
            raise TooLarge(f"{path.name} exceeds the limit of {limit} bytes")
        # In process the writer's own hash is the file's digest: nothing travels in between.
        with self.ctx.store.new_blob_writer(max_size=limit) as writer, path.open("rb") as fh:
            while chunk := fh.read(1024 * 1024):
                writer.write(chunk)
                if progress:
                    progress(len(chunk))
            size = writer.commit()
        assert writer.digest is not None  # set by commit()
        with session_scope(self.ctx.sessions) as session:
            blobs.record_blob(session, digest=writer.digest, size=size)
        return writer.digest

    def download_blob(self, digest: str, out: BinaryIO, *, progress: Progress = None) -> None:
        with session_scope(self.ctx.sessions) as session:
            if blobs.get_blob(session, digest=digest) is None:
                raise BlobNotFound(f"blob {digest} is not stored")
        for chunk in self.ctx.store.iter_chunks(digest):
            out.write(chunk)
            if progress:
                progress(len(chunk))

    def create_version(self, name: str, body: CreateVersionIn) -> tuple[VersionOut, bool]:
        with session_scope(self.ctx.sessions) as session:
            version, created = adapters.create_version(
                session, self.ctx.store, name=name, body=body, settings=self.ctx.settings
            )
            return adapters.to_out(version), created

    def get_version(self, name: str, version: int | None) -> VersionOut:
        with session_scope(self.ctx.sessions) as session:
            return adapters.to_out(adapters.get_version(session, name=name, version=version))

    def list_adapters(self) -> list[AdapterOut]:
        with session_scope(self.ctx.sessions) as session:
            return adapters.list_adapters(session)

    def list_versions(self, name: str) -> list[VersionOut]:
        with session_scope(self.ctx.sessions) as session:
            return [adapters.to_out(v) for v in adapters.list_versions(session, name=name)]

    def lineage(self, name: str, version: int) -> LineageOut:
        with session_scope(self.ctx.sessions) as session:
            return adapters.lineage(session, name=name, version=version)

    def gc(self, *, grace_seconds: int | None, dry_run: bool) -> dict[str, Any]:
        grace = self.ctx.settings.gc_grace_seconds if grace_seconds is None else grace_seconds
        report = blobs.collect_garbage(
            self.ctx.sessions, self.ctx.store, grace_seconds=grace, dry_run=dry_run
        )
        return report.to_json()

    def register_base(self, body: RegisterBaseIn) -> tuple[BaseModelOut, bool]:
        with session_scope(self.ctx.sessions) as session:
            base, created = bases.register_base(
                session, self.ctx.store, body=body, settings=self.ctx.settings
            )
            return bases.to_out(base), created

    def get_base(self, name: str, revision: str | None = None) -> BaseModelOut:
        with session_scope(self.ctx.sessions) as session:
            return bases.to_out(bases.get_base(session, name=name, revision=revision))

    def list_bases(self) -> list[BaseModelOut]:
        with session_scope(self.ctx.sessions) as session:
            return [bases.to_out(b) for b in bases.list_bases(session)]

    def compat_verdict(self, name: str, version: int | None, *, base: str,
                       base_revision: str | None = None) -> dict[str, Any]:
        with session_scope(self.ctx.sessions) as session:
            return compat.verdict_for(session, name=name, version=version, base=base,
                                      base_revision=base_revision)

    def compatible_versions(self, *, base: str,
                            base_revision: str | None = None) -> list[dict[str, Any]]:
        with session_scope(self.ctx.sessions) as session:
            return compat.compatible_versions(session, base=base, base_revision=base_revision)

    def compatible_bases(self, name: str, version: int | None) -> list[dict[str, Any]]:
        with session_scope(self.ctx.sessions) as session:
            return compat.compatible_bases(session, name=name, version=version)

    def create_export(self, body: CreateExportIn) -> tuple[ExportOut, bool]:
        with session_scope(self.ctx.sessions) as session:
            export, created = exports.create_export(session, body=body)
            return exports.to_out(export), created

    def list_exports(self, name: str, version: int, *, base: str | None = None,
                     base_revision: str | None = None,
                     dtype: str | None = None) -> list[ExportOut]:
        with session_scope(self.ctx.sessions) as session:
            found = exports.list_exports(session, name=name, version=version, base=base,
                                         base_revision=base_revision, dtype=dtype)
            return [exports.to_out(e) for e in found]

    def local_blob_path(self, digest: str) -> Path | None:
        """The blob's own file when the store is a local directory (no copy needed)."""
        from registry.storage.local import LocalBlobStore

        store = self.ctx.store
        if isinstance(store, LocalBlobStore) and store.exists(digest):
            return store.path_for(digest)
        return None

    def read_blob_range(self, digest: str, offset: int, length: int) -> bytes:
        return self.ctx.store.read_range(digest, offset, length)

    def close(self) -> None:
        self.ctx.close()
