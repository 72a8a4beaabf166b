"""20 concurrent acquirers draining 2,000 jobs: every job is handed out exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter

import sqlalchemy as sa

from bamboo.db.engine import Database
from bamboo.db.schema import jobs
from bamboo.logic.dispatch import AcquireRequest, QueueStatusCache, acquire

N_JOBS = 2000
N_ACQUIRERS = 20


async def test_every_job_is_dispatched_exactly_once(db: Database, clock) -> None:
    now = clock.now()
    rows = [
        {
            "PandaID": 500_000 + i,
            "jobStatus": "activated",
            "computingSite": "CONC_PQ",
            "prodSourceLabel": "user",
            "currentPriority": i % 7,
            "attemptNr": 1,
            "jobName": f"job{i}",
            "modificationTime": now,
        }
        for i in range(N_JOBS)
    ]
    async with db.transaction() as conn:
        await conn.execute(sa.insert(jobs), rows)

    received: list[int] = []
    statuses = QueueStatusCache()

    async def acquirer(batch: int) -> None:
        while True:
            async with db.transaction() as conn:
                request = AcquireRequest(site_name="CONC_PQ", prod_source_label="user", n_jobs=batch)
                got = await acquire(conn, clock, request, statuses)
            if not got:
                return
            received.extend(job["PandaID"] for job in got)

    await asyncio.gather(*(acquirer(1 + i % 10) for i in range(N_ACQUIRERS)))
    duplicates = [panda_id for panda_id, count in Counter(received).items() if count > 1]
    assert duplicates == []
    assert sorted(received) == [row["PandaID"] for row in rows]
    async with db.transaction(write=False) as conn:
        left = (
            await conn.execute(sa.select(sa.func.count()).where(jobs.c.jobStatus == "activated"))
        ).scalar_one()
    assert left == 0
