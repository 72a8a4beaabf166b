"""Queries on the registry of uploaded cache files (the ``cache_files`` table)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.schema import cache_files


async def insert(conn: AsyncConnection, row: dict[str, Any]) -> bool:
    """Register a file; False when (host, file name) is registered already (nothing changed)."""
    try:
        # A savepoint keeps the request's transaction usable after the duplicate-key error.
        async with conn.begin_nested():
            await conn.execute(sa.insert(cache_files).values(**row))
    except IntegrityError:
        return False
    return True


async def replace(conn: AsyncConnection, row: dict[str, Any]) -> None:
    """Register a file, or update the row of (host, file name) to describe the new bytes."""
    if await insert(conn, row):
        return
    await conn.execute(
        sa.update(cache_files)
        .where(cache_files.c.host == row["host"], cache_files.c.file_name == row["file_name"])
        .values(**row)
    )


async def find_reusable(
    conn: AsyncConnection, *, user_name: str, file_size: int, checksum: str, since: datetime
) -> list[tuple[str, str]]:
    """(host, file name) of the user's files of that size and checksum registered since ``since``,
    newest first."""
    rows = await conn.execute(
        sa.select(cache_files.c.host, cache_files.c.file_name)
        .where(
            cache_files.c.user_name == user_name,
            cache_files.c.file_size == file_size,
            cache_files.c.checksum == checksum,
            cache_files.c.creation_time >= since,
        )
        .order_by(cache_files.c.creation_time.desc(), cache_files.c.file_name)
        .limit(20)
    )
    return [(row.host, row.file_name) for row in rows]


async def used_bytes(conn: AsyncConnection, user_name: str, *, excluding: str | None = None) -> int:
    """The sum of the sizes of the user's registered files (minus the one named ``excluding``)."""
    query = sa.select(sa.func.coalesce(sa.func.sum(cache_files.c.file_size), 0)).where(
        cache_files.c.user_name == user_name
    )
    if excluding is not None:
        query = query.where(cache_files.c.file_name != excluding)
    return int((await conn.execute(query)).scalar_one())


async def owner_of(conn: AsyncConnection, file_name: str) -> list[str]:
    """The users who registered a file of that name (on any host)."""
    rows = await conn.execute(
        sa.select(cache_files.c.user_name).where(cache_files.c.file_name == file_name).distinct()
    )
    return [row.user_name for row in rows]


async def delete_names(
    conn: AsyncConnection, file_names: Sequence[str], *, user_name: str | None = None
) -> int:
    """Drop the rows of these file names (only the user's when ``user_name`` is given)."""
    if not file_names:
        return 0
    query = sa.delete(cache_files).where(cache_files.c.file_name.in_(list(file_names)))
    if user_name is not None:
        query = query.where(cache_files.c.user_name == user_name)
    result = await conn.execute(query)
    return result.rowcount or 0


async def registered_before(conn: AsyncConnection, moment: datetime, limit: int) -> list[str]:
    """Names of files registered before ``moment``, oldest first."""
    rows = await conn.execute(
        sa.select(cache_files.c.file_name)
        .where(cache_files.c.creation_time < moment)
        .order_by(cache_files.c.creation_time, cache_files.c.file_name)
        .limit(limit)
    )
    return [row.file_name for row in rows]
