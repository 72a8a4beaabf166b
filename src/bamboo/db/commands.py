"""Queries of the task command queue and the row changes commands make to tasks, jobs and files."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.rows import skips_locked
from bamboo.db.schema import jobs, task_commands, task_datasets, task_files, tasks

QUEUED = "queued"
# A command whose effect takes more than one step (a soft finish waits for running jobs).
IN_PROGRESS = "inprogress"
DONE = "done"
FAILED = "failed"


async def lock_task(conn: AsyncConnection, task_id: int) -> dict[str, Any] | None:
    """The task row, locked until the transaction ends (commands on one task are serialised)."""
    query = sa.select(tasks).where(tasks.c.jediTaskID == task_id)
    if skips_locked(conn):
        query = query.with_for_update()
    row = (await conn.execute(query)).mappings().first()
    return dict(row) if row else None


async def replace(
    conn: AsyncConnection, task_id: int, command: str, comment: str, requester: str, now: datetime
) -> None:
    """Queue ``command`` for the task, dropping any command still queued for it (one per task)."""
    await conn.execute(sa.delete(task_commands).where(task_commands.c.jediTaskID == task_id))
    await conn.execute(
        sa.insert(task_commands).values(
            jediTaskID=task_id,
            command=command,
            comment=comment,
            status=QUEUED,
            requester=requester,
            creationTime=now,
            modificationTime=now,
        )
    )


async def get(conn: AsyncConnection, task_id: int) -> dict[str, Any] | None:
    query = sa.select(task_commands).where(task_commands.c.jediTaskID == task_id)
    row = (await conn.execute(query)).mappings().first()
    return dict(row) if row else None


async def claim(conn: AsyncConnection, statuses: Sequence[str], limit: int) -> list[dict[str, Any]]:
    """Commands in the given statuses, oldest first, locked; rows others hold are skipped."""
    query = (
        sa.select(task_commands)
        .where(task_commands.c.status.in_(list(statuses)))
        .order_by(task_commands.c.creationTime, task_commands.c.jediTaskID)
        .limit(limit)
    )
    if skips_locked(conn):
        query = query.with_for_update(skip_locked=True)
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def mark(conn: AsyncConnection, task_id: int, status: str, now: datetime) -> None:
    await conn.execute(
        sa.update(task_commands)
        .where(task_commands.c.jediTaskID == task_id)
        .values(status=status, modificationTime=now)
    )


async def unfinished_jobs(
    conn: AsyncConnection, task_id: int, statuses: Sequence[str] | None = None, final: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The task's jobs not in a final status (or only those in ``statuses``), locked."""
    query = sa.select(
        jobs.c.PandaID,
        jobs.c.jobStatus,
        jobs.c.commandToPilot,
        jobs.c.prodSourceLabel,
        jobs.c.jediTaskID,
        jobs.c.prodUserName,
        jobs.c.processingType,
        jobs.c.eventService,
    ).where(jobs.c.jediTaskID == task_id)
    if statuses is not None:
        query = query.where(jobs.c.jobStatus.in_(list(statuses)))
    else:
        query = query.where(jobs.c.jobStatus.not_in(list(final)))
    query = query.order_by(jobs.c.PandaID)
    if skips_locked(conn):
        query = query.with_for_update()
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def jobs_by_id(conn: AsyncConnection, panda_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Kill-relevant columns of the given jobs, locked."""
    if not panda_ids:
        return []
    query = sa.select(
        jobs.c.PandaID,
        jobs.c.jobStatus,
        jobs.c.commandToPilot,
        jobs.c.prodSourceLabel,
        jobs.c.jediTaskID,
        jobs.c.prodUserName,
    ).where(jobs.c.PandaID.in_(list(panda_ids)))
    if skips_locked(conn):
        query = query.with_for_update()
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def set_job_status(
    conn: AsyncConnection, task_id: int, from_status: str, to_status: str, now: datetime
) -> int:
    """Move the task's jobs in one status to another (pause/resume: activated <-> throttled)."""
    result = await conn.execute(
        sa.update(jobs)
        .where(jobs.c.jediTaskID == task_id, jobs.c.jobStatus == from_status)
        .values(jobStatus=to_status, modificationTime=now, stateChangeTime=now)
    )
    return result.rowcount or 0


async def kill_jobs(conn: AsyncConnection, panda_ids: Sequence[int], values: dict[str, Any]) -> None:
    if panda_ids:
        await conn.execute(sa.update(jobs).where(jobs.c.PandaID.in_(list(panda_ids))).values(**values))


async def rows_held_by(conn: AsyncConnection, panda_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Input rows the jobs still hold and the output rows they were to produce."""
    if not panda_ids:
        return []
    ids = list(panda_ids)
    query = sa.select(
        task_files.c.fileID,
        task_files.c.datasetID,
        task_files.c.PandaID,
        task_files.c.outPandaID,
        task_files.c.status,
    ).where(
        sa.or_(
            sa.and_(task_files.c.PandaID.in_(ids), task_files.c.status == "running"),
            sa.and_(task_files.c.outPandaID.in_(ids), task_files.c.status == "running"),
        )
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


def _master_dataset_ids(task_id: int) -> sa.ScalarSelect[Any]:
    return (
        sa.select(task_datasets.c.datasetID)
        .where(
            task_datasets.c.jediTaskID == task_id,
            task_datasets.c.masterID.is_(None),
            task_datasets.c.type.in_(["input", "pseudo_input"]),
        )
        .scalar_subquery()
    )


def _out_of_attempts() -> sa.ColumnElement[bool]:
    return sa.or_(
        sa.and_(task_files.c.maxAttempt.isnot(None), task_files.c.attemptNr >= task_files.c.maxAttempt),
        sa.and_(task_files.c.maxFailure.isnot(None), task_files.c.failedAttempt >= task_files.c.maxFailure),
    )


async def exhausted_master_rows(conn: AsyncConnection, task_id: int) -> list[dict[str, Any]]:
    """Master input rows that are ready but out of attempts (counted as failed)."""
    query = sa.select(task_files).where(
        task_files.c.datasetID.in_(_master_dataset_ids(task_id)),
        task_files.c.status == "ready",
        task_files.c.keepTrack == 1,
        _out_of_attempts(),
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def usable_master_rows(conn: AsyncConnection, task_id: int) -> list[dict[str, Any]]:
    """Master input rows that a new job could still take."""
    query = sa.select(task_files).where(
        task_files.c.datasetID.in_(_master_dataset_ids(task_id)),
        task_files.c.status == "ready",
        task_files.c.keepTrack == 1,
        sa.not_(_out_of_attempts()),
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def child_tasks(conn: AsyncConnection, task_id: int) -> list[dict[str, Any]]:
    query = sa.select(tasks.c.jediTaskID, tasks.c.status).where(
        tasks.c.parent_tid == task_id, tasks.c.jediTaskID != task_id
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]
