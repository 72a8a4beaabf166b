"""The statistics summary: final jobs counted per window by the statistics agent, and on SQLite an
index of the columns the statistics group non-final jobs by.

The statistics endpoints counted every final job of their window (12 hours by default, up to a
week) in jobs and jobs_archive on each call: 20,000 to 90,000 rows beside a million archived
jobs, 50-300 ms. job_stats_totals holds those counts per window and group, kept by an agent from
the jobs that enter and leave each window (logic/statistics.py); job_stats_windows says which
modification times each window's counts cover.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from bamboo.db.types import UTCDateTime

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_FINAL_STATUSES = ("cancelled", "closed", "failed", "finished")
_GROUPED = [
    "jobStatus",
    "computingSite",
    "resource_type",
    "prodSourceLabel",
    "cloud",
    "processingType",
    "gshare",
]


def upgrade() -> None:
    op.create_table(
        "job_stats_totals",
        sa.Column("window_minutes", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("group_key", sa.Text(), primary_key=True),
        sa.Column("computingSite", sa.String(128), nullable=True),
        sa.Column("cloud", sa.String(50), nullable=True),
        sa.Column("prodSourceLabel", sa.String(20), nullable=True),
        sa.Column("resource_type", sa.String(56), nullable=True),
        sa.Column("processingType", sa.String(64), nullable=True),
        sa.Column("gshare", sa.String(32), nullable=True),
        sa.Column("jobStatus", sa.String(15), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "job_stats_windows",
        sa.Column("window_minutes", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("since", UTCDateTime(), nullable=False),
        sa.Column("upto", UTCDateTime(), nullable=False),
        sa.Column("rebuilt_at", UTCDateTime(), nullable=False),
    )
    if op.get_context().dialect.name == "sqlite":
        op.create_index(
            "ix_jobs_statistics",
            "jobs",
            _GROUPED,
            sqlite_where=sa.column("jobStatus").not_in(_FINAL_STATUSES),
        )


def downgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        op.drop_index("ix_jobs_statistics", table_name="jobs")
    op.drop_table("job_stats_windows")
    op.drop_table("job_stats_totals")
