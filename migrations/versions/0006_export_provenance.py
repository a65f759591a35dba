"""export provenance: who recorded an export, one export per uploader

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05

Exports recorded before this revision were uploaded without authentication (their created_by
was whatever the client sent): they become ``anonymous``, which no client reuses on its own.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("exports", schema=None) as batch_op:
        # The server default fills existing rows; the application always sets the column.
        batch_op.add_column(
            sa.Column("provenance", sa.String(length=220), nullable=False,
                      server_default="anonymous")
        )
        batch_op.drop_constraint(
            batch_op.f("uq_exports_adapter_version_id_base_model_id_dtype"), type_="unique"
        )
        batch_op.create_unique_constraint(
            batch_op.f("uq_exports_adapter_version_id_base_model_id_dtype_provenance"),
            ["adapter_version_id", "base_model_id", "dtype", "provenance"],
        )
    with op.batch_alter_table("exports", schema=None) as batch_op:
        batch_op.alter_column("provenance", server_default=None)


def downgrade() -> None:
    # One export per (version, base, dtype) again: keep the oldest of each, which is what a
    # client read first before this revision. Their files go explicitly: SQLite enforces the
    # ON DELETE CASCADE only where foreign keys are switched on.
    surplus = (
        "SELECT id FROM exports WHERE id NOT IN (SELECT min(id) FROM exports "
        "GROUP BY adapter_version_id, base_model_id, dtype)"
    )
    op.execute(f"DELETE FROM export_files WHERE export_id IN ({surplus})")
    op.execute(f"DELETE FROM exports WHERE id IN ({surplus})")
    with op.batch_alter_table("exports", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("uq_exports_adapter_version_id_base_model_id_dtype_provenance"),
            type_="unique",
        )
        batch_op.create_unique_constraint(
            batch_op.f("uq_exports_adapter_version_id_base_model_id_dtype"),
            ["adapter_version_id", "base_model_id", "dtype"],
        )
        batch_op.drop_column("provenance")
