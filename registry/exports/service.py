"""Export records: a merged checkpoint per (adapter version, base model, dtype), files as blobs."""

from __future__ import annotations

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, selectinload

from registry.adapters.queries import get_version
from registry.adapters.schemas import FileOut
from registry.base_models.queries import get_base
from registry.blobs.service import blobs_for
from registry.db.dialect import add_unless_exists
from registry.db.models import Export, ExportFile
from registry.errors import Conflict, InvalidInput
from registry.exports.schemas import CreateExportIn, ExportOut
from registry.formats import normalize_path
from registry.storage import parse_digest


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


def create_export(session: Session, *, body: CreateExportIn) -> tuple[Export, bool]:
    """Record a merged checkpoint whose files are already stored.

    Returns:
        ``(export, created)``; the same files recorded twice return the first record.

    Raises:
        VersionNotFound, BaseModelNotFound, BlobNotFound, InvalidInput, Conflict.
    """
    if not body.files:
        raise InvalidInput("an export needs its files")
    for path, digest in body.files.items():
        normalize_path(path)
        parse_digest(digest)
    if "config.json" not in body.files or not any(
        p.endswith(".safetensors") for p in body.files
    ):
        raise InvalidInput("an export must hold config.json and safetensors weights")
    v = get_version(session, name=body.name, version=body.version)
    b = get_base(session, name=body.base, revision=body.base_revision)
    blobs = blobs_for(session, body.files)
    existing = session.scalars(
        _query().where(Export.adapter_version_id == v.id, Export.base_model_id == b.id,
                       Export.dtype == body.dtype)
    ).one_or_none()
    if existing is not None:
        if {f.path: f.blob.digest for f in existing.files} == body.files:
            return existing, False
        raise Conflict(
            f"{body.name}:{body.version} was already exported for {body.base}@{b.revision} "
            f"in {body.dtype} with other files"
        )
    export = Export(
        version=v, base_model=b, dtype=body.dtype,
        total_size=sum(blob.size for blob in blobs.values()), created_by=body.created_by,
    )
    export.files = [ExportFile(path=p, blob=blob) for p, blob in sorted(blobs.items())]
    if not add_unless_exists(session, export):  # recorded concurrently: compare with that one
        return create_export(session, body=body)
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
    )
