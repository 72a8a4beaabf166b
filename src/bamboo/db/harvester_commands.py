"""Queries for Harvester commands and target slots (``harvester_commands``, ``harvester_slots``),
and the few worker reads that steering needs (who serves a queue, its reported worker counts)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.rows import skips_locked
from bamboo.db.schema import (
    harvester_commands,
    harvester_instances,
    harvester_slots,
    harvester_worker_stats,
    harvester_workers,
    jobs,
)

NEW, RETRIEVED, ACKNOWLEDGED = "new", "retrieved", "acknowledged"


async def insert_command(
    conn: AsyncConnection,
    harvester_id: str,
    command: str,
    params: str | None,
    now: datetime,
    *,
    supersede: bool,
) -> int:
    """Queue a command for a Harvester instance and return its id.

    With ``supersede`` the commands of the same name the instance has not fetched yet (``new``) are
    dropped first: they carry an older wish the new one replaces. Without it, an identical command
    still waiting (same name and parameters, ``new``) is kept and its id returned instead of
    queueing a duplicate. Fetched commands are never touched: the instance may be acting on them.
    """
    pending = (
        harvester_commands.c.harvester_ID == harvester_id,
        harvester_commands.c.command == command,
        harvester_commands.c.status == NEW,
    )
    if supersede:
        await conn.execute(sa.delete(harvester_commands).where(*pending))
    else:
        same = sa.select(harvester_commands.c.command_id).where(
            *pending,
            harvester_commands.c.params.is_(None)
            if params is None
            else harvester_commands.c.params == params,
        )
        existing = (await conn.execute(same.limit(1))).scalar()
        if existing is not None:
            return int(existing)
    result = await conn.execute(
        sa.insert(harvester_commands)
        .values(
            harvester_ID=harvester_id,
            command=command,
            params=params,
            ack_requested=0,
            status=NEW,
            creation_date=now,
            status_date=now,
        )
        .returning(harvester_commands.c.command_id)
    )
    return int(result.scalar_one())


async def claim_new(
    conn: AsyncConnection, harvester_id: str, limit: int, now: datetime
) -> list[dict[str, Any]]:
    """Mark the oldest ``limit`` new commands of an instance ``retrieved`` and return them, oldest
    first. On PostgreSQL the pick skips rows another transaction is claiming, so two concurrent
    callers never receive the same command; SQLite's single writer gives the same guarantee."""
    pick = (
        sa.select(harvester_commands.c.command_id)
        .where(harvester_commands.c.harvester_ID == harvester_id, harvester_commands.c.status == NEW)
        .order_by(harvester_commands.c.creation_date, harvester_commands.c.command_id)
        .limit(limit)
    )
    if skips_locked(conn):
        pick = pick.with_for_update(skip_locked=True)
    ids = list((await conn.execute(pick)).scalars())
    if not ids:
        return []
    result = await conn.execute(
        sa.update(harvester_commands)
        .where(harvester_commands.c.command_id.in_(ids), harvester_commands.c.status == NEW)
        .values(status=RETRIEVED, status_date=now)
        .returning(*harvester_commands.c)
    )
    rows = [dict(row) for row in result.mappings()]
    rows.sort(key=lambda row: (row["creation_date"], row["command_id"]))
    return rows


async def acknowledge(conn: AsyncConnection, command_ids: Sequence[int], now: datetime) -> int:
    """Mark these commands ``acknowledged`` (unknown ids are ignored); return how many changed."""
    if not command_ids:
        return 0
    result = await conn.execute(
        sa.update(harvester_commands)
        .where(
            harvester_commands.c.command_id.in_(list(command_ids)),
            harvester_commands.c.status != ACKNOWLEDGED,
        )
        .values(status=ACKNOWLEDGED, status_date=now)
    )
    return int(result.rowcount or 0)


async def commands_of(conn: AsyncConnection, harvester_id: str | None = None) -> list[dict[str, Any]]:
    """Every command (of one instance), oldest first: for the CLI and tests."""
    query = sa.select(harvester_commands).order_by(harvester_commands.c.command_id)
    if harvester_id is not None:
        query = query.where(harvester_commands.c.harvester_ID == harvester_id)
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def last_command_dates(conn: AsyncConnection, names: Sequence[str]) -> dict[str, datetime]:
    """When each of these commands was last queued (for any instance), by command name."""
    query = (
        sa.select(harvester_commands.c.command, sa.func.max(harvester_commands.c.creation_date))
        .where(harvester_commands.c.command.in_(list(names)))
        .group_by(harvester_commands.c.command)
    )
    return {name: when for name, when in (await conn.execute(query)).all()}


