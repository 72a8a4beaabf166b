"""Indexes for the finaliser: the output rows' producing job, a catalog dataset's file positions.

The finaliser reads, for every batch of jobs it ends, the file rows they produce (by
task_files.outPandaID) and registers their outputs after the last position of each dataset;
without these indexes both read scanned every file row of every task, or every file of the
dataset, once per batch.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_task_files_out_panda", "task_files", ["outPandaID"])
    op.create_index("ix_catalog_files_position", "catalog_files", ["dataset", "position"])


def downgrade() -> None:
    op.drop_index("ix_catalog_files_position", table_name="catalog_files")
    op.drop_index("ix_task_files_out_panda", table_name="task_files")
