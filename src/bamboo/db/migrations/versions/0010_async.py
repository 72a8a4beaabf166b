"""The machines table (live processes and their heartbeats) and the async_process requests.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from bamboo.db.types import UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "machines",
        sa.Column("machine_name", sa.String(320), primary_key=True),
        sa.Column("service_name", sa.String(64), nullable=False),
        sa.Column("host_name", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_machines_service", "machines", ["service_name", "heartbeat_at"])
    op.create_table(
        "async_requests",
        sa.Column("request_id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("requester", sa.String(256), nullable=False),
        sa.Column("access", sa.String(16), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("service_name", sa.String(64), nullable=True),
        sa.Column("machine_name", sa.String(320), nullable=True),
        sa.Column("expected_machines", sa.JSON(), nullable=False),
        sa.Column("claimed_by", sa.String(320), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_async_requests_claim", "async_requests", ["kind", "service_name", "claimed_by"])
    op.create_index("ix_async_requests_created", "async_requests", ["created_at"])
    op.create_table(
        "async_request_results",
        sa.Column("request_id", sa.String(36), primary_key=True),
        sa.Column("machine_name", sa.String(320), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("error_msg", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("stderr", sa.Text(), nullable=True),
        sa.Column("return_code", sa.Integer(), nullable=True),
    )
    op.create_index("ix_async_request_results_machine", "async_request_results", ["machine_name", "status"])
    op.create_index("ix_async_request_results_status", "async_request_results", ["status"])


def downgrade() -> None:
    op.drop_table("async_request_results")
    op.drop_table("async_requests")
    op.drop_table("machines")
