"""ORM models: blobs, bases, adapters, versions, verdicts, exports, jobs, evals, aliases, events,
API tokens."""

from __future__ import annotations

import enum
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
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from registry.db.base import Base, BigId, utcnow
from registry.db.enums import (
    AliasAction,
    BlobState,
    DeliveryStatus,
    JobKind,
    JobStatus,
    ScoreSource,
    SourceKind,
    SuiteKind,
    VersionStatus,
)

__all__ = [
    "Adapter",
    "AdapterVersion",
    "Alias",
    "AliasAction",
    "AliasEvent",
    "ApiToken",
    "BaseModelFile",
    "BaseModelRow",
    "Blob",
    "BlobState",
    "Compatibility",
    "DeliveryStatus",
    "EvalScore",
    "EvalSuite",
    "EvalSuiteFile",
    "Event",
    "Export",
    "ExportFile",
    "Job",
    "JobKind",
    "JobStatus",
    "PromotionPolicy",
    "ScoreSource",
    "SourceKind",
    "SuiteAttachment",
    "SuiteKind",
    "VersionFile",
    "VersionStatus",
    "Webhook",
    "WebhookDelivery",
]


def _enum(cls: type[enum.StrEnum], name: str, length: int = 16) -> Enum:
    # Stored as VARCHAR + CHECK on every backend (no native enum types to migrate).
    return Enum(cls, native_enum=False, length=length, create_constraint=True, name=name,
                values_callable=lambda e: [m.value for m in e])


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
    # A push in progress pins the blobs it uploaded or found until it creates its version:
    # gc leaves a pinned blob alone whatever its grace period (the pin expires by itself).
    pinned_until: Mapped[datetime | None] = mapped_column()
    # What the registry parsed from the content, kept because content never changes (migration
    # 0008): {"safetensors": {"header_bytes", "tensors"}} once a header was validated, {"text"}
    # for a small file read whole (a config). A version create then reads nothing from the
    # store for blobs it has seen. Deferred: only registration loads it.
    parsed: Mapped[dict[str, Any] | None] = mapped_column(JSON, deferred=True)


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
    # Read by `list` (few per adapter); adapters never import lifecycle for it.
    aliases: Mapped[list[Alias]] = relationship(viewonly=True, order_by="Alias.name")


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
    # Read by the version object (few per version); domains never import each other for it.
    scores: Mapped[list[EvalScore]] = relationship(viewonly=True, order_by="EvalScore.id")
    # The aliases pointing here, read by the version object like ``scores``.
    aliases: Mapped[list[Alias]] = relationship(viewonly=True, order_by="Alias.name")
    # The version object's last validation, read the same way (adapters never import jobs).
    validations: Mapped[list[Job]] = relationship(
        viewonly=True, order_by="Job.id",
        primaryjoin="and_(AdapterVersion.id == foreign(Job.adapter_version_id), "
                    "Job.kind == 'validate')",
    )


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



# --- jobs: the durable queue workers claim from --------------------------------------------


