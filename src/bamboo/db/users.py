"""Queries on the users table."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.schema import users


async def names_with_status(conn: AsyncConnection, status: str) -> list[str]:
    result = await conn.execute(
        sa.select(users.c.name).where(users.c.status == status).order_by(users.c.name)
    )
    return list(result.scalars())


async def upsert_status(conn: AsyncConnection, name: str, status: str, now: datetime) -> None:
    updated = await conn.execute(
        sa.update(users).where(users.c.name == name).values(status=status, updated_at=now)
    )
    if updated.rowcount == 0:
        await conn.execute(sa.insert(users).values(name=name, status=status, created_at=now, updated_at=now))


async def gridpref(conn: AsyncConnection, name: str) -> str | None:
    result = await conn.execute(sa.select(users.c.gridpref).where(users.c.name == name))
    return result.scalar_one_or_none()


async def set_gridpref(conn: AsyncConnection, name: str, letters: str | None, now: datetime) -> None:
    """Set a user's allow-list letters, creating an active user row when the name is new."""
    updated = await conn.execute(
        sa.update(users).where(users.c.name == name).values(gridpref=letters, updated_at=now)
    )
    if updated.rowcount == 0:
        await conn.execute(
            sa.insert(users).values(
                name=name, status="active", gridpref=letters, created_at=now, updated_at=now
            )
        )
