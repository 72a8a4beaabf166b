"""Resource types (domain.md §6.3): classes of job slots by core count and memory per core."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import resource_types as resource_types_db

UNDEFINED = "Undefined"


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


def _within(value: int, low: int | None, high: int | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def match_job(rows: list[dict[str, Any]], core_count: int | None, min_ram_count: int | None) -> str:
    """The resource type of a job (domain.md §6.3): the first row, in table order, whose core and
    memory-per-core bounds contain the job; ``Undefined`` when none does.

    Args:
        rows: resource type rows as :func:`resource_type_list` returns them.
        core_count: the job's cores (None counts as 1, 0 as 8: "any" is treated as a full node).
        min_ram_count: the job's memory in MB.
    """
    cores = 1 if core_count is None else (8 if core_count == 0 else core_count)
    ram_per_core = round((min_ram_count or 0) / cores)
    for row in rows:
        if _within(cores, row["mincore"], row["maxcore"]) and _within(
            ram_per_core, row["minrampercore"], row["maxrampercore"]
        ):
            return row["resource_name"]
    return UNDEFINED
