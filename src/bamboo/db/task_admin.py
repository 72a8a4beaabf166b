"""Queries behind the task administration and task read endpoints (api-v1.md §2.1)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.schema import jobs, jobs_archive, task_datasets, task_files, tasks

_INPUT_TYPES = ("input", "pseudo_input")
_MODIFIED_SINCE_COLUMNS = (
    "jediTaskID",
    "modificationTime",
    "status",
    "processingType",
    "transUses",
    "transHome",
    "architecture",
    "reqID",
    "creationDate",
    "site",
    "cloud",
    "taskName",
)


async def update_task(conn: AsyncConnection, task_id: int, **values: Any) -> int:
    """Set columns of one task other than its status; returns the number of rows changed (0 when
    there is no such task). A status goes through ``logic.task_status``."""
    if "status" in values:
        raise ValueError("a task status is written only by logic.task_status.change")
    result = await conn.execute(sa.update(tasks).where(tasks.c.jediTaskID == task_id).values(**values))
    return result.rowcount


async def set_queued_job_priority(
    conn: AsyncConnection, task_id: int, priority: int, statuses: Sequence[str]
) -> int:
    """Set currentPriority of the task's jobs in the given statuses; returns how many changed."""
    result = await conn.execute(
        sa.update(jobs)
        .where(jobs.c.jediTaskID == task_id, jobs.c.jobStatus.in_(list(statuses)))
        .values(currentPriority=priority)
    )
    return result.rowcount


def _datasets_of_types(task_id: int, types: Sequence[str]) -> sa.ScalarSelect[Any]:
    return (
        sa.select(task_datasets.c.datasetID)
        .where(task_datasets.c.jediTaskID == task_id, task_datasets.c.type.in_(list(types)))
        .scalar_subquery()
    )


async def reset_files(
    conn: AsyncConnection, task_id: int, types: Sequence[str], *, keep_attempt_nr: bool
) -> int:
    """Make every file row of the task's datasets of these types ``ready`` again; returns the count."""
    values: dict[str, Any] = {"status": "ready", "proc_status": "ready"}
    if not keep_attempt_nr:
        values["attemptNr"] = 0
    result = await conn.execute(
        sa.update(task_files)
        .where(task_files.c.datasetID.in_(_datasets_of_types(task_id, types)))
        .values(**values)
    )
    return result.rowcount


async def reset_datasets(conn: AsyncConnection, task_id: int, types: Sequence[str], now: datetime) -> None:
    """Reset the counters of the task's datasets of these types as if no file had been used."""
    await conn.execute(
        sa.update(task_datasets)
        .where(task_datasets.c.jediTaskID == task_id, task_datasets.c.type.in_(list(types)))
        .values(
            status="ready",
            nFilesUsed=0,
            nFilesToBeUsed=task_datasets.c.nFiles,
            nFilesFinished=0,
            nFilesFailed=0,
            modificationTime=now,
        )
    )


def _ready_master_rows(task_id: int) -> sa.ColumnElement[bool]:
    masters = (
        sa.select(task_datasets.c.datasetID)
        .where(
            task_datasets.c.jediTaskID == task_id,
            task_datasets.c.masterID.is_(None),
            task_datasets.c.type.in_(_INPUT_TYPES),
        )
        .scalar_subquery()
    )
    return sa.and_(
        task_files.c.datasetID.in_(masters), task_files.c.status == "ready", task_files.c.keepTrack == 1
    )


async def exhausted_master_counts(conn: AsyncConnection, task_id: int) -> dict[int, int]:
    """Per master dataset, how many ready rows are out of attempts (counted as failed)."""
    out_of_attempts = sa.or_(
        sa.and_(task_files.c.maxAttempt.isnot(None), task_files.c.attemptNr >= task_files.c.maxAttempt),
        sa.and_(task_files.c.maxFailure.isnot(None), task_files.c.failedAttempt >= task_files.c.maxFailure),
    )
    query = (
        sa.select(task_files.c.datasetID, sa.func.count())
        .where(_ready_master_rows(task_id), out_of_attempts)
        .group_by(task_files.c.datasetID)
    )
    return {row[0]: row[1] for row in await conn.execute(query)}


