"""Queries on the queue catalog."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.schema import queues

_STATUS_OF = sa.select(queues.c.status).where(queues.c.name == sa.bindparam("name"))


async def status_of(conn: AsyncConnection, name: str) -> str | None:
    """A queue's status (dispatch asks on every call, so the statement is built once)."""
    return (await conn.execute(_STATUS_OF, {"name": name})).scalar_one_or_none()


async def get(conn: AsyncConnection, name: str) -> dict[str, Any] | None:
    row = (await conn.execute(sa.select(queues).where(queues.c.name == name))).mappings().first()
    return dict(row) if row else None


async def list_all(conn: AsyncConnection, queue_type: str | None = None) -> list[dict[str, Any]]:
    query = sa.select(queues).order_by(queues.c.name)
    if queue_type is not None:
        query = query.where(queues.c.type == queue_type)
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def upsert(conn: AsyncConnection, spec: dict[str, Any], now: datetime) -> bool:
    """Insert or replace one queue. Returns True when it was new."""
    values = {
        "status": spec["status"],
        "type": spec["type"],
        "cloud": spec.get("cloud"),
        "site": spec.get("site"),
        "spec": spec,
        "updated_at": now,
    }
    updated = await conn.execute(sa.update(queues).where(queues.c.name == spec["name"]).values(**values))
    if updated.rowcount:
        return False
    await conn.execute(sa.insert(queues).values(name=spec["name"], created_at=now, **values))
    return True


async def delete(conn: AsyncConnection, name: str) -> bool:
    return bool((await conn.execute(sa.delete(queues).where(queues.c.name == name))).rowcount)
