"""Queries on the async_process requests and their per-machine results.

Every change of a result row is a conditional UPDATE on the state it expects (a claim where the
request is unclaimed, a finish where the row is still running the same attempt), so processes that
race for the same row never both win, whatever the backend's locking.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.machines import alive_clause
from bamboo.db.schema import async_request_results as results
from bamboo.db.schema import async_requests as requests

PENDING = "pending"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
UNFINISHED = (PENDING, RUNNING)


async def insert_request(
    conn: AsyncConnection,
    *,
    request_id: str,
    kind: str,
    requester: str,
    access: str,
    parameters: dict[str, Any],
    service_name: str | None,
    machine_name: str | None,
    expected_machines: Sequence[str],
    now: datetime,
) -> None:
    """Insert a request and, for each expected machine, its pending result row."""
    await conn.execute(
        sa.insert(requests).values(
            request_id=request_id,
            kind=kind,
            requester=requester,
            access=access,
            parameters=parameters,
            service_name=service_name,
            machine_name=machine_name,
            expected_machines=list(expected_machines),
            claimed_by=None,
            attempts=0,
            created_at=now,
        )
    )
    if expected_machines:
        await conn.execute(
            sa.insert(results),
            [
                {
                    "request_id": request_id,
                    "machine_name": name,
                    "status": PENDING,
                    "truncated": False,
                    "attempts": 0,
                }
                for name in expected_machines
            ],
        )


async def get_request(conn: AsyncConnection, request_id: str) -> sa.RowMapping | None:
    query = sa.select(requests).where(requests.c.request_id == request_id)
    return (await conn.execute(query)).mappings().first()


async def results_of(conn: AsyncConnection, request_id: str) -> list[sa.RowMapping]:
    query = (
        sa.select(results)
        .where(results.c.request_id == request_id)
        .order_by(results.c.started_at.is_(None), results.c.started_at, results.c.machine_name)
    )
    return list((await conn.execute(query)).mappings())


async def lost_results(conn: AsyncConnection, alive_since: datetime, limit: int) -> list[sa.RowMapping]:
    """Unfinished result rows whose machine is not alive, with their request's kind and claimer."""
    query = (
        sa.select(
            results.c.request_id,
            results.c.machine_name,
            results.c.status,
            results.c.attempts,
            requests.c.kind,
            requests.c.claimed_by,
        )
        .join(requests, requests.c.request_id == results.c.request_id)
        .where(results.c.status.in_(UNFINISHED), ~alive_clause(results.c.machine_name, alive_since))
        .order_by(results.c.request_id, results.c.machine_name)
        .limit(limit)
    )
    return list((await conn.execute(query)).mappings())


async def fail_unfinished(
    conn: AsyncConnection, request_id: str, machine_name: str, error_msg: str, now: datetime
) -> bool:
    """Fail a result row that is still pending or running; False when it already ended."""
    result = await conn.execute(
        sa.update(results)
        .where(
            results.c.request_id == request_id,
            results.c.machine_name == machine_name,
            results.c.status.in_(UNFINISHED),
        )
        .values(status=FAILED, error_msg=error_msg, finished_at=now)
    )
    return result.rowcount == 1


async def release_claim(conn: AsyncConnection, request_id: str, machine_name: str) -> bool:
    """Let another machine claim a request ``machine_name`` held."""
    result = await conn.execute(
        sa.update(requests)
        .where(requests.c.request_id == request_id, requests.c.claimed_by == machine_name)
        .values(claimed_by=None)
    )
    return result.rowcount == 1


async def next_pending(conn: AsyncConnection, machine_name: str) -> str | None:
    """The oldest request with a pending result row for this machine."""
    query = (
        sa.select(results.c.request_id)
        .join(requests, requests.c.request_id == results.c.request_id)
        .where(results.c.machine_name == machine_name, results.c.status == PENDING)
        .order_by(requests.c.created_at, requests.c.request_id)
        .limit(1)
    )
    return (await conn.execute(query)).scalar()


async def start_pending(
    conn: AsyncConnection, request_id: str, machine_name: str, now: datetime
) -> int | None:
    """Move this machine's pending row to running; its attempt number, or None if it was not pending."""
    result = await conn.execute(
        sa.update(results)
        .where(
            results.c.request_id == request_id,
            results.c.machine_name == machine_name,
            results.c.status == PENDING,
        )
        .values(status=RUNNING, attempts=results.c.attempts + 1, started_at=now)
        .returning(results.c.attempts)
    )
    return result.scalar()


async def next_unclaimed(
    conn: AsyncConnection, kind: str, service_name: str, machine_name: str
) -> str | None:
    """The oldest unclaimed request of ``kind`` for ``service_name`` this machine has not run yet."""
    ran_here = sa.exists().where(
        results.c.request_id == requests.c.request_id, results.c.machine_name == machine_name
    )
    query = (
        sa.select(requests.c.request_id)
        .where(
            requests.c.kind == kind,
            requests.c.service_name == service_name,
            requests.c.claimed_by.is_(None),
            ~ran_here,
        )
        .order_by(requests.c.created_at, requests.c.request_id)
        .limit(1)
    )
    return (await conn.execute(query)).scalar()


async def claim(
    conn: AsyncConnection, request_id: str, machine_name: str, max_attempts: int, now: datetime
) -> int | None:
    """Claim an unclaimed request and open its running result row; the attempt number, or None when
    another machine claimed it first or no attempt is left."""
    result = await conn.execute(
        sa.update(requests)
        .where(
            requests.c.request_id == request_id,
            requests.c.claimed_by.is_(None),
            requests.c.attempts < max_attempts,
        )
        .values(claimed_by=machine_name, attempts=requests.c.attempts + 1)
        .returning(requests.c.attempts)
    )
    attempt = result.scalar()
    if attempt is None:
        return None
    await conn.execute(
        sa.insert(results).values(
            request_id=request_id,
            machine_name=machine_name,
            status=RUNNING,
            truncated=False,
            attempts=attempt,
            started_at=now,
        )
    )
    return attempt


async def finish(
    conn: AsyncConnection,
    request_id: str,
    machine_name: str,
    attempt: int,
    outcome: dict[str, Any],
    now: datetime,
) -> bool:
    """Record the outcome of a run, unless the row was failed meanwhile (its machine was taken for dead)."""
    result = await conn.execute(
        sa.update(results)
        .where(
            results.c.request_id == request_id,
            results.c.machine_name == machine_name,
            results.c.status == RUNNING,
            results.c.attempts == attempt,
        )
        .values(**outcome, finished_at=now)
    )
    return result.rowcount == 1


async def delete_submitted_before(conn: AsyncConnection, before: datetime) -> int:
    """Delete the requests submitted before ``before`` and their results."""
    old = sa.select(requests.c.request_id).where(requests.c.created_at < before).scalar_subquery()
    await conn.execute(sa.delete(results).where(results.c.request_id.in_(old)))
    deleted = await conn.execute(sa.delete(requests).where(requests.c.created_at < before))
    return deleted.rowcount
