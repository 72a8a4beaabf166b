"""`bamboo harvester list` and `bamboo harvester command`, and `bamboo queue set --harvester`, on both
databases."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from bamboo.cli.main import app
from bamboo.db import harvester_commands as commands_db
from bamboo.db.engine import Database
from bamboo.db.schema import harvester_instances, harvester_workers

runner = CliRunner()
SEEN = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def cli(db: Database, database_url: str, tmp_path: Path) -> Iterator:
    def run(*args: str, ok: bool = True) -> str:
        result = runner.invoke(
            app,
            [*args, "--home", str(tmp_path / "home"), "--database-url", database_url],
            env={"COLUMNS": "200"},
        )
        assert (result.exit_code == 0) is ok, result.output
        return result.output

    yield run


def in_own_loop(database_url: str, work) -> object:
    """Database work in a loop of its own (the CLI runs outside the test loop)."""

    async def run() -> object:
        database = Database(database_url)
        try:
            async with database.transaction() as conn:
                return await work(conn)
        finally:
            await database.dispose()

    return asyncio.run(run())


async def _instance_and_workers(conn) -> None:
    await conn.execute(
        sa.insert(harvester_instances).values(
            harvester_ID="harv-1", owner="robot", hostName="h1.example.org", sw_version="0.5", lastUpdate=SEEN
        )
    )
    for worker_id, status in enumerate(["running", "running", "idle"]):
        await conn.execute(
            sa.insert(harvester_workers).values(
                harvesterID="harv-1", workerID=worker_id, computingSite="PQ_X", status=status, lastUpdate=SEEN
            )
        )


def test_list_shows_instances_and_workers_by_status(cli, database_url: str) -> None:
    in_own_loop(database_url, _instance_and_workers)
    table = cli("harvester", "list")
    assert "harv-1" in table and "h1.example.org" in table and "2026-11-30 12:00:00" in table
    assert "PQ_X" in table and "idle=1, running=2" in table
    found = json.loads(cli("harvester", "list", "--json"))
    assert found["workers"] == [
        {"harvester_id": "harv-1", "queue": "PQ_X", "statuses": {"idle": 1, "running": 2}}
    ]


def test_kill_workers_goes_to_the_queue_harvester(cli, database_url: str) -> None:
    cli("queue", "add", "PQ_X")
    assert "Queue not served by any harvester ID" in cli(
        "harvester", "command", "PQ_X", "kill-workers", ok=False
    )
    cli("queue", "set", "PQ_X", "--harvester", "harv-9")
    assert "KILL_WORKERS queued for queue PQ_X" in cli(
        "harvester", "command", "PQ_X", "kill-workers", "--status", "idle", "--status", "submitted"
    )
    cli("harvester", "command", "PQ_X", "kill-workers", "--ce", "ce1", "--submission-host", "sh1")
    first, second = in_own_loop(database_url, commands_db.commands_of)
    assert (first["harvester_ID"], first["command"], json.loads(first["params"])) == (
        "harv-9",
        "KILL_WORKERS",
        {
            "status": ["idle", "submitted"],
            "computingSite": ["PQ_X"],
            "computingElement": "ALL",
            "submissionHost": [],
        },
    )
    assert json.loads(second["params"]) == {
        "status": ["submitted", "to_submit", "ready", "running", "idle", "pending"],
        "computingSite": ["PQ_X"],
        "computingElement": ["ce1"],
        "submissionHost": ["sh1"],
    }
    assert "unknown action 'reboot'" in cli("harvester", "command", "PQ_X", "reboot", ok=False)
    assert "Error retrieving queue configuration from DB" in cli(
        "harvester", "command", "NOPE", "kill-workers", ok=False
    )
    assert "unknown worker status 'dancing'" in cli(
        "harvester", "command", "PQ_X", "kill-workers", "--status", "dancing", ok=False
    )
