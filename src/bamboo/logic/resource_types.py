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


def _within(value: float, low: int | None, high: int | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


# Task memory is compensated by this factor before matching (domain.md §6.3): a job's minRamCount
# already carries it, so a task and its jobs land in the same class.
TASK_RAM_FACTOR = 0.9


def effective_cores(core_count: int | None) -> int:
    """Cores a resource type is matched with: None counts as 1, 0 ("any") as a full node of 8."""
    if core_count is None:
        return 1
    return 8 if core_count == 0 else core_count


def _first_match(rows: list[dict[str, Any]], cores: int, ram_per_core: float) -> str:
    for row in rows:
        if _within(cores, row["mincore"], row["maxcore"]) and _within(
            ram_per_core, row["minrampercore"], row["maxrampercore"]
        ):
            return row["resource_name"]
    return UNDEFINED


def match_job(rows: list[dict[str, Any]], core_count: int | None, min_ram_count: int | None) -> str:
    """The resource type of a job (domain.md §6.3): the first row, in table order, whose core and
    memory-per-core bounds contain the job; ``Undefined`` when none does.

    Args:
        rows: resource type rows as :func:`resource_type_list` returns them.
        core_count: the job's cores (None counts as 1, 0 as 8: "any" is treated as a full node).
        min_ram_count: the job's memory in MB.
    """
    cores = effective_cores(core_count)
    return _first_match(rows, cores, round((min_ram_count or 0) / cores))


def match_task(
    rows: list[dict[str, Any]],
    core_count: int | None,
    ram_count: int | None,
    base_ram_count: int | None,
    *,
    ram_per_core: bool,
) -> str:
    """The resource type of a task (domain.md §6.3): its memory per core, with the base memory
    spread over the cores, times :data:`TASK_RAM_FACTOR`, matched as for a job.

    Args:
        ram_per_core: whether ``ram_count`` is per core (``MBPerCore`` units) rather than per job.
    """
    cores = effective_cores(core_count)
    ram, base = ram_count or 0, base_ram_count or 0
    total = ram * cores + base if ram_per_core else ram + base
    return _first_match(rows, cores, total / cores * TASK_RAM_FACTOR)
