"""Queries brokerage and re-brokerage need beyond the queue catalog: pilot activity per queue, job
starts per queue, the largest input file a task still has to process, and the jobs waiting at
given queues."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.job_watchdog import claim_stale
from bamboo.db.schema import harvester_workers, jobs, task_files, tasks, worker_node_queues

# Statuses a job reaches only through a pilot (or after one): a recent change in one of them means
# a pilot talked to the server about a job of that queue.
_PILOT_STATUSES = ("sent", "starting", "running", "holding", "transferring", "finished", "failed")
# Statuses a job that has started (startTime set) can be in while it is still in the active table.
_STARTED_STATUSES = ("starting", "running", "holding", "transferring", "finished", "failed", "merging")


async def sites_with_pilot_activity(conn: AsyncConnection, since: datetime) -> set[str]:
    """Queues some pilot or Harvester talked to the server about since ``since``: a job update or
    dispatch there, a Harvester worker report, or a worker-node report (pilots send one at start)."""
    job_sites = (
        sa.select(jobs.c.computingSite)
        .where(jobs.c.jobStatus.in_(_PILOT_STATUSES), jobs.c.modificationTime >= since)
        .distinct()
    )
    worker_sites = (
        sa.select(harvester_workers.c.computingSite).where(harvester_workers.c.lastUpdate >= since).distinct()
    )
    node_sites = (
        sa.select(worker_node_queues.c.panda_queue).where(worker_node_queues.c.last_seen >= since).distinct()
    )
    found: set[str] = set()
    for query in (job_sites, worker_sites, node_sites):
        found.update(site for site in (await conn.execute(query)).scalars() if site)
    return found


async def sites_with_job_start(conn: AsyncConnection, since: datetime) -> set[str]:
    """Queues where a job started since ``since`` (its modificationTime is then recent as well,
    which lets the status-and-time index do the work)."""
    query = (
        sa.select(jobs.c.computingSite)
        .where(
            jobs.c.jobStatus.in_(_STARTED_STATUSES),
            jobs.c.modificationTime >= since,
            jobs.c.startTime >= since,
        )
        .distinct()
    )
    return {site for site in (await conn.execute(query)).scalars() if site}


async def largest_ready_file(conn: AsyncConnection, task_id: int, dataset_id: int) -> int:
    """Bytes of the largest file of a task's dataset still waiting for a job (0 when none)."""
    query = sa.select(sa.func.max(task_files.c.fsize)).where(
        task_files.c.jediTaskID == task_id,
        task_files.c.datasetID == dataset_id,
        task_files.c.status == "ready",
    )
    return int((await conn.execute(query)).scalar_one_or_none() or 0)


async def claim_queued_at(
    conn: AsyncConnection,
    statuses: Sequence[str],
    sites: Sequence[str],
    before: datetime,
    limit: int,
    *,
    condition: sa.ColumnElement[bool] | None = None,
    column: sa.Column[Any] = jobs.c.modificationTime,
) -> list[dict[str, Any]]:
    """Jobs of a task in ``statuses`` at one of ``sites`` whose ``column`` (a time) is before
    ``before``, locked and oldest first (as :func:`bamboo.db.job_watchdog.claim_stale` claims)."""
    if not sites:
        return []
    where = sa.and_(jobs.c.computingSite.in_(list(sites)), jobs.c.jediTaskID.isnot(None))
    if condition is not None:
        where = sa.and_(where, condition)
    return await claim_stale(conn, statuses, column, before, limit, condition=where)


async def share_counts(
    conn: AsyncConnection, statuses: Sequence[str], labels: Sequence[str]
) -> dict[tuple[str, str | None, str], int]:
    """Jobs with ``labels`` in ``statuses``, counted per (queue, global share, status)."""
    query = (
        sa.select(jobs.c.computingSite, jobs.c.gshare, jobs.c.jobStatus, sa.func.count())
        .where(jobs.c.jobStatus.in_(list(statuses)), jobs.c.prodSourceLabel.in_(list(labels)))
        .group_by(jobs.c.computingSite, jobs.c.gshare, jobs.c.jobStatus)
    )
    return {(row[0], row[1], row[2]): row[3] for row in await conn.execute(query)}


def of_share(share: str | None) -> sa.ColumnElement[bool]:
    """Jobs of one global share (None: jobs without one)."""
    return jobs.c.gshare.is_(None) if share is None else jobs.c.gshare == share


def of_unsited_task() -> sa.ColumnElement[bool]:
    """Jobs whose task does not name its queue (``site``), so brokerage may choose another."""
    return jobs.c.jediTaskID.in_(sa.select(tasks.c.jediTaskID).where(tasks.c.site.is_(None)))
