"""The mean core count pilots report (update_job ``mean_core_count``) on active and archived jobs.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_TABLES = ("jobs", "jobs_archive")


def upgrade() -> None:
    for table in _TABLES:
        op.add_column(table, sa.Column("meanCoreCount", sa.Integer(), nullable=True))


def downgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("meanCoreCount")