async def raise_master_attempts(conn: AsyncConnection, task_id: int, increase: int) -> int:
    """Give every ready master row ``increase`` more attempts (and failures, where limited).

    maxAttempt becomes ``max(maxAttempt, attemptNr) + increase`` so a row already past its limit
    gets the full increase; rows without a limit keep none. Returns the number of rows.
    """
    max_attempt = sa.case(
        (task_files.c.maxAttempt.is_(None), None),
        (task_files.c.attemptNr > task_files.c.maxAttempt, task_files.c.attemptNr + increase),
        else_=task_files.c.maxAttempt + increase,
    )
    result = await conn.execute(
        sa.update(task_files)
        .where(_ready_master_rows(task_id))
        .values(maxAttempt=max_attempt, maxFailure=task_files.c.maxFailure + increase)
    )
    return result.rowcount


async def datasets_with_files(
    conn: AsyncConnection, task_id: int, types: Sequence[str]
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The task's datasets of these types (by datasetID), each with its file rows (by fileID)."""
    dataset_query = (
        sa.select(task_datasets.c.datasetID, task_datasets.c.datasetName)
        .where(task_datasets.c.jediTaskID == task_id, task_datasets.c.type.in_(list(types)))
        .order_by(task_datasets.c.datasetID)
    )
    found = [dict(row) for row in (await conn.execute(dataset_query)).mappings()]
    if not found:
        return []
    file_query = (
        sa.select(
            task_files.c.datasetID,
            task_files.c.fileID,
            task_files.c.lfn,
            task_files.c.scope,
            task_files.c.status,
        )
        .where(task_files.c.datasetID.in_([d["datasetID"] for d in found]))
        .order_by(task_files.c.fileID)
    )
    files: dict[int, list[dict[str, Any]]] = {d["datasetID"]: [] for d in found}
    for row in (await conn.execute(file_query)).mappings():
        files[row["datasetID"]].append(dict(row))
    return [(d, files[d["datasetID"]]) for d in found]


async def job_ids_of_task(conn: AsyncConnection, task_id: int, statuses: Sequence[str] | None) -> list[int]:
    """PandaIDs of the task's jobs, active and archived, ascending; only those in ``statuses`` when
    given."""
    found: list[int] = []
    for table in (jobs, jobs_archive):
        query = sa.select(table.c.PandaID).where(table.c.jediTaskID == task_id)
        if statuses is not None:
            query = query.where(table.c.jobStatus.in_(list(statuses)))
        found.extend((await conn.execute(query)).scalars())
    return sorted(found)


async def tasks_modified_since(
    conn: AsyncConnection,
    user_name: str,
    prod_source_label: str,
    since: datetime,
    min_task_id: int | None,
    limit: int | None,
) -> list[dict[str, Any]]:
    """Summary columns of a user's tasks of one label modified since a time, by jediTaskID."""
    query = sa.select(*(tasks.c[name] for name in _MODIFIED_SINCE_COLUMNS)).where(
        tasks.c.userName == user_name,
        tasks.c.prodSourceLabel == prod_source_label,
        tasks.c.modificationTime >= since,
    )
    if min_task_id is not None:
        query = query.where(tasks.c.jediTaskID > min_task_id)
    query = query.order_by(tasks.c.jediTaskID)
    if limit is not None:
        query = query.limit(limit)
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def jumbo_output_datasets(
    conn: AsyncConnection, statuses: Sequence[str], start: datetime, end: datetime
) -> list[dict[str, Any]]:
    """Output datasets of managed jumbo tasks in these statuses modified in [start, end)."""
    query = (
        sa.select(tasks.c.jediTaskID, tasks.c.status, task_datasets.c.datasetName)
        .join(task_datasets, task_datasets.c.jediTaskID == tasks.c.jediTaskID)
        .where(
            tasks.c.prodSourceLabel == "managed",
            tasks.c.useJumbo.isnot(None),
            tasks.c.useJumbo != "D",
            tasks.c.status.in_(list(statuses)),
            tasks.c.modificationTime >= start,
            tasks.c.modificationTime < end,
            task_datasets.c.type == "output",
        )
        .order_by(tasks.c.jediTaskID, task_datasets.c.datasetID)
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]
