"""Platform tables: queue catalog, resource types (seeded), users and ban list.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from bamboo.db.types import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# The conventional rows (HIMEM above 2000 MB per core) and the catch-all, which matches anything
# and therefore comes last.
_RESOURCE_TYPES = [
    {
        "name": "SCORE",
        "position": 1,
        "mincore": 1,
        "maxcore": 1,
        "minrampercore": None,
        "maxrampercore": 2000,
    },
    {
        "name": "SCORE_HIMEM",
        "position": 2,
        "mincore": 1,
        "maxcore": 1,
        "minrampercore": 2001,
        "maxrampercore": None,
    },
    {
        "name": "MCORE",
        "position": 3,
        "mincore": 2,
        "maxcore": None,
        "minrampercore": None,
        "maxrampercore": 2000,
    },
    {
        "name": "MCORE_HIMEM",
        "position": 4,
        "mincore": 2,
        "maxcore": None,
        "minrampercore": 2001,
        "maxrampercore": None,
    },
    {
        "name": "Undefined",
        "position": 99,
        "mincore": None,
        "maxcore": None,
        "minrampercore": None,
        "maxrampercore": None,
    },
]


def upgrade() -> None:
    op.create_table(
        "queues",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("cloud", sa.String(64), nullable=True),
        sa.Column("site", sa.String(128), nullable=True),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    resource_types = op.create_table(
        "resource_types",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False, unique=True),
        sa.Column("mincore", sa.Integer, nullable=True),
        sa.Column("maxcore", sa.Integer, nullable=True),
        sa.Column("minrampercore", sa.Integer, nullable=True),
        sa.Column("maxrampercore", sa.Integer, nullable=True),
    )
    op.bulk_insert(resource_types, _RESOURCE_TYPES)
    op.create_table(
        "users",
        sa.Column("name", sa.String(256), primary_key=True),
        sa.Column("dn", sa.String(1024), nullable=True),
        sa.Column("email", sa.String(256), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("users")
    op.drop_table("resource_types")
    op.drop_table("queues")
