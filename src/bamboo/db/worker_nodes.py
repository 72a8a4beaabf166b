"""Queries on the worker-node catalog pilots report into (nodes, their queues, their GPUs)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.schema import worker_node_gpus, worker_node_queues, worker_nodes


def _insert(conn: AsyncConnection, table: sa.Table) -> Any:
    # INSERT ... ON CONFLICT has the same shape on both backends but lives in each dialect.
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


async def upsert_node(conn: AsyncConnection, row: dict[str, Any]) -> None:
    """Insert a node, or refresh only the ``last_seen`` of the one with the same key."""
    statement = _insert(conn, worker_nodes).values(**row)
    statement = statement.on_conflict_do_update(
        index_elements=["site", "host_name", "cpu_model"], set_={"last_seen": statement.excluded.last_seen}
    )
    await conn.execute(statement)


async def upsert_node_queue(
    conn: AsyncConnection, site: str, host_name: str, queue: str, now: datetime
) -> None:
    """Record (or refresh) that a node serves a queue."""
    row = {"site": site, "host_name": host_name, "panda_queue": queue, "last_seen": now}
    statement = _insert(conn, worker_node_queues).values(**row)
    statement = statement.on_conflict_do_update(
        index_elements=["site", "host_name", "panda_queue"], set_={"last_seen": now}
    )
    await conn.execute(statement)


_GPU_KEY = ("site", "host_name", "vendor", "model")
# What a report refreshes on a GPU already known (the rest describes the card and stays).
GPU_REFRESHED = ("count", "framework", "framework_version", "last_seen")


async def upsert_gpu(conn: AsyncConnection, row: dict[str, Any]) -> bool:
    """Insert a node's GPU, or refresh the known one; True when it was new."""
    statement = _insert(conn, worker_node_gpus).values(**row).on_conflict_do_nothing(index_elements=_GPU_KEY)
    inserted = (await conn.execute(statement.returning(worker_node_gpus.c.site))).first() is not None
    if not inserted:
        await conn.execute(
            sa.update(worker_node_gpus)
            .where(*(worker_node_gpus.c[key] == row[key] for key in _GPU_KEY))
            .values({key: row[key] for key in GPU_REFRESHED})
        )
    return inserted


async def list_nodes(conn: AsyncConnection, site: str | None, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` nodes (of one site, or all), most recently seen first."""
    query = sa.select(worker_nodes)
    if site is not None:
        query = query.where(worker_nodes.c.site == site)
    query = query.order_by(worker_nodes.c.last_seen.desc(), worker_nodes.c.site, worker_nodes.c.host_name)
    return [dict(row) for row in (await conn.execute(query.limit(limit))).mappings()]


async def queues_of(conn: AsyncConnection, hosts: list[tuple[str, str]]) -> dict[tuple[str, str], list[str]]:
    """The queues each (site, host) serves, by name."""
    found: dict[tuple[str, str], list[str]] = {host: [] for host in hosts}
    if not hosts:
        return found
    query = (
        sa.select(worker_node_queues.c.site, worker_node_queues.c.host_name, worker_node_queues.c.panda_queue)
        .where(sa.tuple_(worker_node_queues.c.site, worker_node_queues.c.host_name).in_(hosts))
        .order_by(worker_node_queues.c.panda_queue)
    )
    for site, host, queue in await conn.execute(query):
        found[(site, host)].append(queue)
    return found


async def gpus_of(
    conn: AsyncConnection, hosts: list[tuple[str, str]]
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The GPUs of each (site, host)."""
    found: dict[tuple[str, str], list[dict[str, Any]]] = {host: [] for host in hosts}
    if not hosts:
        return found
    query = (
        sa.select(worker_node_gpus)
        .where(sa.tuple_(worker_node_gpus.c.site, worker_node_gpus.c.host_name).in_(hosts))
        .order_by(worker_node_gpus.c.vendor, worker_node_gpus.c.model)
    )
    for row in (await conn.execute(query)).mappings():
        found[(row["site"], row["host_name"])].append(dict(row))
    return found
