"""Initial schema: cases, index snapshots and their activations, search audit.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the four tables and the indexes their queries use."""
    op.create_table(
        "cases",
        sa.Column("case_id", sa.String(length=128), nullable=False),
        sa.Column("patient_hash", sa.String(length=64), nullable=True),
        sa.Column("study_uid", sa.String(length=64), nullable=True),
        sa.Column("series_uid", sa.String(length=64), nullable=True),
        sa.Column("sop_uid", sa.String(length=64), nullable=True),
        sa.Column("findings", sa.JSON(), nullable=False),
        sa.Column("region_boxes", sa.JSON(), nullable=False),
        sa.Column("image_path", sa.String(length=1024), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("case_id", name=op.f("pk_cases")),
    )
    op.create_index(op.f("ix_cases_patient_hash"), "cases", ["patient_hash"])

    op.create_table(
        "index_snapshots",
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("model_fingerprint", sa.String(length=128), nullable=False),
        sa.Column("dimension", sa.Integer(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("factory", sa.String(length=256), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("registered_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_index_snapshots")),
    )

    op.create_table(
        "index_activations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("requested_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.CheckConstraint("outcome IN ('activated', 'rolled_back', 'refused')",
                           name=op.f("ck_index_activations_outcome")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_index_activations")),
    )
    op.create_index(op.f("ix_index_activations_requested_at"), "index_activations", ["requested_at"])

    op.create_table(
        "search_audit",
        sa.Column("query_id", sa.String(length=128), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("k", sa.Integer(), nullable=False),
        sa.Column("index_version", sa.String(length=128), nullable=True),
        sa.Column("model_fingerprint", sa.String(length=128), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("result_case_ids", sa.JSON(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("query_id", name=op.f("pk_search_audit")),
    )
    op.create_index(op.f("ix_search_audit_created_at"), "search_audit", ["created_at"])


def downgrade() -> None:
    """Drop everything `upgrade` created."""
    op.drop_index(op.f("ix_search_audit_created_at"), table_name="search_audit")
    op.drop_table("search_audit")
    op.drop_index(op.f("ix_index_activations_requested_at"), table_name="index_activations")
    op.drop_table("index_activations")
    op.drop_table("index_snapshots")
    op.drop_index(op.f("ix_cases_patient_hash"), table_name="cases")
    op.drop_table("cases")
