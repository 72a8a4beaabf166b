"""Queries of scout evaluation: tasks in scouting and their scout jobs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.rows import skips_locked
from bamboo.db.schema import jobs, jobs_archive, tasks

_SCOUT_COLUMNS = (
    "PandaID",
    "jediTaskID",
    "jobStatus",
    "coreCount",
    "maxPSS",
    "startTime",
    "endTime",
    "cpuConsumptionTime",
    "nEvents",
    "outputFileBytes",
    "specialHandling",
)


async def claim_scouting(conn: AsyncConnection, limit: int) -> list[dict[str, Any]]:
    """Tasks in ``scouting``, locked for this transaction, oldest first."""
    query = sa.select(tasks).where(tasks.c.status == "scouting").order_by(tasks.c.jediTaskID).limit(limit)
    if skips_locked(conn):
        query = query.with_for_update(skip_locked=True)
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def scout_jobs(
    conn: AsyncConnection, task_ids: Sequence[int], mark: str
) -> dict[int, list[dict[str, Any]]]:
    """The jobs flagged ``mark`` in ``specialHandling`` of each task (tasks without any are absent),
    active and archived: a task may wait in scouting past the archive delay of its first scouts."""
    if not task_ids:
        return {}
    found: dict[int, list[dict[str, Any]]] = {}
    for table in (jobs, jobs_archive):
        query = sa.select(*(table.c[name] for name in _SCOUT_COLUMNS)).where(
            table.c.jediTaskID.in_(list(task_ids)), table.c.specialHandling.like(f"%{mark}%")
        )
        for row in (await conn.execute(query)).mappings():
            if mark in (row["specialHandling"] or "").split(","):
                found.setdefault(row["jediTaskID"], []).append(dict(row))
    return found
