"""The retry rules change a task only when they can lock it at once: the finaliser must never wait
for a task row another agent holds (the generator locks a task before its datasets, the finaliser
the other way round, so waiting could close a deadlock cycle)."""

from __future__ import annotations

import asyncio
import json

import sqlalchemy as sa

from bamboo.db import retry as retry_db
from bamboo.db.engine import Database
from bamboo.db.schema import tasks
from bamboo.logic import retry_rules

TASK_ID = 10_000_001
MEMORY_RULES = json.dumps(
    {"rules": [{"source": "pilotErrorCode", "code": 1212, "action": "increase_memory"}]}
)
JOB = {
    "PandaID": 1,
    "jediTaskID": TASK_ID,
    "pilotErrorCode": 1212,
    "minRamCount": 2000,
    "coreCount": 1,
    "processingType": "panda-client",
}
ROWS = [{"fileID": 1, "attemptNr": 0, "maxAttempt": 3}]


async def ram_count(db: Database) -> int:
    async with db.transaction(write=False) as conn:
        query = sa.select(tasks.c.ramCount).where(tasks.c.jediTaskID == TASK_ID)
        return (await conn.execute(query)).scalar_one()


async def test_a_busy_task_is_skipped_and_a_free_one_changed(db: Database) -> None:
    async with db.transaction() as conn:
        await conn.execute(
            sa.insert(tasks).values(jediTaskID=TASK_ID, task_params="{}", ramCount=2000, coreCount=1)
        )
    retry_rules.install(retry_rules.parse_table(MEMORY_RULES))
    try:
        if not db.is_sqlite:
            # SQLite has one writer at a time: there is no second transaction to hold the row.
            async with db.transaction() as holder:
                await holder.execute(
                    sa.select(tasks.c.jediTaskID).where(tasks.c.jediTaskID == TASK_ID).with_for_update()
                )
                async with db.transaction() as conn:
                    assert await asyncio.wait_for(retry_db.lock_task_if_free(conn, TASK_ID), 5) is None
                    await asyncio.wait_for(retry_rules.after_failure(conn, JOB, [dict(r) for r in ROWS]), 5)
            assert await ram_count(db) == 2000
        async with db.transaction() as conn:
            assert (await retry_db.lock_task_if_free(conn, TASK_ID))["ramCount"] == 2000
            await retry_rules.after_failure(conn, JOB, [dict(r) for r in ROWS])
        assert await ram_count(db) == 3000
        async with db.transaction() as conn:
            assert await retry_db.lock_task_if_free(conn, TASK_ID + 1) is None
    finally:
        retry_rules.install(None)
