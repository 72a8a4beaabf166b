"""Queries on the resource types table."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.schema import resource_types


async def list_in_order(conn: AsyncConnection) -> list[dict[str, Any]]:
    query = sa.select(resource_types).order_by(resource_types.c.position)
    return [dict(row) for row in (await conn.execute(query)).mappings()]
