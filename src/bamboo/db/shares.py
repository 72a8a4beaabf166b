"""Queries on the global share tree and on the shares of tasks and jobs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.schema import global_shares, jobs, tasks


async def replace(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Make ``rows`` the whole tree, in the caller's transaction (readers never see half a tree)."""
    await conn.execute(sa.delete(global_shares))
    if rows:
        await conn.execute(sa.insert(global_shares), rows)


async def all_rows(conn: AsyncConnection) -> list[dict[str, Any]]:
    query = sa.select(global_shares).order_by(global_shares.c.position)
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def job_counts(conn: AsyncConnection, statuses: Sequence[str]) -> dict[tuple[str | None, str], int]:
    """Jobs by (gshare, jobStatus) for the given statuses (read through the status index)."""
    query = (
        sa.select(jobs.c.gshare, jobs.c.jobStatus, sa.func.count())
        .where(jobs.c.jobStatus.in_(list(statuses)))
        .group_by(jobs.c.gshare, jobs.c.jobStatus)
    )
    return {(row[0], row[1]): row[2] for row in await conn.execute(query)}


async def job_counts_by_site(
    conn: AsyncConnection, statuses: Sequence[str]
) -> dict[tuple[str | None, str, str | None], int]:
    """Jobs by (gshare, jobStatus, computingSite) for the given statuses."""
    query = (
        sa.select(jobs.c.gshare, jobs.c.jobStatus, jobs.c.computingSite, sa.func.count())
        .where(jobs.c.jobStatus.in_(list(statuses)))
        .group_by(jobs.c.gshare, jobs.c.jobStatus, jobs.c.computingSite)
    )
    return {(row[0], row[1], row[2]): row[3] for row in await conn.execute(query)}


async def move_tasks(conn: AsyncConnection, task_ids: Sequence[int], share: str) -> int:
    """Set the share of these tasks; returns how many exist."""
    if not task_ids:
        return 0
    result = await conn.execute(
        sa.update(tasks).where(tasks.c.jediTaskID.in_(list(task_ids))).values(gshare=share)
    )
    return result.rowcount


async def move_jobs(
    conn: AsyncConnection, task_ids: Sequence[int], share: str, statuses: Sequence[str]
) -> int:
    """Set the share of these tasks' jobs in the given statuses; returns how many changed."""
    if not task_ids:
        return 0
    result = await conn.execute(
        sa.update(jobs)
        .where(jobs.c.jediTaskID.in_(list(task_ids)), jobs.c.jobStatus.in_(list(statuses)))
        .values(gshare=share)
    )
    return result.rowcount
