"""index blobs by size (single-pass uploads ask whether any blob has a given size)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_blobs_size"), "blobs", ["size"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_blobs_size"), table_name="blobs")
