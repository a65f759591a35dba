"""ORM models: blobs, base models, adapters, versions, files, compatibility verdicts, exports."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from registry.db.base import Base, BigId, utcnow
from registry.db.enums import BlobState, SourceKind, VersionStatus

__all__ = [
    "Adapter",
    "AdapterVersion",
    "BaseModelFile",
    "BaseModelRow",
    "Blob",
    "BlobState",
    "Compatibility",
    "Export",
    "ExportFile",
    "SourceKind",
    "VersionFile",
    "VersionStatus",
]


class Blob(Base):
    """A content-addressed file in the blob store; a row exists only once its digest verified.

    The row is the lock that orders uploads and garbage collection of one digest (see
    docs/architecture.md, "Garbage collection"): an object is deleted only while its row is
    ``deleting`` (or, for an orphan, after gc claimed the digest with such a row).
    """

    __tablename__ = "blobs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    digest: Mapped[str] = mapped_column(String(71), unique=True)
    # Indexed: a push asks whether any blob has a file's size before deciding to hash it first.
    size: Mapped[int] = mapped_column(BigInteger, index=True)
    # The last upload of this digest: gc's grace period counts from here.
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    state: Mapped[BlobState] = mapped_column(
        Enum(BlobState, native_enum=False, length=8, create_constraint=True, name="blob_state"),
        default=BlobState.present, server_default=BlobState.present.value,
    )


class BaseModelRow(Base):
    """A base model at one pinned revision, with the tensor manifest adapters are checked against.

    Named ``…Row`` so it is never confused with pydantic's ``BaseModel`` or the declarative
    ``Base``.

    One name may have several revisions; ``--base NAME`` means the latest registered one.
    """

    __tablename__ = "base_models"
    __table_args__ = (
        UniqueConstraint("name", "revision"),
        Index("ix_base_models_name_created_at", "name", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    revision: Mapped[str] = mapped_column(String(200))
    # file:// (stored in the blob store), hf://org/repo@sha or s3://bucket/prefix (referenced).
    source: Mapped[str] = mapped_column(String(1000))
    # A SourceKind value (a plain string column: the values are stable and few).
    source_kind: Mapped[str] = mapped_column(String(8))
    # What makes two registrations "the same weights": file digests, or the pinned remote ref.
    content_id: Mapped[str] = mapped_column(String(300))
    architectures: Mapped[Any] = mapped_column(JSON)
    model_type: Mapped[str | None] = mapped_column(String(64), index=True)
    hidden_size: Mapped[int | None] = mapped_column(Integer)
    vocab_size: Mapped[int | None] = mapped_column(Integer)
    num_hidden_layers: Mapped[int | None] = mapped_column(Integer)
    tie_word_embeddings: Mapped[bool | None] = mapped_column(Boolean)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    tensor_manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    tensor_count: Mapped[int] = mapped_column(Integer)
    total_size: Mapped[int] = mapped_column(BigInteger)
    fingerprint: Mapped[str] = mapped_column(String(71), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(200))

    files: Mapped[list[BaseModelFile]] = relationship(
        back_populates="base_model", order_by="BaseModelFile.path", cascade="all, delete-orphan"
    )


class BaseModelFile(Base):
    """One file of a base checkpoint: a stored blob, or a referenced remote object."""

    __tablename__ = "base_model_files"
    __table_args__ = (UniqueConstraint("base_model_id", "path"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    base_model_id: Mapped[int] = mapped_column(
        ForeignKey("base_models.id", ondelete="CASCADE")
    )
    path: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(BigInteger)
    blob_id: Mapped[int | None] = mapped_column(
        ForeignKey("blobs.id", ondelete="RESTRICT"), index=True
    )
    # Remote identity when referenced (S3 ETag, HF blob id): recorded, not verified on read.
    etag: Mapped[str | None] = mapped_column(String(200))

    base_model: Mapped[BaseModelRow] = relationship(back_populates="files")
    blob: Mapped[Blob | None] = relationship()


class Adapter(Base):
    __tablename__ = "adapters"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    task_type: Mapped[str | None] = mapped_column(String(64))
    # Last version number handed out; incremented under a row lock so numbers are never reused.
    version_counter: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    versions: Mapped[list[AdapterVersion]] = relationship(
        back_populates="adapter", order_by="AdapterVersion.version"
    )


class AdapterVersion(Base):
    __tablename__ = "adapter_versions"
    __table_args__ = (
        UniqueConstraint("adapter_id", "version"),
        UniqueConstraint("adapter_id", "idempotency_key"),
        Index("ix_adapter_versions_adapter_id_status", "adapter_id", "status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[VersionStatus] = mapped_column(
        Enum(VersionStatus, native_enum=False, length=16, create_constraint=True,
             name="version_status"),
        default=VersionStatus.registered,
    )
    peft_type: Mapped[str] = mapped_column(String(32), index=True)
    task_type: Mapped[str | None] = mapped_column(String(64))
    r: Mapped[int | None] = mapped_column(Integer)
    lora_alpha: Mapped[float | None] = mapped_column(Float)
    target_modules: Mapped[Any] = mapped_column(JSON)
    adapter_config: Mapped[dict[str, Any]] = mapped_column(JSON)
    tensor_manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    tensor_count: Mapped[int] = mapped_column(Integer)
    total_size: Mapped[int] = mapped_column(BigInteger)
    # sha256 over the sorted path/digest list: equal content <=> equal digest (idempotency).
    content_digest: Mapped[str] = mapped_column(String(71))
    base_model_id: Mapped[int | None] = mapped_column(
        ForeignKey("base_models.id", ondelete="RESTRICT"), index=True
    )
    declared_base_model: Mapped[str | None] = mapped_column(String(500))
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="RESTRICT"), index=True
    )
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    git_commit: Mapped[str | None] = mapped_column(String(64))
    ci_run_url: Mapped[str | None] = mapped_column(String(1000))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    created_by: Mapped[str | None] = mapped_column(String(200))

    adapter: Mapped[Adapter] = relationship(back_populates="versions")
    base_model: Mapped[BaseModelRow | None] = relationship()
    parent: Mapped[AdapterVersion | None] = relationship(remote_side=[id])
    files: Mapped[list[VersionFile]] = relationship(
        back_populates="version", order_by="VersionFile.path", cascade="all, delete-orphan"
    )
    verdicts: Mapped[list[Compatibility]] = relationship(viewonly=True)
    exports: Mapped[list[Export]] = relationship(viewonly=True)


class VersionFile(Base):
    __tablename__ = "version_files"
    __table_args__ = (UniqueConstraint("version_id", "path"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(1024))
    # RESTRICT: a blob referenced by any version can never be deleted, whatever gc decides.
    blob_id: Mapped[int] = mapped_column(ForeignKey("blobs.id", ondelete="RESTRICT"), index=True)

    version: Mapped[AdapterVersion] = relationship(back_populates="files")
    blob: Mapped[Blob] = relationship()


class Compatibility(Base):
    """A verdict: does this adapter version fit this base model? (static = from shapes only)."""

    __tablename__ = "compatibility"
    __table_args__ = (
        UniqueConstraint("adapter_version_id", "base_model_id"),
        # "what fits base B" and "what bases fit version V" are index scans.
        Index("ix_compatibility_base_model_id_compatible", "base_model_id", "compatible"),
        Index("ix_compatibility_adapter_version_id_compatible", "adapter_version_id",
              "compatible"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    adapter_version_id: Mapped[int] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="CASCADE")
    )
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id", ondelete="CASCADE"))
    compatible: Mapped[bool] = mapped_column(Boolean)
    method: Mapped[str] = mapped_column(String(16))
    reasons: Mapped[Any] = mapped_column(JSON)
    warnings: Mapped[Any] = mapped_column(JSON)
    serving: Mapped[dict[str, Any]] = mapped_column(JSON)
    checked_at: Mapped[datetime] = mapped_column(default=utcnow)


class Export(Base):
    """A merged checkpoint made from (adapter version, base model, dtype), stored as blobs.

    ``provenance`` says who recorded it, set by the server, never by the client:
    ``anonymous`` (an unauthenticated request), ``token:NAME`` (an API token, issue 13),
    ``embedded`` (the embedded CLI, which writes the database directly) or ``job:ID`` (a
    registry export job). A client reuses an export only from a provenance it trusts, so each
    uploader has its own record per (version, base, dtype): nobody's upload can take the place
    of another's.
    """

    __tablename__ = "exports"
    __table_args__ = (
        UniqueConstraint("adapter_version_id", "base_model_id", "dtype", "provenance"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    adapter_version_id: Mapped[int] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="CASCADE")
    )
    base_model_id: Mapped[int] = mapped_column(
        ForeignKey("base_models.id", ondelete="RESTRICT"), index=True
    )
    dtype: Mapped[str] = mapped_column(String(16))
    total_size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The authenticated principal's name (None when anonymous). Rows recorded before migration
    # 0006 hold whatever the client sent; their provenance is "anonymous".
    created_by: Mapped[str | None] = mapped_column(String(200))
    provenance: Mapped[str] = mapped_column(String(220))

    version: Mapped[AdapterVersion] = relationship()
    base_model: Mapped[BaseModelRow] = relationship()
    files: Mapped[list[ExportFile]] = relationship(
        back_populates="export", order_by="ExportFile.path", cascade="all, delete-orphan"
    )


class ExportFile(Base):
    __tablename__ = "export_files"
    __table_args__ = (UniqueConstraint("export_id", "path"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    export_id: Mapped[int] = mapped_column(ForeignKey("exports.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(1024))
    blob_id: Mapped[int] = mapped_column(ForeignKey("blobs.id", ondelete="RESTRICT"), index=True)

    export: Mapped[Export] = relationship(back_populates="files")
    blob: Mapped[Blob] = relationship()
