"""The reads the event-service generator needs about a task's ranges (domain.md §7.1); ranges
are inserted by :func:`bamboo.db.events.insert_ranges`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.schema import events, task_files


async def has_ready_ranges(conn: AsyncConnection, task_id: int) -> bool:
    """Whether the task has a range a consumer may still take (ready, attempts left)."""
    query = (
        sa.select(events.c.row_ID)
        .where(events.c.jediTaskID == task_id, events.c.status == "ready", events.c.attemptNr > 0)
        .limit(1)
    )
    return (await conn.execute(query)).first() is not None


async def files_with_ready_ranges(conn: AsyncConnection, task_id: int, limit: int) -> list[dict[str, Any]]:
    """The task's input file rows that have ready ranges (attempts left), in fileID order."""
    with_ranges = (
        sa.select(events.c.fileID)
        .where(events.c.jediTaskID == task_id, events.c.status == "ready", events.c.attemptNr > 0)
        .distinct()
    )
    query = (
        sa.select(task_files)
        .where(task_files.c.jediTaskID == task_id, task_files.c.fileID.in_(with_ranges))
        .order_by(task_files.c.fileID)
        .limit(limit)
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def done_ranges(
    conn: AsyncConnection, task_id: int, file_ids: Sequence[int]
) -> dict[int, list[tuple[int, int]]]:
    """Per input file row, the (first, last) events of its ``done`` ranges (an earlier jobset's,
    kept by notDiscardEvents), in order; files without any are absent. One query (on the task's
    ``(jediTaskID, status)`` index)."""
    found: dict[int, list[tuple[int, int]]] = {}
    if not file_ids:
        return found
    query = (
        sa.select(events.c.fileID, events.c.def_min_eventID, events.c.def_max_eventID)
        .where(
            events.c.jediTaskID == task_id,
            events.c.status == "done",
            events.c.fileID.in_(sorted(set(file_ids))),
        )
        .order_by(events.c.fileID, events.c.def_min_eventID)
    )
    for file_id, low, high in await conn.execute(query):
        found.setdefault(file_id, []).append((low, high))
    return found


async def adopt_done_ranges(
    conn: AsyncConnection, task_id: int, jobset_id: int, file_ids: Sequence[int], now: datetime
) -> None:
    """The ``done`` ranges of these files join the new jobset (their holder PandaID unchanged)."""
    await conn.execute(
        sa.update(events)
        .where(
            events.c.jediTaskID == task_id,
            events.c.status == "done",
            events.c.fileID.in_(list(file_ids)),
        )
        .values(jobsetID=jobset_id, modificationTime=now)
    )
