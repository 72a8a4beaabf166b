"""Queries of the task watchdog: tasks waiting too long, and the attempts of their remaining inputs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.rows import skips_locked
from bamboo.db.schema import task_datasets, task_files, tasks


async def claim_stale(
    conn: AsyncConnection,
    status: str,
    column: sa.Column[Any],
    before: datetime,
    limit: int,
) -> list[dict[str, Any]]:
    """Tasks in ``status`` whose ``column`` (a time) is older than ``before``, locked, oldest first."""
    query = (
        sa.select(tasks)
        .where(tasks.c.status == status, column.isnot(None), column < before)
        .order_by(column, tasks.c.jediTaskID)
        .limit(limit)
    )
    if skips_locked(conn):
        query = query.with_for_update(skip_locked=True)
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def claim_in_status(
    conn: AsyncConnection, status: str, labels: Sequence[str] | None, after_id: int, limit: int
) -> list[dict[str, Any]]:
    """Tasks in ``status`` (with a prodSourceLabel in ``labels`` if given) and an id above
    ``after_id``, locked, in id order: a caller walks all of them a batch at a time."""
    condition = sa.and_(tasks.c.status == status, tasks.c.jediTaskID > after_id)
    if labels is not None:
        condition = sa.and_(condition, tasks.c.prodSourceLabel.in_(list(labels)))
    query = sa.select(tasks).where(condition).order_by(tasks.c.jediTaskID).limit(limit)
    if skips_locked(conn):
        query = query.with_for_update(skip_locked=True)
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def remaining_attempts(conn: AsyncConnection, task_ids: Sequence[int]) -> dict[int, tuple[int, float]]:
    """Per task: how many master input rows are still to be processed (ready with attempts left, or
    running), and their average ``failedAttempt``. Tasks with none are absent."""
    if not task_ids:
        return {}
    usable = sa.or_(
        task_files.c.status == "running",
        sa.and_(
            task_files.c.status == "ready",
            sa.or_(task_files.c.maxAttempt.is_(None), task_files.c.attemptNr < task_files.c.maxAttempt),
            sa.or_(task_files.c.maxFailure.is_(None), task_files.c.failedAttempt < task_files.c.maxFailure),
        ),
    )
    query = (
        sa.select(
            task_files.c.jediTaskID,
            sa.func.count(),
            sa.func.avg(sa.func.coalesce(task_files.c.failedAttempt, 0)),
        )
        .join(task_datasets, task_datasets.c.datasetID == task_files.c.datasetID)
        .where(
            task_files.c.jediTaskID.in_(list(task_ids)),
            task_datasets.c.masterID.is_(None),
            task_datasets.c.type.in_(["input", "pseudo_input"]),
            task_files.c.keepTrack == 1,
            usable,
        )
        .group_by(task_files.c.jediTaskID)
    )
    return {task_id: (count, float(average)) for task_id, count, average in await conn.execute(query)}


async def claim_with_goal(conn: AsyncConnection, statuses: Sequence[str], limit: int) -> list[dict[str, Any]]:
    """Tasks in ``statuses`` with a goal below everything, locked, each with its master input's
    counters (``nFiles``, ``nFilesFinished``, ``nEvents``, ``nEventsUsed``)."""
    query = (
        sa.select(
            tasks,
            task_datasets.c.nFiles,
            task_datasets.c.nFilesFinished,
            task_datasets.c.nEvents,
            task_datasets.c.nEventsUsed,
        )
        .join(task_datasets, task_datasets.c.jediTaskID == tasks.c.jediTaskID)
        .where(
            tasks.c.status.in_(list(statuses)),
            tasks.c.goal.isnot(None),
            tasks.c.goal < 1000,
            task_datasets.c.masterID.is_(None),
            task_datasets.c.type.in_(["input", "pseudo_input"]),
        )
        .order_by(tasks.c.jediTaskID)
        .limit(limit)
    )
    if skips_locked(conn):
        query = query.with_for_update(skip_locked=True, of=tasks)
    return [dict(row) for row in (await conn.execute(query)).mappings()]
