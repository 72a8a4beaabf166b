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


# Alembic cannot compare indexes with a sort direction (it reflects them as plain columns on
# SQLite); those are checked by name and columns below instead.
DIRECTIONAL_INDEXES = {"ix_jobs_dispatch"}


# Created on SQLite only (Index.ddl_if), which Alembic's comparison does not know: compared there.
SQLITE_ONLY_INDEXES = {"ix_jobs_statistics"}


async def _diff(db: Database) -> list[object]:
    skipped = DIRECTIONAL_INDEXES if db.is_sqlite else DIRECTIONAL_INDEXES | SQLITE_ONLY_INDEXES

    def include(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
        return not (type_ == "index" and name in skipped)

    def compare(connection: sa.Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"include_object": include})
        return compare_metadata(context, metadata)

    async with db.transaction(write=False) as conn:
        return await conn.run_sync(compare)


async def test_directional_indexes_exist(database_url: str) -> None:
    db = Database(database_url)
    try:
        async with db.transaction(write=False) as conn:
            indexes = await conn.run_sync(lambda c: sa.inspect(c).get_indexes("jobs"))
            if db.is_sqlite:
                # SQLite's reflection has no sort order; its own pragma does.
                info = (await conn.exec_driver_sql("PRAGMA index_xinfo('ix_jobs_dispatch')")).mappings().all()
                descending = {row["name"] for row in info if row["desc"]}
    finally:
        await db.dispose()
    dispatch = next(index for index in indexes if index["name"] == "ix_jobs_dispatch")
    assert dispatch["column_names"] == ["jobStatus", "computingSite", "currentPriority", "PandaID"]
    if not db.is_sqlite:
        descending = {name for name, order in dispatch.get("column_sorting", {}).items() if "desc" in order}
    assert descending == {"currentPriority"}


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
