"""merged-model exports and their files

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "exports",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "adapter_version_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
        ),
        sa.Column(
            "base_model_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("dtype", sa.String(length=16), nullable=False),
        sa.Column("total_size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["adapter_version_id"],
            ["adapter_versions.id"],
            name=op.f("fk_exports_adapter_version_id_adapter_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["base_model_id"],
            ["base_models.id"],
            name=op.f("fk_exports_base_model_id_base_models"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exports")),
        sa.UniqueConstraint(
            "adapter_version_id",
            "base_model_id",
            "dtype",
            name=op.f("uq_exports_adapter_version_id_base_model_id_dtype"),
        ),
    )
    with op.batch_alter_table("exports", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_exports_base_model_id"), ["base_model_id"], unique=False
        )

    op.create_table(
        "export_files",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "export_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("blob_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.ForeignKeyConstraint(
            ["blob_id"],
            ["blobs.id"],
            name=op.f("fk_export_files_blob_id_blobs"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["export_id"],
            ["exports.id"],
            name=op.f("fk_export_files_export_id_exports"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_files")),
        sa.UniqueConstraint("export_id", "path", name=op.f("uq_export_files_export_id_path")),
    )
    with op.batch_alter_table("export_files", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_export_files_blob_id"), ["blob_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("export_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_export_files_blob_id"))

    op.drop_table("export_files")
    with op.batch_alter_table("exports", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_exports_base_model_id"))

    op.drop_table("exports")