async def activated_by_kind(conn: AsyncConnection, queues: Sequence[str]) -> list[dict[str, Any]]:
    """Activated jobs per queue, label and resource type, with the cores they need (a job without a
    core count needs one)."""
    cores = sa.func.coalesce(sa.func.nullif(jobs.c.coreCount, 0), 1)
    query = (
        sa.select(
            jobs.c.computingSite,
            jobs.c.prodSourceLabel,
            jobs.c.resource_type,
            sa.func.count().label("n"),
            sa.func.sum(cores).label("cores"),
        )
        .where(jobs.c.jobStatus == "activated", jobs.c.computingSite.in_(list(queues)))
        .group_by(jobs.c.computingSite, jobs.c.prodSourceLabel, jobs.c.resource_type)
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


# --- who serves a queue, what its workers report ---------------------------------------------------


async def last_reporting_harvester(conn: AsyncConnection, queue: str) -> str | None:
    """The instance whose worker report for this queue is the most recent, or None."""
    query = (
        sa.select(harvester_workers.c.harvesterID)
        .where(harvester_workers.c.computingSite == queue)
        .order_by(harvester_workers.c.lastUpdate.desc())
        .limit(1)
    )
    return (await conn.execute(query)).scalar()


async def worker_stats(
    conn: AsyncConnection, since: datetime, queues: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Reported worker counts (report_worker_statistics) refreshed since ``since``."""
    query = sa.select(harvester_worker_stats).where(harvester_worker_stats.c.lastUpdate >= since)
    if queues is not None:
        query = query.where(harvester_worker_stats.c.computingSite.in_(list(queues)))
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def instances(conn: AsyncConnection) -> list[dict[str, Any]]:
    query = sa.select(
        harvester_instances.c.harvester_ID,
        harvester_instances.c.owner,
        harvester_instances.c.hostName,
        harvester_instances.c.sw_version,
        harvester_instances.c.lastUpdate,
    ).order_by(harvester_instances.c.harvester_ID)
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def worker_counts(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Workers per (instance, queue, status), from the worker rows themselves."""
    query = (
        sa.select(
            harvester_workers.c.harvesterID,
            harvester_workers.c.computingSite,
            harvester_workers.c.status,
            sa.func.count().label("n"),
        )
        .group_by(
            harvester_workers.c.harvesterID, harvester_workers.c.computingSite, harvester_workers.c.status
        )
        .order_by(
            harvester_workers.c.harvesterID, harvester_workers.c.computingSite, harvester_workers.c.status
        )
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


# --- target slots -----------------------------------------------------------------------------------


async def set_slots(
    conn: AsyncConnection,
    queue: str,
    gshare: str,
    resource_type: str,
    num_slots: int,
    now: datetime,
    expiration: datetime | None,
) -> None:
    """Upsert one slot row (an empty gshare / resource type stands for "any")."""
    key = (
        harvester_slots.c.pandaQueueName == queue,
        harvester_slots.c.gshare == gshare,
        harvester_slots.c.resourceType == resource_type,
    )
    values = {"numSlots": num_slots, "modificationTime": now, "expirationTime": expiration}
    updated = await conn.execute(sa.update(harvester_slots).where(*key).values(**values))
    if not updated.rowcount:
        await conn.execute(
            sa.insert(harvester_slots).values(
                pandaQueueName=queue, gshare=gshare, resourceType=resource_type, **values
            )
        )


async def delete_slots(conn: AsyncConnection, queue: str, gshare: str, resource_type: str) -> None:
    await conn.execute(
        sa.delete(harvester_slots).where(
            harvester_slots.c.pandaQueueName == queue,
            harvester_slots.c.gshare == gshare,
            harvester_slots.c.resourceType == resource_type,
        )
    )


_SLOTS_OF = sa.select(
    harvester_slots.c.gshare,
    harvester_slots.c.resourceType,
    harvester_slots.c.numSlots,
    harvester_slots.c.expirationTime,
).where(harvester_slots.c.pandaQueueName == sa.bindparam("queue"))


async def slots_of(conn: AsyncConnection, queue: str) -> list[dict[str, Any]]:
    """Every slot row of a queue, expired or not (the caller filters by its clock)."""
    return [dict(row) for row in (await conn.execute(_SLOTS_OF, {"queue": queue})).mappings()]


async def all_slots(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Every slot row (a few per steered queue; brokerage reads them once per cycle)."""
    return [dict(row) for row in (await conn.execute(sa.select(harvester_slots))).mappings()]


# Jobs that hold a slot: handed out and not yet ended.
SLOT_HOLDING_STATUSES = ("sent", "starting", "running")


async def count_holding(conn: AsyncConnection, queue: str, gshare: str, resource_type: str, cap: int) -> int:
    """Jobs of a queue holding a slot (sent, starting, running) that a slot row with this gshare and
    resource type covers ("" matches any), counting at most ``cap`` so the cost stays bounded."""
    conditions = [jobs.c.jobStatus.in_(SLOT_HOLDING_STATUSES), jobs.c.computingSite == queue]
    if gshare:
        conditions.append(jobs.c.gshare == gshare)
    if resource_type:
        conditions.append(jobs.c.resource_type == resource_type)
    inner = sa.select(jobs.c.PandaID).where(*conditions).limit(cap).subquery()
    return int((await conn.execute(sa.select(sa.func.count()).select_from(inner))).scalar_one())
