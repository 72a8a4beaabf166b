"""`bamboo events TASK`: a task's ranges by status and the processed share, on both databases."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from bamboo.cli.main import app
from bamboo.db.engine import Database
from bamboo.db.schema import events
from tests.api.test_event_endpoints import T0, TASK, make_jobset

runner = CliRunner()


@pytest.fixture
def cli(db: Database, database_url: str, tmp_path: Path) -> Iterator:
    def run(*args: str) -> str:
        result = runner.invoke(
            app,
            [*args, "--home", str(tmp_path / "home"), "--database-url", database_url],
            env={"COLUMNS": "200"},
        )
        assert result.exit_code == 0, result.output
        return result.output

    yield run


async def _fill(database_url: str) -> None:
    database = Database(database_url)
    try:
        async with database.transaction() as conn:
            jobset = await make_jobset(conn, T0, n_files=2, events_per_file=8)  # 8 ranges
            first = jobset.files[0]
            await conn.execute(sa.update(events).where(events.c.fileID == first).values(status="done"))
            await conn.execute(
                sa.update(events)
                .where(events.c.fileID == jobset.files[1], events.c.job_processID == 0)
                .values(status="failed")
            )
    finally:
        await database.dispose()


def test_events_counts_ranges_by_status(cli, database_url: str) -> None:
    assert "has no event ranges" in cli("events", str(TASK))
    asyncio.run(_fill(database_url))
    assert json.loads(cli("events", str(TASK), "--json")) == {"done": 4, "failed": 1, "ready": 3}
    output = cli("events", str(TASK))
    lines = [line.split() for line in output.splitlines()]
    assert ["│", "ready", "│", "3", "│", "37.5", "%", "│"] in lines
    assert ["│", "done", "│", "4", "│", "50.0", "%", "│"] in lines
    assert "4/8" in output
