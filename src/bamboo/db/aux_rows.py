"""Queries on file rows that do not drive job generation: shared secondary inputs and lib files
(logic/secondary.py, logic/build_jobs.py)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.schema import task_files


async def shared_rows(conn: AsyncConnection, dataset_id: int) -> list[dict[str, Any]]:
    """The ready rows of an untracked (reusable or repeat+nosplit) dataset, in file order.

    Untracked rows carry keepTrack 0 and no attempt limit, so the master-row query would skip them.
    """
    query = (
        sa.select(task_files)
        .where(task_files.c.datasetID == dataset_id, task_files.c.status == "ready")
        .order_by(task_files.c.fileID)
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def rows_of_type(conn: AsyncConnection, dataset_id: int, row_type: str) -> list[dict[str, Any]]:
    """Every row of one type in a dataset, whatever its status, in file order."""
    query = (
        sa.select(task_files)
        .where(task_files.c.datasetID == dataset_id, task_files.c.type == row_type)
        .order_by(task_files.c.fileID)
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]
