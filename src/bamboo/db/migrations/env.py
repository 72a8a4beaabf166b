"""Alembic environment. Bamboo runs migrations itself (`bamboo db upgrade`, or on start of the
embedded server), handing Alembic an open connection of its async engine."""

from __future__ import annotations

from alembic import context

from bamboo.db.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise SystemExit("run migrations with `bamboo db upgrade`, not the alembic command")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
