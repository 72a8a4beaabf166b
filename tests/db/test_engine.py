"""Transaction discipline of the engine on both backends."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa

from bamboo.db.engine import Database
from bamboo.db.schema import users


async def test_commit_on_success_and_rollback_on_error(db: Database, clock) -> None:
    now = clock.now()
    async with db.transaction() as conn:
        await conn.execute(
            sa.insert(users).values(name="kept", status="active", created_at=now, updated_at=now)
        )
    with pytest.raises(RuntimeError):
        async with db.transaction() as conn:
            await conn.execute(
                sa.insert(users).values(name="lost", status="active", created_at=now, updated_at=now)
            )
            raise RuntimeError("boom")
    async with db.transaction(write=False) as conn:
        names = set(
            (await conn.execute(sa.select(users.c.name).where(users.c.name.in_(["kept", "lost"])))).scalars()
        )
    assert names == {"kept"}


async def test_timestamps_come_back_as_utc(db: Database, clock) -> None:
    now = clock.now()
    async with db.transaction() as conn:
        await conn.execute(sa.insert(users).values(name="t", status="active", created_at=now, updated_at=now))
    async with db.transaction(write=False) as conn:
        stored = (await conn.execute(sa.select(users.c.created_at))).scalar_one()
    assert stored == now and stored.utcoffset() is not None and stored.utcoffset().total_seconds() == 0


async def test_concurrent_writers_do_not_lose_updates(db: Database, clock) -> None:
    now = clock.now()
    async with db.transaction() as conn:
        await conn.execute(
            sa.insert(users).values(
                name="counter", email="0", status="active", created_at=now, updated_at=now
            )
        )

    async def increment() -> None:
        async with db.transaction() as conn:
            query = sa.select(users.c.email).where(users.c.name == "counter")
            if db.dialect == "postgresql":
                query = query.with_for_update()
            value = int((await conn.execute(query)).scalar_one())
            await conn.execute(sa.update(users).where(users.c.name == "counter").values(email=str(value + 1)))

    await asyncio.gather(*(increment() for _ in range(20)))
    async with db.transaction(write=False) as conn:
        final = (await conn.execute(sa.select(users.c.email).where(users.c.name == "counter"))).scalar_one()
    assert final == "20"


def test_unsupported_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported database"):
        Database("mysql+aiomysql://localhost/db")
