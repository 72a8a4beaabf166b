"""Tables (SQLAlchemy Core). Every change here comes with an Alembic migration."""

from __future__ import annotations

import sqlalchemy as sa

from bamboo.db.types import UTCDateTime

metadata = sa.MetaData()

# PanDA queues (CRIC "schedconfig" entries). The attributes brokerage filters on are columns; the
# whole site spec, as loaded, is kept in `spec` so metaconfig/get_site_specs can return it intact.
queues = sa.Table(
    "queues",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("cloud", sa.String(64), nullable=True),
    sa.Column("site", sa.String(128), nullable=True),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# Resource types in table order: matching takes the first row whose bounds contain a job.
resource_types = sa.Table(
    "resource_types",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False, unique=True),
    sa.Column("mincore", sa.Integer, nullable=True),
    sa.Column("maxcore", sa.Integer, nullable=True),
    sa.Column("minrampercore", sa.Integer, nullable=True),
    sa.Column("maxrampercore", sa.Integer, nullable=True),
)

# Users known to the server by compact user name; status "disabled" means banned.
users = sa.Table(
    "users",
    metadata,
    sa.Column("name", sa.String(256), primary_key=True),
    sa.Column("dn", sa.String(1024), nullable=True),
    sa.Column("email", sa.String(256), nullable=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)
