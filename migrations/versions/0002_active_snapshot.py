"""The active snapshot survives restarts; factory strings of any length.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the single-row `active_snapshot` table and widen `index_snapshots.factory` to text."""
    op.create_table(
        "active_snapshot",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("previous_version", sa.String(length=128), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_active_snapshot_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_active_snapshot")),
    )
    with op.batch_alter_table("index_snapshots") as batch:
        batch.alter_column("factory", type_=sa.Text(), existing_type=sa.String(length=256),
                           existing_nullable=False)


def downgrade() -> None:
    """Drop `active_snapshot`; factory strings longer than 256 characters are cut to fit again."""
    op.execute("UPDATE index_snapshots SET factory = substr(factory, 1, 256)")
    with op.batch_alter_table("index_snapshots") as batch:
        batch.alter_column("factory", type_=sa.String(length=256), existing_type=sa.Text(),
                           existing_nullable=False)
    op.drop_table("active_snapshot")
