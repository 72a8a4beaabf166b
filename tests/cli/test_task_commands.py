"""`bamboo data register`, `bamboo task submit/show/watch` on both databases."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bamboo.agents.runner import AgentContext, AgentRunner
from bamboo.cli.main import app
from bamboo.db.engine import Database
from bamboo.logic.catalog import LocalCatalog
from bamboo.logic.clock import SystemClock

runner = CliRunner()


@pytest.fixture
def cli(db: Database, database_url: str, tmp_path: Path):
    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, [*args, "--home", str(tmp_path / "home"), "--database-url", database_url])
        assert result.exit_code == code, result.output
        return result.output

    return run


def task_file(tmp_path: Path, dataset: str) -> Path:
    path = tmp_path / "task.json"
    path.write_text(
        json.dumps(
            {
                "taskName": "cli.task.v1",
                "vo": "bamboo",
                "prodSourceLabel": "managed",
                "taskType": "prod",
                "transPath": "run.sh",
                "nFilesPerJob": 2,
                "jobParameters": [
                    {"type": "template", "param_type": "input", "value": "-i ${IN}", "dataset": dataset}
                ],
                "log": {
                    "type": "template",
                    "param_type": "log",
                    "dataset": "cli.task.v1.log",
                    "value": "cli.log.${SN}.tgz",
                },
            }
        )
    )
    return path


def drain(database_url: str) -> None:
    """Run the agents until idle, in a loop of their own (the CLI runs outside the test loop)."""

    async def run() -> None:
        database = Database(database_url)
        try:
            await AgentRunner(AgentContext(database, SystemClock(), LocalCatalog())).drain()
        finally:
            await database.dispose()

    asyncio.run(run())


def test_data_register_and_task_lifecycle(cli, database_url: str, tmp_path: Path) -> None:
    out = cli(
        "data",
        "register",
        "cli.input.v1",
        "--file",
        "a.root:100:10",
        "--file",
        "b.root:200",
        "--file",
        "c.root",
    )
    assert "3 files added to cli.input.v1 (0 already there)" in out
    assert "0 files added" in cli("data", "register", "cli.input.v1", "--file", "a.root")
    assert "size and events must be integers" in cli("data", "register", "x", "--file", "a:big", code=1)
    submitted = cli("task", "submit", str(task_file(tmp_path, "cli.input.v1")), "--user", "Operator")
    task_id = int(re.search(r"jediTaskID=(\d+)", submitted).group(1))
    drain(database_url)
    shown = cli("task", "show", str(task_id))
    assert "pending" in shown and "no queue" in shown
    assert "Operator" in shown


def test_watch_ends_with_the_final_status(cli, database_url: str, tmp_path: Path) -> None:
    submitted = cli("task", "submit", str(task_file(tmp_path, "no.such.dataset")))
    task_id = int(re.search(r"jediTaskID=(\d+)", submitted).group(1))
    drain(database_url)
    watched = cli("task", "watch", str(task_id), "--interval", "0.1", code=1)
    assert f"task {task_id} broken" in watched
    assert "not known to the data catalog" in cli("task", "show", str(task_id))
    assert "task 1 not found" in cli("task", "show", "1", code=1)


def test_task_commands_act_through_the_agents(cli, database_url: str, tmp_path: Path) -> None:
    cli("data", "register", "cli.input.v2", "--file", "a.root")
    # No queue exists, so the task waits in pending, where every command applies.
    submitted = cli("task", "submit", str(task_file(tmp_path, "cli.input.v2")), "--user", "Operator")
    drain(database_url)
    task_id = int(re.search(r"jediTaskID=(\d+)", submitted).group(1))
    assert "registered" in cli("task", "pause", str(task_id))
    drain(database_url)
    assert str(task_id) in cli("task", "list", "--status", "paused", "--user", "Operator")
    assert str(task_id) not in cli("task", "list", "--status", "running")
    assert "1 tasks changed" in cli("task", "priority", str(task_id), "777")
    assert "777" in cli("task", "list", "--user", "Operator")
    assert "Task not found" in cli("task", "priority", "1", "5", code=1)
    assert "registered" in cli("task", "resume", str(task_id))
    drain(database_url)
    assert f"command=kill is registered for task ID {task_id}" in cli("task", "kill", str(task_id))
    drain(database_url)
    assert "aborted" in cli("task", "show", str(task_id))
    rejected = cli("task", "finish", str(task_id), "--soft", code=1)
    assert "the finish command is not accepted" in " ".join(rejected.split())
    assert "the retry command is not accepted" in " ".join(cli("task", "retry", str(task_id), code=1).split())
    assert "jediTaskID=1 not found" in cli("task", "reassign", "1", "--site", "X", code=1)
