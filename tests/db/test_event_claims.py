"""50 consumers of one jobset taking ranges at once, each on its own connection: every range is
handed out exactly once, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter

import sqlalchemy as sa

from bamboo.db.engine import Database
from bamboo.db.schema import events
from bamboo.logic import events as events_logic
from tests.api.test_event_endpoints import JOBSET, TASK, make_jobset

N_CONSUMERS = 50
N_FILES = 20
EVENTS_PER_FILE = 100  # 50 ranges of 2 events per file: 1,000 ranges


async def test_concurrent_consumers_never_get_the_same_range(db: Database, clock) -> None:
    consumers = {JOBSET + 1 + index: "running" for index in range(N_CONSUMERS)}
    async with db.transaction() as conn:
        await make_jobset(
            conn, clock.now(), consumers=consumers, n_files=N_FILES, events_per_file=EVENTS_PER_FILE
        )
    received: list[tuple[int, str]] = []

    async def consumer(panda_id: int, batch: int) -> None:
        while True:
            async with db.transaction() as conn:
                got = await events_logic.acquire(
                    conn,
                    clock,
                    job_id=panda_id,
                    jobset_id=JOBSET,
                    task_id=TASK,
                    n_ranges=batch,
                    scattered=panda_id % 2 == 0,
                    segment_id=None,
                )
            if not got:
                return
            received.extend((panda_id, item["eventRangeID"]) for item in got)

    await asyncio.gather(*(consumer(panda_id, 1 + index % 7) for index, panda_id in enumerate(consumers)))
    # A range is named by file and first event; the holder in its id is the consumer that got it.
    keys = [tuple(identifier.split("-")[2:4]) for _, identifier in received]
    assert [key for key, count in Counter(keys).items() if count > 1] == []
    assert len(keys) == N_FILES * EVENTS_PER_FILE // 2
    assert all(identifier.split("-")[1] == str(panda_id) for panda_id, identifier in received)
    async with db.transaction(write=False) as conn:
        rows = (await conn.execute(sa.select(events.c.PandaID, events.c.status))).all()
    assert {status for _, status in rows} == {"sent"}
    holders = Counter(panda_id for panda_id, _ in rows)
    assert holders == Counter(panda_id for panda_id, _ in received)
