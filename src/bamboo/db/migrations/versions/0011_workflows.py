"""Workflows and the tasks their steps created.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from bamboo.db.types import UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workflows",
        sa.Column(
            "workflow_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("name", sa.String(256), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("owner_dn", sa.String(512), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("error_dialog", sa.String(500), nullable=True),
        sa.Column("creation_time", UTCDateTime(), nullable=False),
        sa.Column("modification_time", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_workflows_status", "workflows", ["status", "workflow_id"])
    op.create_table(
        "workflow_steps",
        sa.Column("workflow_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("step_name", sa.String(64), primary_key=True),
        sa.Column("jediTaskID", sa.BigInteger(), nullable=False, unique=True),
        sa.Column("task_ended", sa.Boolean(), nullable=False),
        sa.Column("creation_time", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_workflow_steps_open", "workflow_steps", ["task_ended", "workflow_id"])


def downgrade() -> None:
    op.drop_index("ix_workflow_steps_open", table_name="workflow_steps")
    op.drop_table("workflow_steps")
    op.drop_index("ix_workflows_status", table_name="workflows")
    op.drop_table("workflows")
