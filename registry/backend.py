"""The RegistryBackend contract: what the CLI, push/pull and export need from a registry.

Two implementations: ``registry.client.HttpRegistry`` (a server over HTTP) and
``registry.local.LocalRegistry`` (the embedded registry, the same services in-process). One
scenario suite (``tests/integration/test_backend_contract.py``) runs against both, so a
command behaves the same with and without ``--url``.

Every method raises the classes of ``registry.errors`` for the same conditions on both sides
(the HTTP client maps each error code back to its class).

Optional capabilities (a backend may answer "not available" and callers fall back):
- ``local_blob_path``: the blob's own file when the store is a local directory this process
  can read (embedded registry on a local store); None otherwise, and the caller downloads it.
- ``can_upload_unhashed`` / ``upload_new_blob``: uploads named by the server after their
  content; ``can_upload_unhashed`` answers False where the store cannot do it (S3) or a blob
  of that size exists, and the caller hashes first and uses ``upload_blob``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from registry.adapters.schemas import (
    AdapterOut,
    CreateVersionIn,
    LineageOut,
    ScoreOut,
    VersionOut,
)
from registry.base_models.schemas import BaseModelOut, RegisterBaseIn
from registry.compat.schemas import CompatibleBaseOut, CompatibleVersionOut, VerdictOut
from registry.evals.schemas import RecordScoresIn
from registry.events.schemas import EventPageOut
from registry.exports.schemas import CreateExportIn, ExportOut

Progress = Callable[[int], None] | None


class RegistryBackend(Protocol):
    """A registry, remote or embedded."""

    # --- blobs ---
    def blob_exists(self, digest: str) -> bool: ...
    # Keep stored blobs from gc while a push runs; returns the digests that are not stored.
    def pin_blobs(self, digests: list[str], *, seconds: int) -> list[str]: ...
    def upload_blob(self, digest: str, path: Path, *, progress: Progress = None,
                    pin_seconds: int | None = None) -> None: ...
    def can_upload_unhashed(self, size: int) -> bool: ...
    def upload_new_blob(self, path: Path, *, progress: Progress = None,
                        pin_seconds: int | None = None) -> str: ...
    # Writes the blob's bytes to ``out`` in chunks; a chunk's buffer is not reused before the
    # write after next, so a sink may keep reading a chunk until its next write returns.
    def download_blob(self, digest: str, out: BinaryIO, *, progress: Progress = None) -> None: ...
    def read_blob_range(self, digest: str, offset: int, length: int) -> bytes: ...
    def local_blob_path(self, digest: str) -> Path | None: ...
    def gc(self, *, grace_seconds: int | None, dry_run: bool) -> dict[str, Any]: ...

    # --- adapters and versions ---
    def create_version(self, name: str, body: CreateVersionIn) -> tuple[VersionOut, bool]: ...
    def get_version(self, name: str, version: int | None) -> VersionOut: ...
    def list_adapters(self) -> list[AdapterOut]: ...
    def list_versions(self, name: str) -> list[VersionOut]: ...
    def lineage(self, name: str, version: int) -> LineageOut: ...

    # --- base models and compatibility ---
    def register_base(self, body: RegisterBaseIn) -> tuple[BaseModelOut, bool]: ...
    def get_base(self, name: str, revision: str | None = None) -> BaseModelOut: ...
    def list_bases(self) -> list[BaseModelOut]: ...
    def compat_verdict(self, name: str, version: int | None, *, base: str,
                       base_revision: str | None = None) -> VerdictOut: ...
    def compatible_versions(self, *, base: str,
                            base_revision: str | None = None) -> list[CompatibleVersionOut]: ...
    def compatible_bases(self, name: str, version: int | None) -> list[CompatibleBaseOut]: ...

    # --- merged exports ---
    def create_export(self, body: CreateExportIn) -> tuple[ExportOut, bool]: ...
    def list_exports(self, name: str, version: int, *, base: str | None = None,
                     base_revision: str | None = None,
                     dtype: str | None = None) -> list[ExportOut]: ...
    # The provenance this registry records for this caller's exports ("embedded",
    # "token:NAME"), or None when it cannot tell this caller from anyone else (a server
    # without tokens): a client trusts recorded exports of its own provenance.
    def export_provenance(self) -> str | None: ...

    # --- evals and events ---
    def record_scores(self, name: str, version: int,
                      body: RecordScoresIn) -> list[ScoreOut]: ...
    def list_events(self, *, after: int = 0, limit: int = 100,
                    types: tuple[str, ...] = (), adapter: str | None = None) -> EventPageOut: ...

    def close(self) -> None: ...
