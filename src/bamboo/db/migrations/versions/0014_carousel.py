"""Data carousel: staging requests and their tasks, tape residency in the catalog, and the tape
simulator's rules.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from bamboo.db.types import UTCDateTime

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_ROW_KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("catalog_datasets") as batch:
        batch.add_column(sa.Column("tape_rse", sa.String(64), nullable=True))
    with op.batch_alter_table("catalog_files") as batch:
        batch.add_column(sa.Column("on_disk", sa.Boolean(), nullable=False, server_default=sa.true()))
    op.create_table(
        "data_carousel_requests",
        sa.Column("request_id", _ROW_KEY, primary_key=True, autoincrement=True),
        sa.Column("dataset", sa.String(255), nullable=False),
        sa.Column("source_rse", sa.String(64), nullable=True),
        sa.Column("destination_rse", sa.String(64), nullable=True),
        sa.Column("ddm_rule_id", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("total_files", sa.Integer(), nullable=False),
        sa.Column("staged_files", sa.Integer(), nullable=False),
        sa.Column("dataset_size", sa.BigInteger(), nullable=False),
        sa.Column("staged_size", sa.BigInteger(), nullable=False),
        sa.Column("creation_time", UTCDateTime(), nullable=False),
        sa.Column("start_time", UTCDateTime(), nullable=True),
        sa.Column("end_time", UTCDateTime(), nullable=True),
        sa.Column("modification_time", UTCDateTime(), nullable=False),
        sa.Column("check_time", UTCDateTime(), nullable=True),
        sa.Column("source_tape", sa.String(64), nullable=True),
        sa.Column("parameters", sa.Text(), nullable=False),
        sa.Column("last_staged_time", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_data_carousel_requests_dataset", "data_carousel_requests", ["dataset", "status"])
    op.create_index("ix_data_carousel_requests_status", "data_carousel_requests", ["status", "request_id"])
    op.create_table(
        "data_carousel_relations",
        sa.Column("request_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("task_id", sa.BigInteger(), primary_key=True, autoincrement=False),
    )
    op.create_index("ix_data_carousel_relations_task", "data_carousel_relations", ["task_id"])
    op.create_table(
        "tape_rules",
        sa.Column("rule_id", sa.String(64), primary_key=True),
        sa.Column("dataset", sa.String(255), nullable=False),
        sa.Column("source_rse", sa.String(64), nullable=True),
        sa.Column("destination_rse", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("parameters", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tape_rules")
    op.drop_index("ix_data_carousel_relations_task", table_name="data_carousel_relations")
    op.drop_table("data_carousel_relations")
    op.drop_index("ix_data_carousel_requests_status", table_name="data_carousel_requests")
    op.drop_index("ix_data_carousel_requests_dataset", table_name="data_carousel_requests")
    op.drop_table("data_carousel_requests")
    with op.batch_alter_table("catalog_files") as batch:
        batch.drop_column("on_disk")
    with op.batch_alter_table("catalog_datasets") as batch:
        batch.drop_column("tape_rse")
