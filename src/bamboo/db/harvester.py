"""Queries on Harvester instances and what they report besides workers: command locks, service
metrics, dialogs and worker statistics (domain.md §8.2)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.schema import (
    harvester_command_locks,
    harvester_dialogs,
    harvester_instances,
    harvester_metrics,
    harvester_worker_stats,
)


def _insert(conn: AsyncConnection, table: sa.Table) -> Any:
    # INSERT ... ON CONFLICT has the same shape on both backends but lives in each dialect.
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


async def claim_instance(conn: AsyncConnection, harvester_id: str, owner: str, now: datetime) -> str | None:
    """Create the instance row owned by ``owner`` unless it exists; return the row's owner.

    Two first contacts racing both end with the same answer: the row of whichever inserted first.
    """
    statement = (
        _insert(conn, harvester_instances)
        .values(harvester_ID=harvester_id, owner=owner, lastUpdate=now)
        .on_conflict_do_nothing(index_elements=["harvester_ID"])
    )
    await conn.execute(statement)
    return await owner_of(conn, harvester_id)


async def owner_of(conn: AsyncConnection, harvester_id: str) -> str | None:
    """The owner recorded for an instance (None when unknown or never recorded)."""
    query = sa.select(harvester_instances.c.owner).where(harvester_instances.c.harvester_ID == harvester_id)
    return (await conn.execute(query)).scalar()


async def update_instance(conn: AsyncConnection, harvester_id: str, values: dict[str, Any]) -> None:
    """Set columns of an existing instance row."""
    await conn.execute(
        sa.update(harvester_instances)
        .where(harvester_instances.c.harvester_ID == harvester_id)
        .values(**values)
    )


async def get_instance(conn: AsyncConnection, harvester_id: str) -> dict[str, Any] | None:
    query = sa.select(harvester_instances).where(harvester_instances.c.harvester_ID == harvester_id)
    row = (await conn.execute(query)).mappings().first()
    return dict(row) if row else None


async def add_command_locks(
    conn: AsyncConnection, harvester_id: str, locks: Sequence[tuple[str, str, str]], now: datetime
) -> None:
    """Register (command, computingSite, resourceType) locks; existing ones are left as they are
    (their holder and lock time belong to whoever uses the lock)."""
    if not locks:
        return
    statement = _insert(conn, harvester_command_locks).on_conflict_do_nothing()
    await conn.execute(
        statement,
        [
            {
                "harvester_ID": harvester_id,
                "command": command,
                "computingSite": site,
                "resourceType": resource_type,
                "lastUpdate": now,
            }
            for command, site, resource_type in sorted(set(locks))
        ],
    )


async def command_locks(conn: AsyncConnection, harvester_id: str) -> list[dict[str, Any]]:
    query = (
        sa.select(harvester_command_locks)
        .where(harvester_command_locks.c.harvester_ID == harvester_id)
        .order_by(
            harvester_command_locks.c.command,
            harvester_command_locks.c.computingSite,
            harvester_command_locks.c.resourceType,
        )
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def add_metrics(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Store metrics rows; a row with the key of a stored one (same instance, host and creation
    time: the same report sent again) replaces its text."""
    if not rows:
        return
    statement = _insert(conn, harvester_metrics)
    statement = statement.on_conflict_do_update(
        index_elements=["harvester_ID", "harvester_host", "creation_time"],
        set_={"metrics": statement.excluded.metrics},
    )
    await conn.execute(statement, list(rows))


async def metrics_of(conn: AsyncConnection, harvester_id: str) -> list[dict[str, Any]]:
    query = (
        sa.select(harvester_metrics)
        .where(harvester_metrics.c.harvester_ID == harvester_id)
        .order_by(harvester_metrics.c.creation_time, harvester_metrics.c.harvester_host)
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


_DIALOG_VALUES = ("moduleName", "identifier", "creationTime", "messageLevel", "diagMessage")


async def put_dialogs(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Store dialogs, each replacing the one with the same (harvester_id, diagID)."""
    if not rows:
        return
    statement = _insert(conn, harvester_dialogs)
    statement = statement.on_conflict_do_update(
        index_elements=["harvester_id", "diagID"],
        set_={name: statement.excluded[name] for name in _DIALOG_VALUES},
    )
    await conn.execute(statement, list(rows))


async def dialogs_of(conn: AsyncConnection, harvester_id: str) -> list[dict[str, Any]]:
    query = (
        sa.select(harvester_dialogs)
        .where(harvester_dialogs.c.harvester_id == harvester_id)
        .order_by(harvester_dialogs.c.diagID)
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def replace_worker_stats(
    conn: AsyncConnection, harvester_id: str, site: str, rows: Sequence[dict[str, Any]]
) -> None:
    """Replace every statistics row of (instance, queue) by ``rows``."""
    await conn.execute(
        sa.delete(harvester_worker_stats).where(
            harvester_worker_stats.c.harvester_ID == harvester_id,
            harvester_worker_stats.c.computingSite == site,
        )
    )
    if rows:
        await conn.execute(sa.insert(harvester_worker_stats), list(rows))


async def worker_stats_since(conn: AsyncConnection, since: datetime) -> list[dict[str, Any]]:
    """Statistics rows reported after ``since``, in a stable order."""
    c = harvester_worker_stats.c
    query = (
        sa.select(c.computingSite, c.harvester_ID, c.jobType, c.resourceType, c.status, c.n_workers)
        .where(c.lastUpdate > since)
        .order_by(c.computingSite, c.harvester_ID, c.jobType, c.resourceType, c.status)
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]
