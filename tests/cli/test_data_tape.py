"""`bamboo data tape`: a catalog dataset made tape-resident and back, on both databases."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bamboo.cli.main import app
from bamboo.db.engine import Database
from bamboo.logic.catalog import LocalCatalog

runner = CliRunner()
DATASET = "user.jdoe.tape.v1"


@pytest.fixture
def cli(db: Database, database_url: str, tmp_path: Path) -> Iterator:
    def run(*args: str, ok: bool = True) -> str:
        result = runner.invoke(app, [*args, "--home", str(tmp_path / "home"), "--database-url", database_url])
        assert (result.exit_code == 0) is ok, result.output
        return result.output

    yield run


def residency(database_url: str) -> tuple[str | None, list[bool]]:
    async def read() -> tuple[str | None, list[bool]]:
        db = Database(database_url)
        try:
            async with db.transaction(write=False) as conn:
                catalog = LocalCatalog()
                files = await catalog.list_files(conn, DATASET) or []
                return await catalog.tape_rse(conn, DATASET), [f.on_disk for f in files]
        finally:
            await db.dispose()

    return asyncio.run(read())


def test_tape_and_back_to_disk(cli, database_url: str) -> None:
    cli("data", "register", DATASET, "--file", "a.root:100", "--file", "b.root:200")
    assert residency(database_url) == (None, [True, True])
    assert f"{DATASET}: 2 files on tape at LOCAL_TAPE" in cli("data", "tape", DATASET)
    assert residency(database_url) == ("LOCAL_TAPE", [False, False])
    assert f"{DATASET}: 2 files on tape at CERN_TAPE" in cli("data", "tape", DATASET, "--rse", "CERN_TAPE")
    assert residency(database_url) == ("CERN_TAPE", [False, False])
    assert f"{DATASET}: 2 files on disk" in cli("data", "tape", DATASET, "--disk")
    assert residency(database_url) == (None, [True, True])


def test_errors_name_the_problem(cli) -> None:
    missing = cli("data", "tape", "user.nobody.none", ok=False)
    assert "dataset user.nobody.none is not in the catalog" in missing
    cli("data", "register", DATASET, "--file", "a.root")
    assert "invalid RSE name 'bad/rse'" in cli("data", "tape", DATASET, "--rse", "bad/rse", ok=False)
