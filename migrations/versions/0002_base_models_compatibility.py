"""base models (source, manifest, fingerprint, files) and compatibility verdicts

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "base_model_files",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "base_model_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("blob_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("etag", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["base_model_id"],
            ["base_models.id"],
            name=op.f("fk_base_model_files_base_model_id_base_models"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["blob_id"],
            ["blobs.id"],
            name=op.f("fk_base_model_files_blob_id_blobs"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_base_model_files")),
        sa.UniqueConstraint(
            "base_model_id", "path", name=op.f("uq_base_model_files_base_model_id_path")
        ),
    )
    with op.batch_alter_table("base_model_files", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_base_model_files_blob_id"), ["blob_id"], unique=False)

    op.create_table(
        "compatibility",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "adapter_version_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
        ),
        sa.Column(
            "base_model_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("compatible", sa.Boolean(), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("warnings", sa.JSON(), nullable=False),
        sa.Column("serving", sa.JSON(), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["adapter_version_id"],
            ["adapter_versions.id"],
            name=op.f("fk_compatibility_adapter_version_id_adapter_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["base_model_id"],
            ["base_models.id"],
            name=op.f("fk_compatibility_base_model_id_base_models"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_compatibility")),
        sa.UniqueConstraint(
            "adapter_version_id",
            "base_model_id",
            name=op.f("uq_compatibility_adapter_version_id_base_model_id"),
        ),
    )
    with op.batch_alter_table("compatibility", schema=None) as batch_op:
        batch_op.create_index(
            "ix_compatibility_adapter_version_id_compatible",
            ["adapter_version_id", "compatible"],
            unique=False,
        )
        batch_op.create_index(
            "ix_compatibility_base_model_id_compatible",
            ["base_model_id", "compatible"],
            unique=False,
        )

    # Rows from 0001 were bare name references: give them placeholder values, then tighten.
    required = {
        "source": (sa.String(length=1000), "'unregistered'"),
        "source_kind": (sa.String(length=8), "'none'"),
        "content_id": (sa.String(length=300), "''"),
        "architectures": (sa.JSON(), "'[]'"),
        "config": (sa.JSON(), "'{}'"),
        "tensor_manifest": (sa.JSON(), "'{}'"),
        "tensor_count": (sa.Integer(), "0"),
        "total_size": (sa.BigInteger(), "0"),
        "fingerprint": (sa.String(length=71), "''"),
    }
    with op.batch_alter_table("base_models", schema=None) as batch_op:
        for column, (type_, _) in required.items():
            batch_op.add_column(sa.Column(column, type_, nullable=True))
        batch_op.add_column(sa.Column("model_type", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("hidden_size", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("vocab_size", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("num_hidden_layers", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("tie_word_embeddings", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("created_by", sa.String(length=200), nullable=True))
    assignments = ", ".join(f"{c} = {default}" for c, (_, default) in required.items())
    op.execute(f"UPDATE base_models SET {assignments}, revision = COALESCE(revision, 'unknown')")
    with op.batch_alter_table("base_models", schema=None) as batch_op:
        for column, (type_, _) in required.items():
            batch_op.alter_column(column, existing_type=type_, nullable=False)
        batch_op.alter_column("revision", existing_type=sa.VARCHAR(length=200), nullable=False)
        batch_op.drop_constraint(batch_op.f("uq_base_models_name"), type_="unique")
        batch_op.create_index(batch_op.f("ix_base_models_fingerprint"), ["fingerprint"])
        batch_op.create_index(batch_op.f("ix_base_models_model_type"), ["model_type"])
        batch_op.create_index("ix_base_models_name_created_at", ["name", "created_at"])
        batch_op.create_unique_constraint(
            batch_op.f("uq_base_models_name_revision"), ["name", "revision"]
        )


def downgrade() -> None:
    with op.batch_alter_table("base_models", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_base_models_name_revision"), type_="unique")
        batch_op.drop_index("ix_base_models_name_created_at")
        batch_op.drop_index(batch_op.f("ix_base_models_model_type"))
        batch_op.drop_index(batch_op.f("ix_base_models_fingerprint"))
    # Several revisions of one name cannot fold back into one row: keep the latest.
    op.execute(
        "UPDATE adapter_versions SET base_model_id = (SELECT MAX(b2.id) FROM base_models b2 "
        "WHERE b2.name = (SELECT b.name FROM base_models b "
        "WHERE b.id = adapter_versions.base_model_id)) WHERE base_model_id IS NOT NULL"
    )
    op.execute(
        "DELETE FROM base_models WHERE id NOT IN (SELECT MAX(id) FROM base_models GROUP BY name)"
    )
    with op.batch_alter_table("base_models", schema=None) as batch_op:
        batch_op.create_unique_constraint(batch_op.f("uq_base_models_name"), ["name"])
        batch_op.alter_column("revision", existing_type=sa.VARCHAR(length=200), nullable=True)
        batch_op.drop_column("created_by")
        batch_op.drop_column("fingerprint")
        batch_op.drop_column("total_size")
        batch_op.drop_column("tensor_count")
        batch_op.drop_column("tensor_manifest")
        batch_op.drop_column("config")
        batch_op.drop_column("tie_word_embeddings")
        batch_op.drop_column("num_hidden_layers")
        batch_op.drop_column("vocab_size")
        batch_op.drop_column("hidden_size")
        batch_op.drop_column("model_type")
        batch_op.drop_column("architectures")
        batch_op.drop_column("content_id")
        batch_op.drop_column("source_kind")
        batch_op.drop_column("source")

    with op.batch_alter_table("compatibility", schema=None) as batch_op:
        batch_op.drop_index("ix_compatibility_base_model_id_compatible")
        batch_op.drop_index("ix_compatibility_adapter_version_id_compatible")

    op.drop_table("compatibility")
    with op.batch_alter_table("base_model_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_base_model_files_blob_id"))

    op.drop_table("base_model_files")
