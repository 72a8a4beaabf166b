"""Queries of the data carousel: staging requests and the tasks related to them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.rows import skips_locked
from bamboo.db.schema import data_carousel_relations, data_carousel_requests, tasks

requests = data_carousel_requests
relations = data_carousel_relations


async def insert_request(conn: AsyncConnection, row: dict[str, Any]) -> int:
    result = await conn.execute(sa.insert(requests).values(**row).returning(requests.c.request_id))
    return int(result.scalar_one())


async def get(conn: AsyncConnection, request_id: int, *, lock: bool = False) -> dict[str, Any] | None:
    query = sa.select(requests).where(requests.c.request_id == request_id)
    if lock and conn.dialect.name != "sqlite":
        query = query.with_for_update()
    found = (await conn.execute(query)).mappings().first()
    return dict(found) if found else None


async def latest_of_dataset(
    conn: AsyncConnection, dataset: str, statuses: Sequence[str] | None = None
) -> dict[str, Any] | None:
    """The dataset's newest request (in ``statuses`` when given)."""
    query = sa.select(requests).where(requests.c.dataset == dataset)
    if statuses is not None:
        query = query.where(requests.c.status.in_(list(statuses)))
    found = (await conn.execute(query.order_by(requests.c.request_id.desc()).limit(1))).mappings().first()
    return dict(found) if found else None


async def update(conn: AsyncConnection, request_id: int, **values: Any) -> None:
    await conn.execute(sa.update(requests).where(requests.c.request_id == request_id).values(**values))


async def claim(conn: AsyncConnection, status: str, limit: int) -> list[dict[str, Any]]:
    """Requests in ``status``, oldest first, locked (skipping rows another agent holds)."""
    query = (
        sa.select(requests).where(requests.c.status == status).order_by(requests.c.request_id).limit(limit)
    )
    if skips_locked(conn):
        query = query.with_for_update(skip_locked=True)
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def staging_per_tape(conn: AsyncConnection) -> dict[str | None, int]:
    query = (
        sa.select(requests.c.source_tape, sa.func.count())
        .where(requests.c.status == "staging")
        .group_by(requests.c.source_tape)
    )
    return {tape: count for tape, count in await conn.execute(query)}


async def relate(conn: AsyncConnection, request_id: int, task_id: int) -> None:
    insert = sqlite_insert if conn.dialect.name == "sqlite" else postgresql_insert
    await conn.execute(
        insert(relations).values(request_id=request_id, task_id=task_id).on_conflict_do_nothing()
    )


async def move_relations(conn: AsyncConnection, old_request_id: int, new_request_id: int) -> int:
    """Relate the old request's tasks to the new one; returns how many tasks."""
    task_ids = await related_task_ids(conn, old_request_id)
    for task_id in task_ids:
        await relate(conn, new_request_id, task_id)
    return len(task_ids)


async def related_task_ids(conn: AsyncConnection, request_id: int) -> list[int]:
    query = (
        sa.select(relations.c.task_id)
        .where(relations.c.request_id == request_id)
        .order_by(relations.c.task_id)
    )
    return list((await conn.execute(query)).scalars())


async def related_tasks(
    conn: AsyncConnection, request_id: int, statuses: Sequence[str]
) -> list[dict[str, Any]]:
    """The request's tasks in ``statuses``, locked, in id order."""
    query = (
        sa.select(tasks)
        .join(relations, relations.c.task_id == tasks.c.jediTaskID)
        .where(relations.c.request_id == request_id, tasks.c.status.in_(list(statuses)))
        .order_by(tasks.c.jediTaskID)
    )
    if conn.dialect.name != "sqlite":
        query = query.with_for_update(of=tasks)
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def count_related(conn: AsyncConnection, request_id: int, excluded_statuses: Sequence[str]) -> int:
    """How many of the request's tasks are not in ``excluded_statuses``."""
    query = (
        sa.select(sa.func.count())
        .select_from(relations.join(tasks, relations.c.task_id == tasks.c.jediTaskID))
        .where(relations.c.request_id == request_id, tasks.c.status.not_in(list(excluded_statuses)))
    )
    return (await conn.execute(query)).scalar_one()


async def request_of_task(conn: AsyncConnection, task_id: int, dataset: str) -> dict[str, Any] | None:
    """The newest request of ``dataset`` the task is related to."""
    query = (
        sa.select(requests)
        .join(relations, relations.c.request_id == requests.c.request_id)
        .where(relations.c.task_id == task_id, requests.c.dataset == dataset)
        .order_by(requests.c.request_id.desc())
        .limit(1)
    )
    found = (await conn.execute(query)).mappings().first()
    return dict(found) if found else None
