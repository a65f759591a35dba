"""blobs.parsed: what was parsed from a blob's content (safetensors header, small text), kept

A blob is content-addressed, so its parsed safetensors header never changes; keeping it with
the row lets a version create skip the store's range reads (the lifecycle benchmark's
register-a-version path).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parsed", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.drop_column("parsed")
