"""Lost-file recovery and event-picking requests (file_server), worked through by agents.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from bamboo.db.types import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_ROW_KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_EVENT_PICKING_TEXTS = (
    "run_event_list",
    "data_type",
    "stream_name",
    "dataset_name",
    "ami_tag",
    "user_dataset_name",
    "locked_by",
    "parameters",
    "input_file_list",
    "n_sites",
    "user_task_name",
    "ei_api",
)


def upgrade() -> None:
    op.create_table(
        "file_recovery_requests",
        sa.Column("request_id", _ROW_KEY, primary_key=True, autoincrement=True),
        sa.Column("requester", sa.String(256), nullable=False),
        sa.Column("requester_dn", sa.String(1024), nullable=False),
        sa.Column("production", sa.Boolean(), nullable=False),
        sa.Column("jediTaskID", sa.BigInteger(), nullable=True),
        sa.Column("dataset", sa.String(255), nullable=True),
        sa.Column("files", sa.JSON(), nullable=True),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("no_child_retry", sa.Boolean(), nullable=False),
        sa.Column("resurrect_datasets", sa.Boolean(), nullable=False),
        sa.Column("force", sa.Boolean(), nullable=False),
        sa.Column("reproduce_parent", sa.Boolean(), nullable=False),
        sa.Column("reproduce_upto_nth_gen", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=True),
        sa.Column("log_name", sa.String(128), nullable=False),
        sa.Column("message", sa.String(1000), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("modified_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_file_recovery_requests_status", "file_recovery_requests", ["status", "request_id"])
    op.create_table(
        "event_picking_requests",
        sa.Column("request_id", _ROW_KEY, primary_key=True, autoincrement=True),
        sa.Column("requester", sa.String(256), nullable=False),
        sa.Column("requester_dn", sa.String(1024), nullable=False),
        sa.Column("requester_fqans", sa.JSON(), nullable=False),
        sa.Column("requester_vo", sa.String(64), nullable=True),
        sa.Column("production", sa.Boolean(), nullable=False),
        *(sa.Column(name, sa.Text(), nullable=False) for name in _EVENT_PICKING_TEXTS),
        sa.Column("include_guids", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("jediTaskID", sa.BigInteger(), nullable=True),
        sa.Column("message", sa.String(1000), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("modified_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_event_picking_requests_status", "event_picking_requests", ["status", "request_id"])


def downgrade() -> None:
    op.drop_index("ix_event_picking_requests_status", table_name="event_picking_requests")
    op.drop_table("event_picking_requests")
    op.drop_index("ix_file_recovery_requests_status", table_name="file_recovery_requests")
    op.drop_table("file_recovery_requests")
