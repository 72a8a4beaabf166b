"""Queries of lost-file recovery: the request rows and the task and catalog rows a recovery changes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.rows import skips_locked
from bamboo.db.schema import catalog_files, file_recovery_requests, task_datasets, task_files, tasks

OUTPUT_TYPES = ("output", "log")
MASTER_TYPES = ("input", "pseudo_input")


async def insert_request(conn: AsyncConnection, values: dict[str, Any]) -> int:
    result = await conn.execute(
        sa.insert(file_recovery_requests).values(**values).returning(file_recovery_requests.c.request_id)
    )
    return int(result.scalar_one())


async def get_request(conn: AsyncConnection, request_id: int) -> dict[str, Any] | None:
    query = sa.select(file_recovery_requests).where(file_recovery_requests.c.request_id == request_id)
    row = (await conn.execute(query)).mappings().first()
    return dict(row) if row else None


async def claim_requests(conn: AsyncConnection, statuses: Sequence[str], limit: int) -> list[dict[str, Any]]:
    """Requests in the given statuses, oldest first, locked; rows another agent holds are skipped."""
    query = (
        sa.select(file_recovery_requests)
        .where(file_recovery_requests.c.status.in_(list(statuses)))
        .order_by(file_recovery_requests.c.request_id)
        .limit(limit)
    )
    if skips_locked(conn):
        query = query.with_for_update(skip_locked=True)
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def update_request(conn: AsyncConnection, request_id: int, **values: Any) -> None:
    await conn.execute(
        sa.update(file_recovery_requests)
        .where(file_recovery_requests.c.request_id == request_id)
        .values(**values)
    )


async def producing_task(conn: AsyncConnection, dataset: str) -> int | None:
    """The newest task writing ``dataset`` as an output or log dataset."""
    query = (
        sa.select(task_datasets.c.jediTaskID)
        .where(task_datasets.c.datasetName == dataset, task_datasets.c.type.in_(OUTPUT_TYPES))
        .order_by(task_datasets.c.jediTaskID.desc())
        .limit(1)
    )
    return (await conn.execute(query)).scalar()


async def output_rows(
    conn: AsyncConnection, task_id: int, *, lfns: Sequence[str] | None, dataset: str | None
) -> list[dict[str, Any]]:
    """The task's output and log rows, with their dataset's name: the named files, or those of
    ``dataset``, or both restrictions together."""
    query = (
        sa.select(task_files, task_datasets.c.datasetName)
        .join(task_datasets, task_datasets.c.datasetID == task_files.c.datasetID)
        .where(task_files.c.jediTaskID == task_id, task_datasets.c.type.in_(OUTPUT_TYPES))
    )
    if lfns is not None:
        query = query.where(task_files.c.lfn.in_(list(lfns)))
    if dataset is not None:
        query = query.where(task_datasets.c.datasetName == dataset)
    return [dict(row) for row in (await conn.execute(query.order_by(task_files.c.fileID))).mappings()]


async def master_rows_of_jobs(
    conn: AsyncConnection, task_id: int, panda_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """The task's master input rows the given jobs held last (for a finished row: the job that
    processed it), with their dataset's name."""
    if not panda_ids:
        return []
    return await _master_rows(conn, task_id, task_files.c.PandaID.in_(list(panda_ids)))


async def master_rows_by_name(
    conn: AsyncConnection, task_id: int, lfns: Sequence[str]
) -> list[dict[str, Any]]:
    """The task's master input rows reading any of the named files, with their dataset's name."""
    if not lfns:
        return []
    return await _master_rows(conn, task_id, task_files.c.lfn.in_(list(lfns)))


async def _master_rows(
    conn: AsyncConnection, task_id: int, which: sa.ColumnElement[bool]
) -> list[dict[str, Any]]:
    query = (
        sa.select(task_files, task_datasets.c.datasetName)
        .join(task_datasets, task_datasets.c.datasetID == task_files.c.datasetID)
        .where(
            task_files.c.jediTaskID == task_id,
            which,
            task_datasets.c.masterID.is_(None),
            task_datasets.c.type.in_(MASTER_TYPES),
        )
        .order_by(task_files.c.fileID)
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def files_by_id(conn: AsyncConnection, file_ids: Sequence[int]) -> list[dict[str, Any]]:
    if not file_ids:
        return []
    query = sa.select(task_files).where(task_files.c.fileID.in_(list(file_ids))).order_by(task_files.c.fileID)
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def finished_outputs_of_jobs(
    conn: AsyncConnection, dataset_id: int, panda_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """Rows of one output dataset the given jobs produced successfully."""
    if not panda_ids:
        return []
    query = (
        sa.select(task_files)
        .where(
            task_files.c.datasetID == dataset_id,
            task_files.c.outPandaID.in_(list(panda_ids)),
            task_files.c.status == "finished",
        )
        .order_by(task_files.c.fileID)
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def child_tasks(conn: AsyncConnection, task_id: int) -> list[int]:
    query = (
        sa.select(tasks.c.jediTaskID)
        .where(tasks.c.parent_tid == task_id, tasks.c.jediTaskID != task_id)
        .order_by(tasks.c.jediTaskID)
    )
    return list((await conn.execute(query)).scalars())


async def forget_catalog_files(conn: AsyncConnection, dataset: str, lfns: Sequence[str]) -> int:
    """Remove lost files from a catalog dataset: nothing may read them any more."""
    if not lfns:
        return 0
    result = await conn.execute(
        sa.delete(catalog_files).where(
            catalog_files.c.dataset == dataset, catalog_files.c.lfn.in_(list(lfns))
        )
    )
    return result.rowcount or 0


async def catalog_entries(
    conn: AsyncConnection, dataset: str, lfns: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """The catalog entries of the named files of a dataset, by name."""
    if not lfns:
        return {}
    query = sa.select(catalog_files).where(
        catalog_files.c.dataset == dataset, catalog_files.c.lfn.in_(list(lfns))
    )
    return {row["lfn"]: dict(row) for row in (await conn.execute(query)).mappings()}
