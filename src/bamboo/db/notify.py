"""Wake-up signals between processes on PostgreSQL (LISTEN/NOTIFY).

``NOTIFY`` is transactional: listeners hear it only when the transaction commits, so an agent is
never woken for work it cannot see yet. SQLite has no such channel; there agents in other processes
find work by their period.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

log = logging.getLogger(__name__)

CHANNEL = "bamboo_agents"
RECONNECT_SECONDS = 5.0


async def announce(conn: AsyncConnection, agent: str) -> None:
    """Tell agents in every process that ``agent`` has work once this transaction commits."""
    if conn.dialect.name == "postgresql":
        statement = sa.text("SELECT pg_notify(:channel, :agent)")
        await conn.execute(statement, {"channel": CHANNEL, "agent": agent})


async def listen(database_url: str, on_wake: Callable[[str], None]) -> None:
    """Call ``on_wake(agent)`` for every announcement until cancelled; reconnects after failures."""
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)

    def deliver(_connection: object, _pid: int, _channel: str, payload: str) -> None:
        on_wake(payload)

    while True:
        try:
            connection = await asyncpg.connect(dsn, timeout=10)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("cannot listen for agent wake-ups (%s); retrying in %.0f s", exc, RECONNECT_SECONDS)
            await asyncio.sleep(RECONNECT_SECONDS)
            continue
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _connection, event=lost: event.set())
        try:
            await connection.add_listener(CHANNEL, deliver)
            await lost.wait()
            log.warning("lost the agent wake-up connection; reconnecting")
        finally:
            await connection.close()
