"""Queries of the contents feeder: open master inputs and the files they already hold."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.rows import skips_locked
from bamboo.db.schema import task_datasets, task_files, tasks

#: Dataset status of a master input that may still grow (domain.md §3.1): rescanned every cycle.
OPEN = "toupdate"


async def claim_open_masters(
    conn: AsyncConnection, limit: int
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(task, master dataset) pairs whose master input is open, tasks locked, least recently scanned
    first (a scan bumps the dataset's modificationTime)."""
    query = (
        sa.select(tasks, task_datasets.c.datasetID.label("master_dataset_id"))
        .join(task_datasets, task_datasets.c.jediTaskID == tasks.c.jediTaskID)
        .where(
            task_datasets.c.status == OPEN,
            task_datasets.c.masterID.is_(None),
            task_datasets.c.type == "input",
        )
        .order_by(task_datasets.c.modificationTime, task_datasets.c.datasetID)
        .limit(limit)
    )
    if skips_locked(conn):
        query = query.with_for_update(skip_locked=True, of=tasks)
    found = []
    for row in (await conn.execute(query)).mappings():
        task = {key: value for key, value in row.items() if key != "master_dataset_id"}
        dataset = (
            (
                await conn.execute(
                    sa.select(task_datasets).where(task_datasets.c.datasetID == row["master_dataset_id"])
                )
            )
            .mappings()
            .one()
        )
        found.append((task, dict(dataset)))
    return found


async def known_files(conn: AsyncConnection, dataset_id: int) -> tuple[set[str], int]:
    """The names of the dataset's rows, and the number after the last event its rows cover."""
    query = sa.select(task_files.c.lfn, task_files.c.firstEvent, task_files.c.nEvents).where(
        task_files.c.datasetID == dataset_id
    )
    names: set[str] = set()
    next_event = 0
    for lfn, first_event, n_events in await conn.execute(query):
        names.add(lfn)
        if first_event is not None and n_events:
            next_event = max(next_event, first_event + n_events)
    return names, next_event
