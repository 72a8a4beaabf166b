"""`bamboo data upload` and `bamboo data get`: real files in and out of the local storage, with the
catalog's size, Adler-32 and GUID, on both databases."""

from __future__ import annotations

import asyncio
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bamboo.cli.main import app
from bamboo.db.engine import Database
from bamboo.logic.catalog import CatalogFile, LocalCatalog

runner = CliRunner()
DATASET = "user.jdoe.files.v1"


@pytest.fixture
def cli(db: Database, database_url: str, tmp_path: Path) -> Iterator:
    def run(*args: str, ok: bool = True) -> str:
        result = runner.invoke(app, [*args, "--home", str(tmp_path / "home"), "--database-url", database_url])
        assert (result.exit_code == 0) is ok, result.output
        # Rich wraps long lines at the terminal width.
        return " ".join(result.output.split())

    yield run


def listed(database_url: str, dataset: str = DATASET) -> list[CatalogFile]:
    async def read() -> list[CatalogFile]:
        db = Database(database_url)
        try:
            async with db.transaction(write=False) as conn:
                return await LocalCatalog().list_files(conn, dataset) or []
        finally:
            await db.dispose()

    return asyncio.run(read())


def sources(tmp_path: Path, **contents: bytes) -> list[str]:
    directory = tmp_path / "sources"
    directory.mkdir(exist_ok=True)
    for name, data in contents.items():
        (directory / name).write_bytes(data)
    return [str(directory / name) for name in contents]


def test_uploaded_files_are_stored_by_scope_and_registered_with_real_checksums(
    cli, database_url: str, tmp_path: Path
) -> None:
    files = sources(tmp_path, **{"a.txt": b"alpha\n", "b.txt": b"beta" * 1000})
    assert f"2 files uploaded to {DATASET} (0 already there)" in cli("data", "upload", DATASET, *files)
    a, b = listed(database_url)
    checksum = zlib.adler32(b"alpha\n")
    assert (a.lfn, a.scope, a.fsize, a.checksum) == ("a.txt", "user.jdoe", 6, f"ad:{checksum:08x}")
    assert (b.lfn, b.fsize) == ("b.txt", 4000)
    assert uuid.UUID(a.guid) != uuid.UUID(b.guid)
    assert (tmp_path / "home" / "storage" / "user.jdoe" / "a.txt").read_bytes() == b"alpha\n"
    assert "0 files uploaded" in cli("data", "upload", DATASET, *files)
    assert listed(database_url) == [a, b]
    out = tmp_path / "out"
    assert f"2 of 2 files of {DATASET} copied to {out}" in cli("data", "get", DATASET, "--to", str(out))
    assert (out / "a.txt").read_bytes() == b"alpha\n" and (out / "b.txt").read_bytes() == b"beta" * 1000


def test_a_name_taken_by_other_content_is_refused(cli, tmp_path: Path) -> None:
    cli("data", "upload", DATASET, *sources(tmp_path, **{"a.txt": b"one"}))
    changed = sources(tmp_path, **{"a.txt": b"two"})
    assert f"{DATASET} already has a different a.txt" in cli("data", "upload", DATASET, *changed, ok=False)
    other = "user.jdoe.files.v2"
    assert "user.jdoe:a.txt is already stored with other content" in cli(
        "data", "upload", other, *changed, ok=False
    )
    missing = str(tmp_path / "nothing")
    assert "is not a readable file" in cli("data", "upload", other, missing, ok=False)


def test_get_names_files_missing_or_changed_in_storage(cli, tmp_path: Path) -> None:
    cli("data", "upload", DATASET, *sources(tmp_path, **{"a.txt": b"one", "b.txt": b"two"}))
    cli("data", "register", DATASET, "--file", "c.txt:3")
    (tmp_path / "home" / "storage" / "user.jdoe" / "b.txt").write_bytes(b"owt")
    output = cli("data", "get", DATASET, "--to", str(tmp_path / "out"), ok=False)
    assert f"1 of 3 files of {DATASET} copied" in output
    assert "b.txt: stored copy does not match the catalog checksum" in output
    assert "c.txt: not in the local storage" in output
    assert "dataset user.jdoe.none is not in the catalog" in cli("data", "get", "user.jdoe.none", ok=False)
