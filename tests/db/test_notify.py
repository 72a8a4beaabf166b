"""Agent wake-ups across processes on PostgreSQL: NOTIFY reaches listeners on commit, never before.

(SQLite has no such channel; agents in other processes find work by their period there.)
"""

from __future__ import annotations

import asyncio

import pytest

from bamboo.db import migrate, notify
from bamboo.db.engine import Database


async def test_announcements_arrive_after_commit_only(postgres_url: str) -> None:
    db = Database(postgres_url)
    await migrate.upgrade(db)
    heard: list[str] = []
    arrived = asyncio.Event()

    def on_wake(agent: str) -> None:
        heard.append(agent)
        arrived.set()

    listener = asyncio.create_task(notify.listen(postgres_url, on_wake))
    try:
        await asyncio.sleep(0.5)
        with pytest.raises(RuntimeError):
            async with db.transaction() as conn:
                await notify.announce(conn, "never")
                raise RuntimeError("rolled back")
        async with db.transaction() as conn:
            await notify.announce(conn, "refiner")
        await asyncio.wait_for(arrived.wait(), timeout=10)
        assert heard == ["refiner"]
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await db.dispose()
