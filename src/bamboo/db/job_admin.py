"""Queries behind the job administration endpoints (job/kill, reassign, set_command, set_debug_mode,
get_metadata_for_analysis_jobs, generate_offline_execution_script, submit)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.rows import skips_locked
from bamboo.db.schema import jobs, jobs_archive

# What the permission and state rules of the administration endpoints look at.
_ADMIN_COLUMNS = (
    jobs.c.PandaID,
    jobs.c.jobStatus,
    jobs.c.commandToPilot,
    jobs.c.prodSourceLabel,
    jobs.c.prodUserName,
    jobs.c.prodUserID,
    jobs.c.workingGroup,
    jobs.c.specialHandling,
    jobs.c.jediTaskID,
    jobs.c.eventService,
)


async def lock_jobs(conn: AsyncConnection, panda_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The administration view of the given jobs, locked until the transaction ends (PostgreSQL)."""
    if not panda_ids:
        return {}
    query = sa.select(*_ADMIN_COLUMNS).where(jobs.c.PandaID.in_(list(panda_ids)))
    if skips_locked(conn):
        query = query.with_for_update()
    return {row["PandaID"]: dict(row) for row in (await conn.execute(query)).mappings()}


async def set_columns(conn: AsyncConnection, panda_ids: Sequence[int], **values: Any) -> None:
    """Set the same column values on every given job."""
    if panda_ids and values:
        await conn.execute(sa.update(jobs).where(jobs.c.PandaID.in_(list(panda_ids))).values(**values))


async def finished_metadata(
    conn: AsyncConnection, task_id: int, labels: Sequence[str], limit: int
) -> list[tuple[int, str]]:
    """(PandaID, metadata) of the task's finished jobs, active and archived, with these labels that
    carry metadata: the first ``limit`` by PandaID."""
    found: list[tuple[int, str]] = []
    for table in (jobs, jobs_archive):
        query = (
            sa.select(table.c.PandaID, table.c.metadata)
            .where(
                table.c.jediTaskID == task_id,
                table.c.jobStatus == "finished",
                table.c.prodSourceLabel.in_(list(labels)),
                table.c.metadata.is_not(None),
            )
            .order_by(table.c.PandaID)
            .limit(limit)
        )
        found.extend((row[0], row[1]) for row in await conn.execute(query))
    return sorted(found)[:limit]
