"""Queries on workflows and the tasks their steps created."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.rows import skips_locked
from bamboo.db.schema import tasks, workflow_steps, workflows


async def insert(conn: AsyncConnection, values: dict[str, Any]) -> int:
    result = await conn.execute(sa.insert(workflows).values(**values).returning(workflows.c.workflow_id))
    return int(result.scalar_one())


async def get(conn: AsyncConnection, workflow_id: int) -> dict[str, Any] | None:
    query = sa.select(workflows).where(workflows.c.workflow_id == workflow_id)
    row = (await conn.execute(query)).mappings().first()
    return dict(row) if row else None


async def claim_actionable(
    conn: AsyncConnection, ended_statuses: Iterable[str], limit: int
) -> list[dict[str, Any]]:
    """Workflows the agent has something to do for, oldest first, locked for this transaction.

    That is every ``registered`` workflow, and every ``running`` one with a step whose task ended
    (a status in ``ended_statuses``) since the agent last looked. Rows another agent holds are
    skipped on PostgreSQL.
    """
    ended_step = (
        sa.select(workflow_steps.c.workflow_id)
        .join(tasks, tasks.c.jediTaskID == workflow_steps.c.jediTaskID)
        .where(
            workflow_steps.c.workflow_id == workflows.c.workflow_id,
            workflow_steps.c.task_ended.is_(False),
            tasks.c.status.in_(list(ended_statuses)),
        )
        .exists()
    )
    query = (
        sa.select(workflows)
        .where(
            sa.or_(
                workflows.c.status == "registered",
                sa.and_(workflows.c.status == "running", ended_step),
            )
        )
        .order_by(workflows.c.workflow_id)
        .limit(limit)
    )
    if skips_locked(conn):
        query = query.with_for_update(of=workflows, skip_locked=True)
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def update(conn: AsyncConnection, workflow_id: int, **values: Any) -> None:
    await conn.execute(sa.update(workflows).where(workflows.c.workflow_id == workflow_id).values(**values))


async def steps_with_task_status(conn: AsyncConnection, workflow_id: int) -> list[dict[str, Any]]:
    """The created steps of a workflow with their task's id and current status."""
    query = (
        sa.select(
            workflow_steps.c.step_name,
            workflow_steps.c.jediTaskID,
            workflow_steps.c.task_ended,
            tasks.c.status,
        )
        .join(tasks, tasks.c.jediTaskID == workflow_steps.c.jediTaskID, isouter=True)
        .where(workflow_steps.c.workflow_id == workflow_id)
        .order_by(workflow_steps.c.jediTaskID)
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def insert_step(
    conn: AsyncConnection, workflow_id: int, step_name: str, task_id: int, now: datetime
) -> None:
    await conn.execute(
        sa.insert(workflow_steps).values(
            workflow_id=workflow_id,
            step_name=step_name,
            jediTaskID=task_id,
            task_ended=False,
            creation_time=now,
        )
    )


async def mark_steps_ended(conn: AsyncConnection, workflow_id: int, step_names: Iterable[str]) -> None:
    names = list(step_names)
    if not names:
        return
    await conn.execute(
        sa.update(workflow_steps)
        .where(workflow_steps.c.workflow_id == workflow_id, workflow_steps.c.step_name.in_(names))
        .values(task_ended=True)
    )
