"""Resource types (domain.md §6.3): classes of job slots by core count and memory per core."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import resource_types as resource_types_db


async def resource_type_list(conn: AsyncConnection) -> list[dict[str, Any]]:
    """metaconfig/get_resource_types rows, in matching order."""
    return [
        {
            "resource_name": row["name"],
            "mincore": row["mincore"],
            "maxcore": row["maxcore"],
            "minrampercore": row["minrampercore"],
            "maxrampercore": row["maxrampercore"],
        }
        for row in await resource_types_db.list_in_order(conn)
    ]
