"""Queries on the machines table: one row per live Bamboo process and its heartbeat."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.schema import machines


async def register(
    conn: AsyncConnection,
    *,
    machine_name: str,
    service_name: str,
    host_name: str,
    pid: int,
    now: datetime,
) -> None:
    """Insert the process's row, or renew it when it is already there."""
    renewed = await beat(conn, machine_name, now)
    if not renewed:
        await conn.execute(
            sa.insert(machines).values(
                machine_name=machine_name,
                service_name=service_name,
                host_name=host_name,
                pid=pid,
                started_at=now,
                heartbeat_at=now,
            )
        )


async def beat(conn: AsyncConnection, machine_name: str, now: datetime) -> bool:
    """Renew the heartbeat; False when the row is gone (forgotten while the process was silent)."""
    result = await conn.execute(
        sa.update(machines).where(machines.c.machine_name == machine_name).values(heartbeat_at=now)
    )
    return result.rowcount == 1


async def delete(conn: AsyncConnection, machine_name: str) -> None:
    await conn.execute(sa.delete(machines).where(machines.c.machine_name == machine_name))


async def forget_silent(conn: AsyncConnection, since: datetime) -> int:
    """Delete the rows of processes with no heartbeat since ``since``."""
    result = await conn.execute(sa.delete(machines).where(machines.c.heartbeat_at < since))
    return result.rowcount


async def alive_names(conn: AsyncConnection, service_name: str, since: datetime) -> list[str]:
    """The machines of a service that beat since ``since``, by name."""
    query = (
        sa.select(machines.c.machine_name)
        .where(machines.c.service_name == service_name, machines.c.heartbeat_at >= since)
        .order_by(machines.c.machine_name)
    )
    return list((await conn.execute(query)).scalars())


def alive_clause(machine_name: sa.ColumnElement[str], since: datetime) -> sa.ColumnElement[bool]:
    """True where ``machine_name`` names a machine that beat since ``since``."""
    return sa.exists().where(machines.c.machine_name == machine_name, machines.c.heartbeat_at >= since)
