"""Queries of the retry rules (logic/retry_rules.py)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.rows import skips_locked
from bamboo.db.schema import tasks


async def lock_task_if_free(conn: AsyncConnection, task_id: int) -> dict[str, Any] | None:
    """The task row, locked for this transaction, or None when it does not exist or another
    transaction holds it.

    The finaliser calls this after it has already updated dataset counters of the batch, while
    the generator locks a task before its datasets: waiting here could close a deadlock cycle, so
    a busy task is skipped (PostgreSQL ``SKIP LOCKED``). SQLite has one writer at a time and
    nothing to skip.
    """
    query = sa.select(tasks).where(tasks.c.jediTaskID == task_id)
    if skips_locked(conn):
        query = query.with_for_update(skip_locked=True)
    row = (await conn.execute(query)).mappings().first()
    return dict(row) if row else None
