"""The global share tree, and the index dispatch by share reads.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "global_shares",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("parent", sa.String(32), nullable=True),
        sa.Column("position", sa.Integer(), nullable=False, unique=True),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("prodsourcelabel", sa.String(256), nullable=True),
        sa.Column("workinggroup", sa.String(256), nullable=True),
        sa.Column("campaign", sa.String(256), nullable=True),
        sa.Column("processingtype", sa.String(256), nullable=True),
        sa.Column("transpath", sa.String(256), nullable=True),
        sa.Column("rtype", sa.String(256), nullable=True),
        sa.Column("vo", sa.String(256), nullable=True),
        sa.Column("queue_id", sa.Integer(), nullable=True),
        sa.Column("throttled", sa.Boolean(), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
    )
    op.create_index(
        "ix_jobs_share_dispatch",
        "jobs",
        ["jobStatus", "computingSite", "gshare", sa.text('"currentPriority" DESC'), "PandaID"],
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_share_dispatch", table_name="jobs")
    op.drop_table("global_shares")
