"""The admin commands on both databases (queue catalog, ban list, schema)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bamboo.cli.main import app
from bamboo.db.engine import Database

runner = CliRunner()


@pytest.fixture
def cli(db: Database, database_url: str, tmp_path: Path) -> Iterator:
    """Run a bamboo command on the test database (emptied after the test by the db fixture)."""

    def run(*args: str, ok: bool = True) -> str:
        result = runner.invoke(app, [*args, "--home", str(tmp_path / "home"), "--database-url", database_url])
        assert (result.exit_code == 0) is ok, result.output
        return result.output

    yield run


def specs(cli) -> dict[str, dict]:
    return {spec["name"]: spec for spec in json.loads(cli("queue", "list", "--json"))}


def test_queue_add_set_list_remove(cli) -> None:
    assert "queue Q1 added" in cli(
        "queue", "add", "Q1", "--corecount", "8", "--maxrss", "16000", "--attr", "capability=ucore"
    )
    assert specs(cli)["Q1"] == {
        "name": "Q1",
        "status": "online",
        "type": "unified",
        "jobseed": "std",
        "corecount": 8,
        "maxrss": 16000,
        "capability": "ucore",
    }
    cli("queue", "set", "Q1", "--status", "brokeroff", "--attr", "capability=null", "--attr", "pledgedcpu=-1")
    assert specs(cli)["Q1"]["status"] == "brokeroff"
    assert "capability" not in specs(cli)["Q1"]
    assert specs(cli)["Q1"]["pledgedcpu"] == -1
    assert "Q1" in cli("queue", "list")
    cli("queue", "remove", "Q1")
    assert specs(cli) == {}
    assert "queue Q1 not found" in cli("queue", "remove", "Q1", ok=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("queue", "add", "Q2", "--status", "sleeping"), "'status' must be one of"),
        (("queue", "add", "bad name"), "queue name 'bad name' is invalid"),
        (("queue", "add", "Q2", "--corecount", "-5"), "'corecount' must be -1, 0 or positive"),
        (("queue", "add", "Q2", "--attr", 'maxtime="long"'), "'maxtime' must be an integer"),
        (("queue", "set", "NOPE", "--status", "offline"), "queue NOPE not found"),
        (("queue", "set", "NOPE"), "nothing to change"),
    ],
)
def test_queue_errors_name_the_problem(cli, args: tuple[str, ...], message: str) -> None:
    assert message in " ".join(cli(*args, ok=False).split())


def test_queue_load_formats(cli, tmp_path: Path) -> None:
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"A": {"type": "analysis"}, "B": {"panda_resource": "B", "corecount": 8}}))
    single = tmp_path / "one.json"
    single.write_text(json.dumps({"nickname": "C", "type": "production", "maxtime": 3600}))
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps([{"name": "D"}, {"name": "A", "type": "production"}]))
    assert "2 queues loaded (2 new, 0 replaced)" in cli("queue", "load", str(mapping))
    assert "1 queues loaded (1 new, 0 replaced)" in cli("queue", "load", str(single))
    assert "2 queues loaded (1 new, 1 replaced)" in cli("queue", "load", str(listing))
    loaded = specs(cli)
    assert sorted(loaded) == ["A", "B", "C", "D"]
    assert loaded["A"]["type"] == "production"
    assert loaded["C"]["maxtime"] == 3600


def test_queue_load_is_all_or_nothing(cli, tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps([{"name": "OK1"}, {"name": "BAD", "status": "weird"}]))
    assert "'status' must be one of" in cli("queue", "load", str(broken), ok=False)
    assert specs(cli) == {}
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{nope")
    assert "not valid JSON" in cli("queue", "load", str(garbage), ok=False)


def test_ban_and_unban(cli) -> None:
    assert "banned" in cli("user", "ban", "Jane Doe")
    assert "unbanned" in cli("user", "unban", "Jane Doe")
    assert "is not banned" in cli("user", "unban", "Jane Doe", ok=False)


def test_db_current(cli) -> None:
    assert "up to date" in cli("db", "current")
