"""Queries behind merge jobs (logic/merge_jobs.py): unmerged files waiting for a merge, and the
pre-merge jobs that wait in ``merging`` for it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.schema import jobs, jobs_archive, task_datasets, task_files

#: File-row and dataset types of unmerged twins (domain.md §3.1).
TRANSIENT_TYPES = ("trn_output", "trn_log")


def _has_attempts_left() -> sa.ColumnElement[bool]:
    return sa.and_(
        sa.or_(task_files.c.maxAttempt.is_(None), task_files.c.attemptNr < task_files.c.maxAttempt),
        sa.or_(task_files.c.maxFailure.is_(None), task_files.c.failedAttempt < task_files.c.maxFailure),
    )


def _transient_rows(task_id: Any) -> sa.ColumnElement[bool]:
    # Through the task's twin datasets, so that the (jediTaskID, datasetID, status) index answers
    # and a task without them costs nothing; on the row type alone every row of the task is read.
    # ``task_id`` may be the tasks table's column of an enclosing claim, which must stay correlated.
    twins = (
        sa.select(task_datasets.c.datasetID)
        .where(task_datasets.c.jediTaskID == task_id, task_datasets.c.type.in_(TRANSIENT_TYPES))
        .correlate_except(task_datasets)
    )
    return sa.and_(task_files.c.jediTaskID == task_id, task_files.c.datasetID.in_(twins.scalar_subquery()))


def waiting_for_merge(task_id: Any) -> sa.Exists:
    """Some unmerged file of the task is ready for a merge job."""
    return sa.exists(
        sa.select(task_files.c.fileID).where(
            _transient_rows(task_id),
            task_files.c.status == "ready",
            task_files.c.keepTrack == 1,
            _has_attempts_left(),
        )
    )


def merges_outstanding(task_id: Any) -> sa.Exists:
    """Some unmerged file of the task is ready for a merge job or held by one."""
    return sa.exists(
        sa.select(task_files.c.fileID).where(
            _transient_rows(task_id),
            task_files.c.keepTrack == 1,
            sa.or_(
                task_files.c.status == "running",
                sa.and_(task_files.c.status == "ready", _has_attempts_left()),
            ),
        )
    )


async def ready_inputs(conn: AsyncConnection, task_id: int, limit: int) -> list[dict[str, Any]]:
    """Unmerged files ready for a merge job, with the site of the job that wrote them
    (``computingSite``), in the order their jobs were made.

    The writer is normally still ``merging`` (active), but one whose other unmerged file ran out
    of merge attempts has failed and may be archived while this file waits (a paused task).
    """
    site = sa.func.coalesce(jobs.c.computingSite, jobs_archive.c.computingSite)
    query = (
        sa.select(task_files, site.label("computingSite"))
        .outerjoin(jobs, jobs.c.PandaID == task_files.c.outPandaID)
        .outerjoin(jobs_archive, jobs_archive.c.PandaID == task_files.c.outPandaID)
        .where(
            sa.or_(jobs.c.PandaID.is_not(None), jobs_archive.c.PandaID.is_not(None)),
            _transient_rows(task_id),
            task_files.c.status == "ready",
            task_files.c.keepTrack == 1,
            _has_attempts_left(),
        )
        .order_by(task_files.c.outPandaID, task_files.c.fileID)
        .limit(limit)
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def run_work_left(conn: AsyncConnection, task_id: int, *, with_unused: bool) -> bool:
    """Whether a master input row of the task is still held by a job, or, ``with_unused``, may
    still get one: more unmerged files may come."""
    masters = sa.select(task_datasets.c.datasetID).where(
        task_datasets.c.jediTaskID == task_id,
        task_datasets.c.masterID.is_(None),
        task_datasets.c.type.in_(["input", "pseudo_input"]),
    )
    held = task_files.c.status == "running"
    unused = sa.and_(task_files.c.status == "ready", _has_attempts_left())
    query = sa.select(
        sa.exists(
            sa.select(task_files.c.fileID).where(
                task_files.c.jediTaskID == task_id,
                task_files.c.datasetID.in_(masters.scalar_subquery()),
                task_files.c.keepTrack == 1,
                sa.or_(held, unused) if with_unused else held,
            )
        )
    )
    return bool((await conn.execute(query)).scalar())


async def end_merging(conn: AsyncConnection, panda_ids: Sequence[int], **values: Any) -> None:
    """Give pre-merge jobs still in ``merging`` their final status and columns."""
    if panda_ids:
        await conn.execute(
            sa.update(jobs)
            .where(jobs.c.PandaID.in_(list(panda_ids)), jobs.c.jobStatus == "merging")
            .values(**values)
        )


def pre_merge_jobs_gone() -> sa.ColumnElement[bool]:
    """A merge job that holds unmerged files, none of whose producers still waits in ``merging``
    (a condition on the jobs table, for the job watchdog)."""
    producer = jobs.alias("producer")
    held = sa.and_(
        task_files.c.PandaID == jobs.c.PandaID,
        task_files.c.status == "running",
        task_files.c.type.in_(TRANSIENT_TYPES),
    )
    waiting = sa.exists(
        sa.select(task_files.c.fileID)
        .join(producer, producer.c.PandaID == task_files.c.outPandaID)
        .where(held, producer.c.jobStatus == "merging")
        .correlate(jobs)
    )
    holds_files = sa.exists(sa.select(task_files.c.fileID).where(held).correlate(jobs))
    return sa.and_(holds_files, ~waiting)
