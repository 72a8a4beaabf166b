"""The registry of uploaded cache files (file_server).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from bamboo.db.types import UTCDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cache_files",
        sa.Column("host", sa.String(255), primary_key=True),
        sa.Column("file_name", sa.String(255), primary_key=True),
        sa.Column("user_name", sa.String(256), nullable=False),
        sa.Column("file_size", sa.BigInteger(), nullable=False),
        sa.Column("checksum", sa.String(32), nullable=True),
        sa.Column("creation_time", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_cache_files_user", "cache_files", ["user_name", "file_size", "checksum"])
    op.create_index("ix_cache_files_created", "cache_files", ["creation_time"])


def downgrade() -> None:
    op.drop_index("ix_cache_files_created", table_name="cache_files")
    op.drop_index("ix_cache_files_user", table_name="cache_files")
    op.drop_table("cache_files")
