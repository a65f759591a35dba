"""jobs, eval suites and scores, aliases and their history, promotion policies, events

The tables the validation worker (jobs, evals) and the lifecycle (aliases, alias_events,
promotion_policies) build on, and the events outbox every change writes to.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "eval_suites",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "perplexity",
                "generate",
                "classify",
                "lm-eval",
                name="suite_kind",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("content_digest", sa.String(length=71), nullable=False),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_suites")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_eval_suites_name_version")),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("adapter", sa.String(length=200), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("alias", sa.String(length=63), nullable=True),
        sa.Column("actor", sa.String(length=200), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_events_adapter"), ["adapter"], unique=False)
        batch_op.create_index(batch_op.f("ix_events_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_events_type"), ["type"], unique=False)

    op.create_table(
        "eval_suite_files",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("suite_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("blob_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.ForeignKeyConstraint(
            ["blob_id"],
            ["blobs.id"],
            name=op.f("fk_eval_suite_files_blob_id_blobs"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["suite_id"],
            ["eval_suites.id"],
            name=op.f("fk_eval_suite_files_suite_id_eval_suites"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_suite_files")),
        sa.UniqueConstraint("suite_id", "path", name=op.f("uq_eval_suite_files_suite_id_path")),
    )
    with op.batch_alter_table("eval_suite_files", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_eval_suite_files_blob_id"), ["blob_id"], unique=False)

    op.create_table(
        "promotion_policies",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "adapter_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("alias", sa.String(length=63), nullable=False),
        sa.Column("require_validated", sa.Boolean(), nullable=False),
        sa.Column("min_scores", sa.JSON(), nullable=False),
        sa.Column("max_scores", sa.JSON(), nullable=False),
        sa.Column("no_regression", sa.JSON(), nullable=False),
        sa.Column("require_base", sa.String(length=200), nullable=True),
        sa.Column("protected", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["adapter_id"],
            ["adapters.id"],
            name=op.f("fk_promotion_policies_adapter_id_adapters"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_promotion_policies")),
        sa.UniqueConstraint(
            "adapter_id", "alias", name=op.f("uq_promotion_policies_adapter_id_alias")
        ),
    )
    with op.batch_alter_table("promotion_policies", schema=None) as batch_op:
        batch_op.create_index(
            "ix_promotion_policies_default_alias",
            ["alias"],
            unique=True,
            postgresql_where=sa.text("adapter_id IS NULL"),
            sqlite_where=sa.text("adapter_id IS NULL"),
        )

    op.create_table(
        "suite_attachments",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "adapter_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("suite_name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["adapter_id"],
            ["adapters.id"],
            name=op.f("fk_suite_attachments_adapter_id_adapters"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_suite_attachments")),
        sa.UniqueConstraint(
            "adapter_id", "suite_name", name=op.f("uq_suite_attachments_adapter_id_suite_name")
        ),
    )
    op.create_table(
        "alias_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "adapter_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("alias", sa.String(length=63), nullable=False),
        sa.Column(
            "action",
            sa.Enum(
                "promote",
                "rollback",
                "force",
                "delete",
                name="alias_action",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column(
            "from_version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column(
            "to_version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("actor", sa.String(length=200), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("gates", sa.JSON(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["adapter_id"],
            ["adapters.id"],
            name=op.f("fk_alias_events_adapter_id_adapters"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["from_version_id"],
            ["adapter_versions.id"],
            name=op.f("fk_alias_events_from_version_id_adapter_versions"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["to_version_id"],
            ["adapter_versions.id"],
            name=op.f("fk_alias_events_to_version_id_adapter_versions"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alias_events")),
    )
    with op.batch_alter_table("alias_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_alias_events_adapter_id_alias_id", ["adapter_id", "alias", "id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_alias_events_from_version_id"), ["from_version_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_alias_events_to_version_id"), ["to_version_id"], unique=False
        )

    op.create_table(
        "aliases",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "adapter_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column(
            "version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["adapter_id"],
            ["adapters.id"],
            name=op.f("fk_aliases_adapter_id_adapters"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["adapter_versions.id"],
            name=op.f("fk_aliases_version_id_adapter_versions"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_aliases")),
        sa.UniqueConstraint("adapter_id", "name", name=op.f("uq_aliases_adapter_id_name")),
    )
    with op.batch_alter_table("aliases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_aliases_version_id"), ["version_id"], unique=False)

    op.create_table(
        "jobs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "validate",
                "export",
                name="job_kind",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column(
            "status",
            sa.Enum(
                "queued",
                "running",
                "succeeded",
                "failed",
                "cancelled",
                name="job_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column(
            "adapter_version_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=True,
        ),
        sa.Column(
            "base_model_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("run_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["adapter_version_id"],
            ["adapter_versions.id"],
            name=op.f("fk_jobs_adapter_version_id_adapter_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["base_model_id"],
            ["base_models.id"],
            name=op.f("fk_jobs_base_model_id_base_models"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_jobs_adapter_version_id"), ["adapter_version_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_jobs_base_model_id"), ["base_model_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_kind"), ["kind"], unique=False)
        batch_op.create_index(
            "ix_jobs_status_lease_expires_at", ["status", "lease_expires_at"], unique=False
        )
        batch_op.create_index(
            "ix_jobs_status_priority_id", ["status", "priority", "id"], unique=False
        )

    op.create_table(
        "eval_scores",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "adapter_version_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=True,
        ),
        sa.Column(
            "base_model_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("suite", sa.String(length=200), nullable=False),
        sa.Column("suite_version", sa.Integer(), nullable=True),
        sa.Column("metric", sa.String(length=200), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=True),
        sa.Column(
            "source",
            sa.Enum(
                "worker",
                "ci",
                "user",
                name="score_source",
                native_enum=False,
                create_constraint=True,
                length=8,
            ),
            nullable=False,
        ),
        sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["adapter_version_id"],
            ["adapter_versions.id"],
            name=op.f("fk_eval_scores_adapter_version_id_adapter_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["base_model_id"],
            ["base_models.id"],
            name=op.f("fk_eval_scores_base_model_id_base_models"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_eval_scores_job_id_jobs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_scores")),
    )
    with op.batch_alter_table("eval_scores", schema=None) as batch_op:
        batch_op.create_index(
            "ix_eval_scores_base_suite_metric", ["base_model_id", "suite", "metric"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_eval_scores_job_id"), ["job_id"], unique=False)
        batch_op.create_index(
            "ix_eval_scores_suite_metric_value", ["suite", "metric", "value"], unique=False
        )
        batch_op.create_index(
            "ix_eval_scores_version_suite_metric",
            ["adapter_version_id", "suite", "metric", "created_at"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("eval_scores", schema=None) as batch_op:
        batch_op.drop_index("ix_eval_scores_version_suite_metric")
        batch_op.drop_index("ix_eval_scores_suite_metric_value")
        batch_op.drop_index(batch_op.f("ix_eval_scores_job_id"))
        batch_op.drop_index("ix_eval_scores_base_suite_metric")

    op.drop_table("eval_scores")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_status_priority_id")
        batch_op.drop_index("ix_jobs_status_lease_expires_at")
        batch_op.drop_index(batch_op.f("ix_jobs_kind"))
        batch_op.drop_index(batch_op.f("ix_jobs_created_at"))
        batch_op.drop_index(batch_op.f("ix_jobs_base_model_id"))
        batch_op.drop_index(batch_op.f("ix_jobs_adapter_version_id"))

    op.drop_table("jobs")
    with op.batch_alter_table("aliases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_aliases_version_id"))

    op.drop_table("aliases")
    with op.batch_alter_table("alias_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alias_events_to_version_id"))
        batch_op.drop_index(batch_op.f("ix_alias_events_from_version_id"))
        batch_op.drop_index("ix_alias_events_adapter_id_alias_id")

    op.drop_table("alias_events")
    op.drop_table("suite_attachments")
    with op.batch_alter_table("promotion_policies", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_promotion_policies_default_alias",
            postgresql_where=sa.text("adapter_id IS NULL"),
            sqlite_where=sa.text("adapter_id IS NULL"),
        )

    op.drop_table("promotion_policies")
    with op.batch_alter_table("eval_suite_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_eval_suite_files_blob_id"))

    op.drop_table("eval_suite_files")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_events_type"))
        batch_op.drop_index(batch_op.f("ix_events_created_at"))
        batch_op.drop_index(batch_op.f("ix_events_adapter"))

    op.drop_table("events")
    op.drop_table("eval_suites")
