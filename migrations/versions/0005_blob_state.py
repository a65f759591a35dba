"""blob state and pins: a row gc marks ``deleting`` before it removes the object, and the time
until which a push in progress keeps a blob from gc

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "state",
                sa.Enum("present", "deleting", name="blob_state", native_enum=False,
                        length=8, create_constraint=True),
                nullable=False,
                server_default="present",
            )
        )
        batch_op.add_column(sa.Column("pinned_until", sa.DateTime(timezone=True),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.drop_column("pinned_until")
        batch_op.drop_constraint(batch_op.f("ck_blobs_blob_state"), type_="check")
        batch_op.drop_column("state")
