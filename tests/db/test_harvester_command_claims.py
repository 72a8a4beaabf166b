"""Harvester commands are handed out once: concurrent claimers on both databases, and on PostgreSQL
a claim that skips the commands another open transaction holds instead of waiting or repeating."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import pytest

from bamboo.db import harvester_commands as commands_db
from bamboo.db.engine import Database

N_COMMANDS = 300


async def _queue(db: Database, clock, n: int) -> list[int]:
    async with db.transaction() as conn:
        return [
            await commands_db.insert_command(
                conn,
                "harv-c",
                "KILL_WORKERS",
                f'{{"n": {i}}}',
                clock.now() + timedelta(seconds=i),
                supersede=False,
            )
            for i in range(n)
        ]


async def test_concurrent_claimers_get_each_command_once(db: Database, clock) -> None:
    ids = await _queue(db, clock, N_COMMANDS)
    received: list[int] = []

    async def claimer(batch: int) -> None:
        while True:
            async with db.transaction() as conn:
                got = await commands_db.claim_new(conn, "harv-c", batch, clock.now())
            if not got:
                return
            received.extend(row["command_id"] for row in got)

    await asyncio.gather(*(claimer(1 + i % 7) for i in range(10)))
    assert [command for command, count in Counter(received).items() if count > 1] == []
    assert sorted(received) == ids


async def test_a_claim_skips_commands_another_transaction_holds(db: Database, clock) -> None:
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: there is no second open claim to skip")
    ids = await _queue(db, clock, 6)
    async with db.transaction() as first:
        held = [row["command_id"] for row in await commands_db.claim_new(first, "harv-c", 4, clock.now())]
        async with db.transaction() as second:
            other = [
                row["command_id"] for row in await commands_db.claim_new(second, "harv-c", 4, clock.now())
            ]
    assert held == ids[:4]
    assert other == ids[4:]
