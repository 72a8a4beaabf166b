"""Credentials: users' allow-list letters, sealed user secrets, cached proxies and tokens.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from bamboo.db.types import UTCDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("gridpref", sa.String(16), nullable=True))
    op.create_table(
        "user_secrets",
        sa.Column("owner", sa.String(256), primary_key=True),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_user_secrets_key", "user_secrets", ["key_id"])
    op.create_table(
        "cached_credentials",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("subject", sa.String(1024), primary_key=True),
        sa.Column("role", sa.String(256), primary_key=True),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_cached_credentials_key", "cached_credentials", ["key_id"])


def downgrade() -> None:
    op.drop_index("ix_cached_credentials_key", table_name="cached_credentials")
    op.drop_table("cached_credentials")
    op.drop_index("ix_user_secrets_key", table_name="user_secrets")
    op.drop_table("user_secrets")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("gridpref")
