"""An index on the output rows' producing job (task_files.outPandaID).

The finaliser reads, for every batch of jobs it ends, the file rows they produce; without an index
that read scanned every file row of every task once per batch.

Revision ID: 0006_finaliser_index
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0006_finaliser_index"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_task_files_out_panda", "task_files", ["outPandaID"])


def downgrade() -> None:
    op.drop_index("ix_task_files_out_panda", table_name="task_files")
