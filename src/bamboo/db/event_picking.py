"""Queries of event picking: the request rows and the catalog lookups that resolve the picks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.rows import skips_locked
from bamboo.db.schema import catalog_datasets, catalog_files, event_picking_requests


async def insert_request(conn: AsyncConnection, values: dict[str, Any]) -> int:
    result = await conn.execute(
        sa.insert(event_picking_requests).values(**values).returning(event_picking_requests.c.request_id)
    )
    return int(result.scalar_one())


async def get_request(conn: AsyncConnection, request_id: int) -> dict[str, Any] | None:
    query = sa.select(event_picking_requests).where(event_picking_requests.c.request_id == request_id)
    row = (await conn.execute(query)).mappings().first()
    return dict(row) if row else None


async def claim_requests(conn: AsyncConnection, status: str, limit: int) -> list[dict[str, Any]]:
    """Requests in ``status``, oldest first, locked; rows another agent holds are skipped."""
    query = (
        sa.select(event_picking_requests)
        .where(event_picking_requests.c.status == status)
        .order_by(event_picking_requests.c.request_id)
        .limit(limit)
    )
    if skips_locked(conn):
        query = query.with_for_update(skip_locked=True)
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def update_request(conn: AsyncConnection, request_id: int, **values: Any) -> None:
    await conn.execute(
        sa.update(event_picking_requests)
        .where(event_picking_requests.c.request_id == request_id)
        .values(**values)
    )


def _escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def datasets_with_field(conn: AsyncConnection, field: str) -> list[str]:
    """Catalog datasets with ``.<field>.`` in their name (candidates of a run number)."""
    query = (
        sa.select(catalog_datasets.c.name)
        .where(catalog_datasets.c.name.like(f"%.{_escaped(field)}.%", escape="\\"))
        .order_by(catalog_datasets.c.name)
    )
    return list((await conn.execute(query)).scalars())


async def existing_datasets(conn: AsyncConnection, names: Sequence[str]) -> list[str]:
    if not names:
        return []
    query = sa.select(catalog_datasets.c.name).where(catalog_datasets.c.name.in_(list(names)))
    return sorted((await conn.execute(query)).scalars())


async def files_by_guid(conn: AsyncConnection, guids: Sequence[str]) -> list[dict[str, Any]]:
    """Catalog files with the given GUIDs, in every dataset holding them."""
    if not guids:
        return []
    query = (
        sa.select(catalog_files)
        .where(catalog_files.c.guid.in_(list(guids)))
        .order_by(catalog_files.c.dataset, catalog_files.c.position)
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]
