"""Queries of the job watchdog: jobs left too long in one status, and failing them for the finaliser."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.rows import skips_locked
from bamboo.db.schema import jobs, queues
from bamboo.db.types import UTCDateTime

PAUSED = "paused"

# What a claim returns: enough to decide and to write the diagnostics, not the ~130 columns.
_CLAIM_COLUMNS = (
    jobs.c.PandaID,
    jobs.c.jobStatus,
    jobs.c.prodSourceLabel,
    jobs.c.currentPriority,
    jobs.c.computingSite,
    jobs.c.creationTime,
    jobs.c.modificationTime,
    jobs.c.stateChangeTime,
    jobs.c.endTime,
    jobs.c.jediTaskID,
)


async def claim_stale(
    conn: AsyncConnection,
    statuses: Sequence[str],
    column: sa.Column[Any],
    before: datetime,
    limit: int,
    *,
    condition: sa.ColumnElement[bool] | None = None,
) -> list[dict[str, Any]]:
    """Jobs in ``statuses`` whose ``column`` (a time) is older than ``before``, locked, oldest first.

    On PostgreSQL rows another transaction holds (a pilot report, a kill) are skipped: whoever holds
    them is about to change them, and the next watchdog step sees them again if not. Jobs at a
    ``paused`` queue are never claimed: such a queue holds its jobs as they are, with every job
    timeout and reassignment disabled (domain.md §6.1).
    """
    query = sa.select(*_CLAIM_COLUMNS).where(
        jobs.c.jobStatus.in_(list(statuses)),
        column.isnot(None),
        column < before,
        # (NOT IN is unknown for a job without a queue: such a job is not at a paused one.)
        sa.or_(jobs.c.computingSite.is_(None), sa.not_(at_queue_in_status(PAUSED))),
    )
    if condition is not None:
        query = query.where(condition)
    query = query.order_by(column, jobs.c.PandaID).limit(limit)
    if skips_locked(conn):
        query = query.with_for_update(skip_locked=True)
    return [dict(row) for row in (await conn.execute(query)).mappings()]


def not_reported() -> sa.ColumnElement[bool]:
    """Jobs with no final pilot report waiting: those that have one belong to the finaliser."""
    return jobs.c.reported_status.is_(None)


def at_queue_in_status(status: str) -> sa.ColumnElement[bool]:
    """Jobs whose queue has ``status`` (e.g. paused)."""
    return jobs.c.computingSite.in_(sa.select(queues.c.name).where(queues.c.status == status))


# One statement for the whole batch (executemany): every job gets its own diagnostic. The status
# guard keeps a job that moved on since its claim (SQLite has no row locks to hold it) untouched.
_FAIL = (
    sa.update(jobs)
    .where(jobs.c.PandaID == sa.bindparam("b_panda_id"), jobs.c.jobStatus == sa.bindparam("b_status"))
    .values(
        jobStatus="holding",
        reported_status="failed",
        jobDispatcherErrorCode=sa.bindparam("b_code"),
        jobDispatcherErrorDiag=sa.bindparam("b_diag"),
        commandToPilot=sa.bindparam("b_command"),
        modificationTime=sa.bindparam("b_now", type_=UTCDateTime()),
        stateChangeTime=sa.bindparam("b_now", type_=UTCDateTime()),
        endTime=sa.func.coalesce(jobs.c.endTime, sa.bindparam("b_end", type_=UTCDateTime())),
    )
)


async def fail_for_finaliser(
    conn: AsyncConnection, failures: Sequence[dict[str, Any]], command: str, now: datetime
) -> None:
    """Put each job (``PandaID``, ``jobStatus``, ``code``, ``diag``, ``end``) in holding with a
    failed report, so the finaliser ends it and returns its inputs exactly as for a failure the
    pilot reported. ``end`` becomes the job's endTime unless the pilot set one."""
    if not failures:
        return
    await conn.execute(
        _FAIL,
        [
            {
                "b_panda_id": job["PandaID"],
                "b_status": job["jobStatus"],
                "b_code": job["code"],
                "b_diag": job["diag"][:250],
                "b_command": command,
                "b_now": now,
                "b_end": job["end"],
            }
            for job in failures
        ],
    )


async def set_kill_diagnostics(conn: AsyncConnection, diagnostics: dict[int, str]) -> None:
    """Replace the taskBufferErrorDiag of killed jobs by a more precise one."""
    if not diagnostics:
        return
    statement = (
        sa.update(jobs)
        .where(jobs.c.PandaID == sa.bindparam("b_panda_id"))
        .values(taskBufferErrorDiag=sa.bindparam("b_diag"))
    )
    await conn.execute(
        statement, [{"b_panda_id": panda_id, "b_diag": diag[:300]} for panda_id, diag in diagnostics.items()]
    )
