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
from registry.lifecycle.schemas import (
    AliasChangeIn,
    AliasDeletedOut,
    AliasOut,
    HistoryEntryOut,
    PolicyIn,
    PolicyOut,
    PromoteIn,
    PromoteOut,
    RollbackIn,
    RollbackOut,
)

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

    # --- lifecycle: aliases, moves, history, policies, archive ---
    # ``resolve_alias`` returns the version object (as ``get_version``) NAME@ALIAS points at.
    def resolve_alias(self, name: str, alias: str) -> VersionOut: ...
    def list_aliases(self, name: str) -> list[AliasOut]: ...
    def promote(self, name: str, alias: str, body: PromoteIn) -> PromoteOut: ...
    def rollback(self, name: str, alias: str, body: RollbackIn) -> RollbackOut: ...
    def delete_alias(self, name: str, alias: str, body: AliasChangeIn) -> AliasDeletedOut: ...
    def history(self, name: str, *, alias: str | None = None,
                limit: int | None = None) -> list[HistoryEntryOut]: ...
    def archive(self, name: str, version: int, body: AliasChangeIn) -> VersionOut: ...
    # ``name`` None: the registry-wide default policy of the alias.
    def set_policy(self, name: str | None, alias: str, body: PolicyIn) -> PolicyOut: ...
    def delete_policy(self, name: str | None, alias: str) -> None: ...
    def list_policies(self, name: str | None) -> list[PolicyOut]: ...

    def close(self) -> None: ...
