"""`bamboo share load` and `bamboo share list` on both databases."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from bamboo.cli.main import app
from bamboo.db.engine import Database
from bamboo.db.schema import jobs
from bamboo.logic import shares

runner = CliRunner()

TREE: dict[str, Any] = {
    "default": "Analysis",
    "shares": [
        {
            "name": "Production",
            "value": 75,
            "children": [
                {"name": "MC", "value": 60, "prodsourcelabel": "managed$"},
                {"name": "Reprocessing", "value": 40, "campaign": "repro", "queue_id": 3},
            ],
        },
        {"name": "Analysis", "value": 25, "prodsourcelabel": "user", "throttled": True},
    ],
}


@pytest.fixture
def cli(db: Database, database_url: str, tmp_path: Path):
    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(
            app,
            [*args, "--home", str(tmp_path / "home"), "--database-url", database_url],
            env={"COLUMNS": "200"},
        )
        assert result.exit_code == code, result.output
        return result.output

    return run


def share_file(tmp_path: Path, document: Any, name: str = "shares.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return str(path)


def stored_tree(database_url: str) -> shares.ShareTree | None:
    async def read() -> shares.ShareTree | None:
        database = Database(database_url)
        try:
            async with database.transaction(write=False) as conn:
                return await shares.current_tree(conn)
        finally:
            await database.dispose()

    return asyncio.run(read())


def add_jobs(database_url: str, rows: list[tuple[str, str | None]]) -> None:
    async def insert() -> None:
        database = Database(database_url)
        try:
            async with database.transaction() as conn:
                await conn.execute(
                    sa.insert(jobs),
                    [
                        {"PandaID": index + 1, "jobStatus": status, "gshare": share}
                        for index, (status, share) in enumerate(rows)
                    ],
                )
        finally:
            await database.dispose()

    asyncio.run(insert())


def table_rows(output: str) -> dict[str, list[str]]:
    """Cells of each table row by share name (rich draws cells between │ characters)."""
    found = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if cells and cells[0] and cells[0] != "share":
            found[cells[0]] = cells[1:]
    return found


def test_load_then_list(cli, database_url: str, tmp_path: Path) -> None:
    assert "no share tree loaded" in cli("share", "list")
    out = cli("share", "load", share_file(tmp_path, TREE))
    assert "4 shares loaded (3 leaves, default Analysis)" in out
    assert stored_tree(database_url) == shares.parse_tree(TREE)
    add_jobs(
        database_url, [("running", "MC"), ("sent", "MC"), ("activated", "MC"), ("activated", "Analysis")]
    )
    listed = cli("share", "list")
    rows = table_rows(listed)
    assert rows["Production"] == ["75", "", "", "", "", ""]
    assert rows["MC"] == ["60", "45", "2", "1", "prodsourcelabel=managed$", ""]
    assert rows["Reprocessing"] == ["40", "30", "0", "0", "campaign=repro queue_id=3", ""]
    assert rows["Analysis"] == ["25", "25", "0", "1", "prodsourcelabel=user", "default,throttled"]
    # Children are indented under their parent, in file order.
    names = [line.split("│")[1] for line in listed.splitlines() if "│" in line]
    assert [name.rstrip() for name in names] == [" Production", "   MC", "   Reprocessing", " Analysis"]


def test_load_replaces_the_whole_tree(cli, database_url: str, tmp_path: Path) -> None:
    cli("share", "load", share_file(tmp_path, TREE))
    other = {"default": "Only", "shares": [{"name": "Only", "value": 100}]}
    assert "1 shares loaded (1 leaves, default Only)" in cli("share", "load", share_file(tmp_path, other))
    assert set(table_rows(cli("share", "list"))) == {"Only"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        (json.dumps({"shares": []}), "'shares' must be a non-empty list"),
        (json.dumps({**TREE, "default": "Production"}), "'default' must name a leaf share"),
        (
            json.dumps({"default": "a", "shares": [{"name": "a", "value": 1, "vo": "(x"}]}),
            "vo is not a valid RE2 regular expression",
        ),
    ],
)
def test_load_refuses_bad_files_and_keeps_the_tree(
    cli, database_url: str, tmp_path: Path, content: str, message: str
) -> None:
    cli("share", "load", share_file(tmp_path, TREE))
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert message in " ".join(cli("share", "load", str(bad), code=1).split())
    assert stored_tree(database_url) == shares.parse_tree(TREE)


def test_load_refuses_missing_and_oversized_files(cli, tmp_path: Path) -> None:
    assert "cannot read" in cli("share", "load", str(tmp_path / "missing.json"), code=1)
    big = tmp_path / "big.json"
    big.write_text(" " * (4 * 1024 * 1024 + 1))
    assert "is larger than" in cli("share", "load", str(big), code=1)
