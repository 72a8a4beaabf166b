"""Queries on Harvester workers and the worker -> job relation (domain.md §8.1)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.schema import harvester_workers, worker_jobs


async def relate_jobs(
    conn: AsyncConnection, harvester_id: str, worker_id: int, panda_ids: Sequence[int], now: datetime
) -> None:
    """Record that the worker runs these jobs (just dispatched: a PandaID is handed out once, so
    every pair is new)."""
    if not panda_ids:
        return
    await conn.execute(
        sa.insert(worker_jobs),
        [
            {"harvesterID": harvester_id, "workerID": worker_id, "PandaID": panda_id, "lastUpdate": now}
            for panda_id in panda_ids
        ],
    )


async def jobs_of_worker(conn: AsyncConnection, harvester_id: str, worker_id: int) -> list[int]:
    """PandaIDs related to a worker, in PandaID order."""
    query = (
        sa.select(worker_jobs.c.PandaID)
        .where(worker_jobs.c.harvesterID == harvester_id, worker_jobs.c.workerID == worker_id)
        .order_by(worker_jobs.c.PandaID)
    )
    return list((await conn.execute(query)).scalars())


async def set_pilot_status(
    conn: AsyncConnection, harvester_id: str, worker_id: int, values: dict[str, Any]
) -> bool:
    """Update the pilot columns of a worker; False when the worker is unknown."""
    result = await conn.execute(
        sa.update(harvester_workers)
        .where(harvester_workers.c.harvesterID == harvester_id, harvester_workers.c.workerID == worker_id)
        .values(**values)
    )
    return bool(result.rowcount)


async def get(conn: AsyncConnection, harvester_id: str, worker_id: int) -> dict[str, Any] | None:
    """A worker's row, or None."""
    query = sa.select(harvester_workers).where(
        harvester_workers.c.harvesterID == harvester_id, harvester_workers.c.workerID == worker_id
    )
    row = (await conn.execute(query)).mappings().first()
    return dict(row) if row else None
