"""Two agent processes creating the same catalog dataset at once: no duplicate-key error.

Finalisers in several processes register the outputs of one task's jobs side by side, so two
transactions can both find an output dataset missing and both insert it. Each test transaction
here has its own engine, as two processes would.
"""

from __future__ import annotations

import asyncio
import time

import sqlalchemy as sa

from bamboo.db import catalog as catalog_db
from bamboo.db.engine import Database
from bamboo.db.schema import catalog_datasets

DATASET = "user.fault.race.log/"
SCOPE = "user.fault"
BLOCKED_SECONDS = 60.0


async def _blocked_inserts(db: Database) -> int:
    """How many sessions wait for a lock on an insert into the dataset catalog (PostgreSQL)."""
    async with db.transaction(write=False) as conn:
        query = sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query ILIKE 'INSERT INTO catalog_datasets%'"
        )
        return (await conn.execute(query)).scalar_one()


async def _wait_until_blocked(db: Database) -> None:
    deadline = time.monotonic() + BLOCKED_SECONDS
    while await _blocked_inserts(db) == 0:
        assert time.monotonic() < deadline, "the second insert never waited for the first"
        await asyncio.sleep(0.05)


async def test_two_transactions_create_one_dataset(db: Database, database_url: str, clock) -> None:
    other_process = Database(database_url)

    async def second_agent() -> None:
        async with other_process.transaction() as conn:
            await catalog_db.ensure_dataset(conn, DATASET, SCOPE, clock.now())

    try:
        async with db.transaction() as first:
            await catalog_db.ensure_dataset(first, DATASET, SCOPE, clock.now())
            second = asyncio.create_task(second_agent())
            if not db.is_sqlite:
                # The second transaction does not see the uncommitted row and inserts too: it
                # must wait for this one, then skip the row rather than fail on the primary key.
                await _wait_until_blocked(db)
        # On SQLite the second writer waits for the file's write lock and then finds the row.
        await second
    finally:
        await other_process.dispose()
    async with db.transaction(write=False) as conn:
        rows = (await conn.execute(sa.select(catalog_datasets.c.name, catalog_datasets.c.scope))).all()
    assert [tuple(row) for row in rows] == [(DATASET, SCOPE)]


async def test_an_existing_dataset_is_kept(db: Database, clock) -> None:
    created = clock.now()
    async with db.transaction() as conn:
        await catalog_db.ensure_dataset(conn, DATASET, SCOPE, created)
    async with db.transaction() as conn:
        await catalog_db.ensure_dataset(conn, DATASET, "other.scope", created.replace(year=created.year + 1))
    async with db.transaction(write=False) as conn:
        rows = (await conn.execute(sa.select(catalog_datasets))).mappings().all()
    assert [(row["name"], row["scope"], row["created_at"]) for row in rows] == [(DATASET, SCOPE, created)]
