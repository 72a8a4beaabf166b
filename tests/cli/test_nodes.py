"""`bamboo node list`: the worker-node catalog as pilots filled it, on both databases."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bamboo.cli.main import app
from bamboo.db.engine import Database
from bamboo.logic import worker_nodes
from tests.conftest import FixedClock

runner = CliRunner()
SEEN = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def cli(db: Database, database_url: str, tmp_path: Path) -> Iterator:
    def run(*args: str, ok: bool = True) -> str:
        result = runner.invoke(
            app,
            [*args, "--home", str(tmp_path / "home"), "--database-url", database_url],
            env={"COLUMNS": "200"},  # wide enough that rich does not wrap the table's cells
        )
        assert (result.exit_code == 0) is ok, result.output
        return result.output

    yield run


def report(database_url: str) -> None:
    """Two nodes and a GPU as pilots report them, in a loop of their own (the CLI runs outside
    the test loop)."""
    asyncio.run(_report(database_url))


async def _report(database_url: str) -> None:
    clock = FixedClock(SEEN)
    node = worker_nodes.NodeReport(
        site="CERN",
        host_name="slot2@wn042.cern.ch",
        cpu_model="AMD EPYC 7763 64-Core Processor",
        panda_queue="CERN_PQ",
        n_logical_cpus=128,
        total_memory=512000,
        total_local_disk=3500,
    )
    gpu = worker_nodes.GpuReport(
        site="CERN", host_name="wn042.cern.ch", vendor="NVIDIA", model="A100", count=4
    )
    other = worker_nodes.NodeReport(site="DESY", host_name="wn1.desy.de", cpu_model="Intel Xeon")
    database = Database(database_url)
    try:
        async with database.transaction() as conn:
            await worker_nodes.report_node(conn, clock, node)
            await worker_nodes.report_gpu(conn, clock, gpu)
            await worker_nodes.report_node(conn, clock, other)
    finally:
        await database.dispose()


def test_node_list(cli, database_url: str) -> None:
    assert "wn042" not in cli("node", "list")
    report(database_url)
    table = cli("node", "list", "--site", "CERN")
    assert "wn042.cern.ch" in table and "AMD EPYC 7763" in table and "4x NVIDIA A100" in table
    assert "CERN_PQ" in table and "2026-11-30 12:00:00" in table and "wn1.desy.de" not in table
    (node,) = json.loads(cli("node", "list", "--site", "CERN", "--json"))
    assert (node["host_name"], node["cpu_model_normalized"], node["queues"]) == (
        "wn042.cern.ch",
        "AMD EPYC 7763",
        ["CERN_PQ"],
    )
    assert [(gpu["model"], gpu["count"]) for gpu in node["gpus"]] == [("A100", 4)]
    assert len(json.loads(cli("node", "list", "--json"))) == 2
    assert "Invalid value for '--limit'" in cli("node", "list", "--limit", "0", ok=False)
