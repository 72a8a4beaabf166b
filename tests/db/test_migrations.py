"""Migrations: one head, upgrade from empty on both backends, the schema they build matches
schema.py, and a full downgrade/upgrade round trip works."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from bamboo.db import migrate
from bamboo.db.engine import Database
from bamboo.db.schema import metadata


def test_single_head() -> None:
    assert len(migrate.head_revisions()) == 1


async def _diff(db: Database) -> list[object]:
    async with db.transaction(write=False) as conn:
        return await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), metadata))


async def test_upgrade_from_empty_matches_schema(database_url: str) -> None:
    db = Database(database_url)
    try:
        assert await migrate.is_up_to_date(db)
        assert await _diff(db) == []
    finally:
        await db.dispose()


async def test_downgrade_and_upgrade_round_trip(database_url: str) -> None:
    db = Database(database_url)
    try:
        await migrate.downgrade(db, "base")
        async with db.transaction(write=False) as conn:
            tables = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
        assert set(tables) <= {"alembic_version"}
        await migrate.upgrade(db)
        assert await migrate.is_up_to_date(db)
        async with db.transaction(write=False) as conn:
            names = (
                await conn.execute(sa.text("SELECT name FROM resource_types ORDER BY position"))
            ).scalars()
            assert list(names) == ["SCORE", "SCORE_HIMEM", "MCORE", "MCORE_HIMEM", "Undefined"]
    finally:
        await db.dispose()