class Job(Base):
    """A unit of work for a worker (validate a version on a base; export later).

    Claimed in one statement (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE`` on
    SQLite), ordered by priority then id; a running job holds a lease the worker renews; an
    expired lease makes it claimable again (``attempts`` + 1), and ``attempts`` fences late
    reports from a worker whose lease was taken over.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_priority_id", "status", "priority", "id"),
        Index("ix_jobs_status_lease_expires_at", "status", "lease_expires_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[JobKind] = mapped_column(_enum(JobKind, "job_kind"), index=True)
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "job_status"),
                                              default=JobStatus.queued)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    adapter_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="CASCADE"), index=True
    )
    base_model_id: Mapped[int | None] = mapped_column(
        ForeignKey("base_models.id", ondelete="CASCADE"), index=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    run_after: Mapped[datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    created_by: Mapped[str | None] = mapped_column(String(200))

    version: Mapped[AdapterVersion | None] = relationship()
    base_model: Mapped[BaseModelRow | None] = relationship()


# --- evals: suites, which adapters run them, and scores --------------------------------------


class EvalSuite(Base):
    """One version of an eval suite: its kind, options and data files (blobs)."""

    __tablename__ = "eval_suites"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[SuiteKind] = mapped_column(_enum(SuiteKind, "suite_kind"))
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # sha256 over the sorted path/digest list: re-adding equal content is the same version.
    content_digest: Mapped[str] = mapped_column(String(71))
    item_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(200))

    files: Mapped[list[EvalSuiteFile]] = relationship(
        back_populates="suite", order_by="EvalSuiteFile.path", cascade="all, delete-orphan"
    )


class EvalSuiteFile(Base):
    __tablename__ = "eval_suite_files"
    __table_args__ = (UniqueConstraint("suite_id", "path"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    suite_id: Mapped[int] = mapped_column(ForeignKey("eval_suites.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(1024))
    # RESTRICT: gc never removes a suite's data.
    blob_id: Mapped[int] = mapped_column(ForeignKey("blobs.id", ondelete="RESTRICT"), index=True)

    suite: Mapped[EvalSuite] = relationship(back_populates="files")
    blob: Mapped[Blob] = relationship()


class SuiteAttachment(Base):
    """Suite NAME runs (its latest version) on every validation of the adapter."""

    __tablename__ = "suite_attachments"
    __table_args__ = (UniqueConstraint("adapter_id", "suite_name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"))
    suite_name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(200))


class EvalScore(Base):
    """One metric of one suite for one version on one base (version NULL: the base's own).

    Indexed for "latest score of metric M for version V" and "best version by M".
    """

    __tablename__ = "eval_scores"
    __table_args__ = (
        Index("ix_eval_scores_version_suite_metric", "adapter_version_id", "suite", "metric",
              "created_at"),
        Index("ix_eval_scores_suite_metric_value", "suite", "metric", "value"),
        Index("ix_eval_scores_base_suite_metric", "base_model_id", "suite", "metric"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    adapter_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="CASCADE")
    )
    base_model_id: Mapped[int | None] = mapped_column(
        ForeignKey("base_models.id", ondelete="CASCADE")
    )
    suite: Mapped[str] = mapped_column(String(200))
    suite_version: Mapped[int | None] = mapped_column(Integer)
    metric: Mapped[str] = mapped_column(String(200))
    value: Mapped[float] = mapped_column(Float)
    n: Mapped[int | None] = mapped_column(Integer)
    source: Mapped[ScoreSource] = mapped_column(_enum(ScoreSource, "score_source", 8))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"),
                                               index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(200))

    version: Mapped[AdapterVersion | None] = relationship()
    base_model: Mapped[BaseModelRow | None] = relationship()


# --- lifecycle: aliases, their history, promotion policies -----------------------------------


class Alias(Base):
    """A movable name (``production``) pointing one adapter at one of its versions."""

    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("adapter_id", "name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    version_id: Mapped[int] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="RESTRICT"), index=True
    )
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(200))

    adapter: Mapped[Adapter] = relationship()
    version: Mapped[AdapterVersion] = relationship()


class AliasEvent(Base):
    """One move of an alias (append-only): what it pointed at before and after, who, why, and
    the gate results as they were evaluated. Rollback walks these."""

    __tablename__ = "alias_events"
    __table_args__ = (Index("ix_alias_events_adapter_id_alias_id", "adapter_id", "alias", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(63))
    action: Mapped[AliasAction] = mapped_column(_enum(AliasAction, "alias_action"))
    from_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="RESTRICT"), index=True
    )
    to_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="RESTRICT"), index=True
    )
    actor: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)
    gates: Mapped[Any] = mapped_column(JSON, default=list)
    at: Mapped[datetime] = mapped_column(default=utcnow)

    from_version: Mapped[AdapterVersion | None] = relationship(foreign_keys=[from_version_id])
    to_version: Mapped[AdapterVersion | None] = relationship(foreign_keys=[to_version_id])


class PromotionPolicy(Base):
    """The gates a promotion to one alias must pass; ``adapter_id`` NULL: the registry-wide
    default for that alias (at most one: a partial unique index)."""

    __tablename__ = "promotion_policies"
    __table_args__ = (
        UniqueConstraint("adapter_id", "alias"),
        Index("ix_promotion_policies_default_alias", "alias", unique=True,
              postgresql_where=text("adapter_id IS NULL"),
              sqlite_where=text("adapter_id IS NULL")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    adapter_id: Mapped[int | None] = mapped_column(
        ForeignKey("adapters.id", ondelete="CASCADE")
    )
    alias: Mapped[str] = mapped_column(String(63))
    require_validated: Mapped[bool] = mapped_column(Boolean, default=False)
    # {"SUITE.METRIC": threshold}; {"SUITE.METRIC": tolerance or null}
    min_scores: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    max_scores: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    no_regression: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    require_base: Mapped[str | None] = mapped_column(String(200))
    protected: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(200))


# --- events: the outbox every change writes in its own transaction ----------------------------


class Event(Base):
    """Something that happened (``version.created``, ``alias.promoted`` …), written in the same
    transaction as the change: the audit log and the webhooks' outbox. Append-only; ``id``
    orders them (``GET /api/v1/events?after=ID``)."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    type: Mapped[str] = mapped_column(String(64), index=True)
    adapter: Mapped[str | None] = mapped_column(String(200), index=True)
    version: Mapped[int | None] = mapped_column(Integer)
    alias: Mapped[str | None] = mapped_column(String(63))
    actor: Mapped[str | None] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


# --- access control: API tokens ---------------------------------------------------------------


class ApiToken(Base):
    """A named API token: only the SHA-256 of its secret is kept (the secret is shown once).

    Secrets are 32 random bytes, so a plain hash is enough (nothing to brute-force); a token
    is looked up by its hash. Revoked tokens keep their row (and name): the audit log names
    them.
    """

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    # Empty: every adapter; otherwise only NS/* adapters for NS in it.
    namespaces: Mapped[list[str]] = mapped_column(JSON)
    expires_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(200))
    revoked_at: Mapped[datetime | None] = mapped_column()


# --- webhooks: subscriptions and their deliveries (written with the event: the outbox) --------


class Webhook(Base):
    """A subscription: events of ``event_types`` (optionally of one adapter) are POSTed to
    ``url``, signed with ``secret`` (``whsec_…``; kept to sign, never returned after creation).
    ``webhook rm`` sets ``active`` false: its deliveries stay readable."""

    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[Any] = mapped_column(JSON, default=list)
    adapter: Mapped[str | None] = mapped_column(String(200))
    secret: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(200))


class WebhookDelivery(Base):
    """One event for one webhook, at most once: ``(webhook_id, event_id)`` unique.

    A dispatcher claims due rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL) by setting
    ``status=delivering`` and a lease (``claimed_until``); a lease that expires (a dead server)
    makes the row claimable again. ``attempts`` counts claims and fences late outcomes.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("webhook_id", "event_id"),
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_status_claimed_until", "status", "claimed_until"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"),
                                          index=True)
    status: Mapped[DeliveryStatus] = mapped_column(_enum(DeliveryStatus, "delivery_status"),
                                                   default=DeliveryStatus.pending)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_until: Mapped[datetime | None] = mapped_column()
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_response: Mapped[str | None] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column()

    webhook: Mapped[Webhook] = relationship()
    event: Mapped[Event] = relationship()
