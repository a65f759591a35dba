"""Export records: a merged checkpoint per (adapter version, base model, dtype), files as blobs."""

from __future__ import annotations

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, selectinload

from registry.adapters.queries import get_version
from registry.adapters.schemas import FileOut
from registry.base_models.queries import get_base
from registry.blobs.service import BlobFiles, blobs_for
from registry.config import Settings
from registry.db.dialect import add_unless_exists
from registry.db.models import AdapterVersion, BaseModelRow, Blob, Export, ExportFile
from registry.errors import Conflict, InvalidInput, TooLarge
from registry.events import service as events
from registry.events import types as event_types
from registry.exports.checks import check_export_files
from registry.exports.schemas import CreateExportIn, ExportOut
from registry.formats import TensorInfo, check_paths
from registry.storage import BlobStore, parse_digest


def _query() -> Select[Export]:
    return select(Export).options(
        selectinload(Export.files).selectinload(ExportFile.blob),
        selectinload(Export.version),
        selectinload(Export.base_model),
    )


def list_exports(session: Session, *, name: str, version: int, base: str | None = None,
                 base_revision: str | None = None, dtype: str | None = None) -> list[Export]:
    """A version's exports, optionally for one base model (latest revision by default) and dtype.
    """
    v = get_version(session, name=name, version=version)
    stmt = _query().where(Export.adapter_version_id == v.id)
    if base is not None:
        stmt = stmt.where(
            Export.base_model_id == get_base(session, name=base, revision=base_revision).id
        )
    if dtype is not None:
        stmt = stmt.where(Export.dtype == dtype)
    return list(session.scalars(stmt.order_by(Export.id)))


def create_export(session: Session, store: BlobStore, *, body: CreateExportIn,
                  settings: Settings, provenance: str,
                  created_by: str | None) -> tuple[Export, bool]:
    """Record a merged checkpoint whose files are already stored.

    The files are checked first, from their headers (`check_export_files`): a loadable
    checkpoint with the base's tensor names and shapes, in the declared dtype. Who records it
    is the caller's to say, from the request's authentication, never from the body.

    Args:
        session: the unit of work (flushed here).
        store: where the files' blobs are (headers are read with range reads).
        body: version, base, dtype and ``path -> digest``.
        settings: limits.
        provenance: who records it (``anonymous``, ``token:NAME``, ``embedded``); each
            provenance has its own record per (version, base, dtype).
        created_by: the authenticated principal's name, or None.

    Returns:
        ``(export, created)``; the same files recorded twice by the same provenance return the
        first record.

    Raises:
        VersionNotFound, BaseModelNotFound, BlobNotFound, InvalidInput, InvalidPath,
        InvalidExport, InvalidSafetensors, UnsafeFormat, TooLarge, Conflict.
    """
    if not body.files:
        raise InvalidInput("an export needs its files")
    if len(body.files) > settings.max_files_per_version:
        raise TooLarge(f"{len(body.files)} files exceed the limit of "
                       f"{settings.max_files_per_version}")
    check_paths(body.files)
    for digest in body.files.values():
        parse_digest(digest)
    if "config.json" not in body.files or not any(
        p.endswith(".safetensors") for p in body.files
    ):
        raise InvalidInput("an export must hold config.json and safetensors weights")
    v = get_version(session, name=body.name, version=body.version)
    b = get_base(session, name=body.base, revision=body.base_revision)
    blobs = blobs_for(session, body.files)
    check_export_files(
        sorted(blobs), BlobFiles(store, blobs),
        base_tensors={n: TensorInfo.from_json(t) for n, t in b.tensor_manifest.items()},
        base_config=b.config, dtype=body.dtype, max_header_bytes=settings.max_header_bytes,
        max_config_bytes=settings.max_config_bytes,
    )
    return _record(session, body=body, version=v, base=b, blobs=blobs, provenance=provenance,
                   created_by=created_by)


def _record(session: Session, *, body: CreateExportIn, version: AdapterVersion,
            base: BaseModelRow, blobs: dict[str, Blob], provenance: str,
            created_by: str | None) -> tuple[Export, bool]:
    existing = session.scalars(
        _query().where(Export.adapter_version_id == version.id,
                       Export.base_model_id == base.id, Export.dtype == body.dtype,
                       Export.provenance == provenance)
    ).one_or_none()
    if existing is not None:
        if {f.path: f.blob.digest for f in existing.files} == body.files:
            return existing, False
        raise Conflict(
            f"{body.name}:{body.version} was already exported for {body.base}@{base.revision} "
            f"in {body.dtype} by {provenance} with other files"
        )
    export = Export(
        version=version, base_model=base, dtype=body.dtype,
        total_size=sum(blob.size for blob in blobs.values()), created_by=created_by,
        provenance=provenance,
    )
    export.files = [ExportFile(path=p, blob=blob) for p, blob in sorted(blobs.items())]
    if not add_unless_exists(session, export):  # recorded concurrently: compare with that one
        return _record(session, body=body, version=version, base=base, blobs=blobs,
                       provenance=provenance, created_by=created_by)
    events.record(session, type=event_types.EXPORT_CREATED, adapter=version.adapter.name,
                  version=version.version, actor=created_by,
                  payload={"export": export.id, "base_model": base.name,
                           "base_revision": base.revision, "dtype": body.dtype,
                           "provenance": provenance, "total_size": export.total_size})
    return export, True


def to_out(e: Export) -> ExportOut:
    return ExportOut(
        name=e.version.adapter.name,
        version=e.version.version,
        base=e.base_model.name,
        base_revision=e.base_model.revision,
        dtype=e.dtype,
        total_size=e.total_size,
        files=[FileOut(path=f.path, digest=f.blob.digest, size=f.blob.size) for f in e.files],
        created_at=e.created_at,
        created_by=e.created_by,
        provenance=e.provenance,
    )
