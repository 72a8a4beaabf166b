"""Queries of the job archive: moving jobs from the active tables (``jobs``, ``job_files``) to the
archive tables (``jobs_archive``, ``job_files_archive``), deleting archived jobs past retention,
and the reads that look in both.

A job and its files are always in exactly one of the two pairs of tables: they move together in
one transaction, so no reader ever sees a job in both or in neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.rows import skips_locked
from bamboo.db.schema import job_files, job_files_archive, jobs, jobs_archive

# Both tables of each pair have the same columns; the copy names them, so their order in either
# table does not matter.
_JOB_COLUMNS = tuple(column.name for column in jobs.columns)
_FILE_COLUMNS = tuple(column.name for column in job_files.columns)
_IDS = sa.bindparam("ids", expanding=True)


def _copy_statements() -> tuple[sa.Insert, sa.Insert]:
    """The inserts copying the listed jobs and their files into the archive.

    Each skips rows the archive already holds, so running the copy twice (a step rerun after a
    crash between statements, were the transaction ever split) neither duplicates a job nor fails
    on its primary key.
    """
    copy_jobs = sa.insert(jobs_archive).from_select(
        _JOB_COLUMNS,
        sa.select(*(jobs.c[name] for name in _JOB_COLUMNS)).where(
            jobs.c.PandaID.in_(_IDS),
            ~sa.exists().where(jobs_archive.c.PandaID == jobs.c.PandaID),
        ),
    )
    copy_files = sa.insert(job_files_archive).from_select(
        _FILE_COLUMNS,
        sa.select(*(job_files.c[name] for name in _FILE_COLUMNS)).where(
            job_files.c.PandaID.in_(_IDS),
            ~sa.exists().where(job_files_archive.c.row_ID == job_files.c.row_ID),
        ),
    )
    return copy_jobs, copy_files


_COPY_JOBS, _COPY_FILES = _copy_statements()
_DELETE_FILES = sa.delete(job_files).where(job_files.c.PandaID.in_(_IDS))
_DELETE_JOBS = sa.delete(jobs).where(jobs.c.PandaID.in_(_IDS))
_DELETE_ARCHIVED_FILES = sa.delete(job_files_archive).where(job_files_archive.c.PandaID.in_(_IDS))
_DELETE_ARCHIVED_JOBS = sa.delete(jobs_archive).where(jobs_archive.c.PandaID.in_(_IDS))


async def claim_to_archive(
    conn: AsyncConnection, statuses: Sequence[str], before: datetime, limit: int
) -> list[int]:
    """PandaIDs of up to ``limit`` active jobs in ``statuses`` last modified before ``before``,
    locked for this transaction.

    On PostgreSQL rows another archiver (or a late pilot report) holds are skipped, so several
    agent processes move disjoint batches; SQLite has one writer at a time. No order: any old
    final job will do, and without a sort the index on (jobStatus, modificationTime) stops after
    ``limit`` rows.
    """
    query = (
        sa.select(jobs.c.PandaID)
        .where(jobs.c.jobStatus.in_(list(statuses)), jobs.c.modificationTime < before)
        .limit(limit)
    )
    if skips_locked(conn):
        query = query.with_for_update(skip_locked=True)
    return list((await conn.execute(query)).scalars())


async def copy_to_archive(conn: AsyncConnection, panda_ids: Sequence[int]) -> None:
    """Copy the jobs and their files into the archive tables (rows already there are skipped)."""
    if panda_ids:
        await conn.execute(_COPY_JOBS, {"ids": list(panda_ids)})
        await conn.execute(_COPY_FILES, {"ids": list(panda_ids)})


async def delete_active(conn: AsyncConnection, panda_ids: Sequence[int]) -> None:
    """Delete the jobs and their files from the active tables."""
    if panda_ids:
        await conn.execute(_DELETE_FILES, {"ids": list(panda_ids)})
        await conn.execute(_DELETE_JOBS, {"ids": list(panda_ids)})


async def claim_expired(conn: AsyncConnection, before: datetime, limit: int) -> list[int]:
    """PandaIDs of up to ``limit`` archived jobs last modified before ``before``, locked."""
    query = sa.select(jobs_archive.c.PandaID).where(jobs_archive.c.modificationTime < before).limit(limit)
    if skips_locked(conn):
        query = query.with_for_update(skip_locked=True)
    return list((await conn.execute(query)).scalars())


async def delete_archived(conn: AsyncConnection, panda_ids: Sequence[int]) -> None:
    """Delete archived jobs and their archived files."""
    if panda_ids:
        await conn.execute(_DELETE_ARCHIVED_FILES, {"ids": list(panda_ids)})
        await conn.execute(_DELETE_ARCHIVED_JOBS, {"ids": list(panda_ids)})


# --- reads over both tables ----------------------------------------------------------------------------


async def get_many_incl_archive(conn: AsyncConnection, panda_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Full job rows by PandaID, from the active table or else the archive (absent ids are missing)."""
    if not panda_ids:
        return {}
    found: dict[int, dict[str, Any]] = {}
    for table in (jobs, jobs_archive):
        missing = [panda_id for panda_id in panda_ids if panda_id not in found]
        if not missing:
            break
        query = sa.select(table).where(table.c.PandaID.in_(missing))
        found.update({row["PandaID"]: dict(row) for row in (await conn.execute(query)).mappings()})
    return found


async def files_of_incl_archive(
    conn: AsyncConnection, panda_ids: Sequence[int]
) -> dict[int, list[dict[str, Any]]]:
    """The file rows of each job, wherever the job is, in row_ID order (a job's files are all in
    the table pair its job is in)."""
    grouped: dict[int, list[dict[str, Any]]] = {panda_id: [] for panda_id in panda_ids}
    if not panda_ids:
        return grouped
    for table in (job_files, job_files_archive):
        query = sa.select(table).where(table.c.PandaID.in_(list(panda_ids))).order_by(table.c.row_ID)
        for row in (await conn.execute(query)).mappings():
            grouped[row["PandaID"]].append(dict(row))
    return grouped


async def statuses_incl_archive(conn: AsyncConnection, panda_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """``PandaID``, ``jobStatus``, ``commandToPilot`` and ``attemptNr`` of each job, active or
    archived; the archive is read only for the ids the active table does not hold."""
    found: dict[int, dict[str, Any]] = {}
    for table in (jobs, jobs_archive):
        missing = [panda_id for panda_id in panda_ids if panda_id not in found]
        if not missing:
            break
        query = sa.select(
            table.c.PandaID, table.c.jobStatus, table.c.commandToPilot, table.c.attemptNr
        ).where(table.c.PandaID.in_(missing))
        found.update({row["PandaID"]: dict(row) for row in (await conn.execute(query)).mappings()})
    return found


async def archived_ids_of_task(conn: AsyncConnection, task_id: int) -> list[int]:
    """PandaIDs of the task's archived jobs, ascending."""
    query = (
        sa.select(jobs_archive.c.PandaID)
        .where(jobs_archive.c.jediTaskID == task_id)
        .order_by(jobs_archive.c.PandaID)
    )
    return list((await conn.execute(query)).scalars())
