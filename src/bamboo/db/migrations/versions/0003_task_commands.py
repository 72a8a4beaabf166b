"""The task command queue.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from bamboo.db.types import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "task_commands",
        sa.Column("jediTaskID", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("command", sa.String(32), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("requester", sa.String(256), nullable=True),
        sa.Column("creationTime", UTCDateTime(), nullable=False),
        sa.Column("modificationTime", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_task_commands_status", "task_commands", ["status", "creationTime"])


def downgrade() -> None:
    op.drop_index("ix_task_commands_status", table_name="task_commands")
    op.drop_table("task_commands")
