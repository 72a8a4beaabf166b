"""Transaction discipline of the engine on both backends."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa

from bamboo.db.engine import UNAVAILABLE_ERRORS, Database
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


async def test_a_session_postgresql_ends_is_unavailable_not_a_failed_statement(postgres_url: str) -> None:
    # Terminating our own session is what a fast shutdown does to every session (57P01, then the
    # connection is gone): the API must answer 503, so the error must be one of UNAVAILABLE_ERRORS.
    db = Database(postgres_url, pool_size=2)
    try:
        pid: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def sleep_on_the_victim() -> None:
            async with db.transaction() as conn:
                pid.set_result((await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one())
                await conn.execute(sa.text("SELECT pg_sleep(60)"))

        sleeper = asyncio.create_task(sleep_on_the_victim())
        victim = await pid
        sleeping = sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = :pid AND wait_event = 'PgSleep'"
        )
        for _ in range(200):
            # One transaction per look: pg_stat_activity is a snapshot for the whole transaction.
            async with db.transaction(write=False) as conn:
                if (await conn.execute(sleeping, {"pid": victim})).scalar_one():
                    break
            await asyncio.sleep(0.05)
        async with db.transaction() as conn:
            await conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": victim})
        with pytest.raises(UNAVAILABLE_ERRORS, match="terminating connection due to administrator command"):
            await sleeper
        async with db.transaction() as conn:
            assert (await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one() != victim
        # A statement that is wrong stays a plain database error (an HTTP 500), not a 503.
        with pytest.raises(sa.exc.DBAPIError) as raised:
            async with db.transaction() as conn:
                await conn.execute(sa.text("SELECT 1 / 0"))
        assert not isinstance(raised.value, UNAVAILABLE_ERRORS)
    finally:
        await db.dispose()
