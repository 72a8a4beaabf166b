"""Event ranges of event-service tasks, the Harvester tables, and jobs by jobset.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from bamboo.db.types import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_ROW_KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TABLES = (
    "harvester_dialogs",
    "harvester_metrics",
    "harvester_slots",
    "harvester_command_locks",
    "harvester_commands",
    "harvester_worker_stats",
    "harvester_instances",
    "events",
)


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("row_ID", _ROW_KEY, primary_key=True, autoincrement=True),
        sa.Column("jediTaskID", sa.BigInteger(), nullable=False),
        sa.Column("datasetID", sa.BigInteger(), nullable=False),
        sa.Column("PandaID", sa.BigInteger(), nullable=False),
        sa.Column("jobsetID", sa.BigInteger(), nullable=False),
        sa.Column("fileID", sa.BigInteger(), nullable=False),
        sa.Column("job_processID", sa.BigInteger(), nullable=False),
        sa.Column("attemptNr", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("def_min_eventID", sa.BigInteger(), nullable=False),
        sa.Column("def_max_eventID", sa.BigInteger(), nullable=False),
        sa.Column("processed_upto_eventID", sa.BigInteger(), nullable=True),
        sa.Column("objstore_ID", sa.BigInteger(), nullable=True),
        sa.Column("error_code", sa.Integer(), nullable=True),
        sa.Column("error_diag", sa.String(500), nullable=True),
        sa.Column("path_convention", sa.Integer(), nullable=True),
        sa.Column("zipRow_ID", sa.BigInteger(), nullable=True),
        sa.Column("is_jumbo", sa.Boolean(), nullable=False),
        sa.Column("core_count", sa.Integer(), nullable=True),
        sa.Column("cpu_consumption_time", sa.Float(), nullable=True),
        sa.Column("modificationTime", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_events_holder", "events", ["PandaID", "status", "fileID", "job_processID"])
    op.create_index("ix_events_jobset", "events", ["jobsetID", "status"])
    op.create_index("ix_events_task", "events", ["jediTaskID", "status"])
    op.create_table(
        "harvester_instances",
        sa.Column("harvester_ID", sa.String(50), primary_key=True),
        sa.Column("owner", sa.String(256), nullable=True),
        sa.Column("hostName", sa.String(128), nullable=True),
        sa.Column("startTime", UTCDateTime(), nullable=True),
        sa.Column("sw_version", sa.String(64), nullable=True),
        sa.Column("commit_stamp", sa.String(100), nullable=True),
        sa.Column("description", sa.String(256), nullable=True),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.Column("lastUpdate", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "harvester_worker_stats",
        sa.Column("harvester_ID", sa.String(50), primary_key=True),
        sa.Column("computingSite", sa.String(128), primary_key=True),
        sa.Column("jobType", sa.String(80), primary_key=True),
        sa.Column("resourceType", sa.String(56), primary_key=True),
        sa.Column("status", sa.String(80), primary_key=True),
        sa.Column("n_workers", sa.Integer(), nullable=False),
        sa.Column("lastUpdate", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_harvester_worker_stats_site", "harvester_worker_stats", ["computingSite"])
    op.create_table(
        "harvester_commands",
        sa.Column("command_id", _ROW_KEY, primary_key=True, autoincrement=True),
        sa.Column("harvester_ID", sa.String(50), nullable=False),
        sa.Column("command", sa.String(256), nullable=False),
        sa.Column("params", sa.Text(), nullable=True),
        sa.Column("ack_requested", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("creation_date", UTCDateTime(), nullable=False),
        sa.Column("status_date", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_harvester_commands_name", "harvester_commands", ["harvester_ID", "command"])
    op.create_index(
        "ix_harvester_commands_pick", "harvester_commands", ["harvester_ID", "status", "creation_date"]
    )
    op.create_table(
        "harvester_command_locks",
        sa.Column("harvester_ID", sa.String(50), primary_key=True),
        sa.Column("command", sa.String(256), primary_key=True),
        sa.Column("computingSite", sa.String(128), primary_key=True),
        sa.Column("resourceType", sa.String(56), primary_key=True),
        sa.Column("lockedBy", sa.String(64), nullable=True),
        sa.Column("lockedTime", UTCDateTime(), nullable=True),
        sa.Column("lastUpdate", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "harvester_slots",
        sa.Column("pandaQueueName", sa.String(128), primary_key=True),
        sa.Column("gshare", sa.String(32), primary_key=True),
        sa.Column("resourceType", sa.String(56), primary_key=True),
        sa.Column("numSlots", sa.Integer(), nullable=False),
        sa.Column("modificationTime", UTCDateTime(), nullable=False),
        sa.Column("expirationTime", UTCDateTime(), nullable=True),
    )
    op.create_table(
        "harvester_metrics",
        sa.Column("harvester_ID", sa.String(50), primary_key=True),
        sa.Column("harvester_host", sa.String(128), primary_key=True),
        sa.Column("creation_time", UTCDateTime(), primary_key=True),
        sa.Column("metrics", sa.Text(), nullable=False),
    )
    op.create_table(
        "harvester_dialogs",
        sa.Column("harvester_id", sa.String(50), primary_key=True),
        sa.Column("diagID", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("moduleName", sa.String(100), nullable=True),
        sa.Column("identifier", sa.String(100), nullable=True),
        sa.Column("creationTime", UTCDateTime(), nullable=True),
        sa.Column("messageLevel", sa.String(10), nullable=True),
        sa.Column("diagMessage", sa.String(500), nullable=True),
    )
    op.create_index("ix_jobs_jobset", "jobs", ["jobsetID"])


def downgrade() -> None:
    op.drop_index("ix_jobs_jobset", table_name="jobs")
    for table in _TABLES:
        op.drop_table(table)
