"""`bamboo data`: the local dataset catalog (inputs for tasks)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Annotated

import typer

from bamboo.cli.options import DatabaseOption, HomeOption, console, fail, settings_for, with_database
from bamboo.db.engine import Database
from bamboo.logic.catalog import CatalogFile, LocalCatalog, scope_of
from bamboo.logic.clock import SystemClock
from bamboo.logic.errors import BambooError
from bamboo.storage import StorageError
from bamboo.storage.datasets import DataStorage, adler32_of

app = typer.Typer(help="The dataset catalog and the local storage of its files.", no_args_is_help=True)


def parse_file(spec: str) -> CatalogFile:
    """``LFN[:SIZE[:EVENTS]]`` (size in bytes)."""
    lfn, _, rest = spec.partition(":")
    size_text, _, events_text = rest.partition(":")
    try:
        size = int(size_text) if size_text else None
        events = int(events_text) if events_text else None
    except ValueError as exc:
        raise fail(f"--file {spec!r}: size and events must be integers (LFN[:SIZE[:EVENTS]])") from exc
    return CatalogFile(lfn=lfn, fsize=size, n_events=events)


@app.command()
def register(
    dataset: Annotated[str, typer.Argument(help="Dataset name, e.g. user.jdoe.input.v1 (or scope:name).")],
    file: Annotated[list[str], typer.Option("--file", help="LFN[:SIZE[:EVENTS]] (repeatable).")],
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Create a dataset (if needed) and add files to it."""
    files = [parse_file(spec) for spec in file]

    async def work(db: Database) -> int:
        async with db.transaction() as conn:
            return await LocalCatalog().register_files(conn, SystemClock(), dataset, files)

    try:
        added = with_database(settings_for(home, database_url), work)
    except BambooError as exc:
        raise fail(exc.message) from exc
    console.print(f"{added} files added to {dataset} ({len(files) - added} already there)")


@app.command()
def tape(
    dataset: Annotated[str, typer.Argument(help="A dataset of the catalog.")],
    rse: Annotated[str, typer.Option("--rse", help="The tape RSE holding it.")] = "LOCAL_TAPE",
    disk: Annotated[bool, typer.Option("--disk", help="Put the dataset back on disk instead.")] = False,
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Make a dataset tape-resident (its files leave disk; tasks reading it wait for the data
    carousel to stage them), or with --disk put every file back on disk."""

    async def work(db: Database) -> int:
        async with db.transaction() as conn:
            return await LocalCatalog().set_residency(conn, dataset, None if disk else rse)

    try:
        count = with_database(settings_for(home, database_url), work)
    except BambooError as exc:
        raise fail(exc.message) from exc
    where = "on disk" if disk else f"on tape at {rse}"
    console.print(f"{dataset}: {count} files {where}")


def _adler32(checksum: str | None) -> str | None:
    return checksum[3:] if checksum and checksum.startswith("ad:") else None


@app.command()
def upload(
    dataset: Annotated[str, typer.Argument(help="Dataset name, e.g. user.jdoe.input.v1 (or scope:name).")],
    files: Annotated[list[Path], typer.Argument(help="Files to copy in; each keeps its base name as LFN.")],
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Copy files into the local storage (<storage>/<scope>/<name>) and register them in the dataset
    with their real size, Adler-32 checksum and a new GUID (files already there are kept)."""
    settings = settings_for(home, database_url)
    storage = DataStorage(settings.effective_storage_dir)
    scope = scope_of(dataset)
    if len({path.name for path in files}) != len(files):
        raise fail("two files have the same name; a dataset holds one file per name")

    async def known(db: Database) -> dict[str, CatalogFile]:
        async with db.transaction(write=False) as conn:
            listed = await LocalCatalog().list_files(conn, dataset)
        return {item.lfn: item for item in listed or []}

    try:
        registered = with_database(settings, known)
        new: list[CatalogFile] = []
        for path in files:
            if not path.is_file():
                raise fail(f"{path} is not a readable file")
            checksum = adler32_of(path)
            size = path.stat().st_size
            existing = registered.get(path.name)
            if existing is not None:
                if (existing.fsize, _adler32(existing.checksum)) != (size, checksum):
                    raise fail(f"{dataset} already has a different {path.name}")
                continue
            target = storage.path(scope, path.name)
            if target.exists() and adler32_of(target) != checksum:
                raise fail(f"{scope}:{path.name} is already stored with other content")
            storage.put(path, scope, path.name)
            new.append(
                CatalogFile(lfn=path.name, guid=str(uuid.uuid4()), fsize=size, checksum=f"ad:{checksum}")
            )
    except (StorageError, OSError) as exc:
        raise fail(str(exc)) from exc

    async def register(db: Database) -> int:
        async with db.transaction() as conn:
            return await LocalCatalog().register_files(conn, SystemClock(), dataset, new)

    try:
        added = with_database(settings, register) if new else 0
    except BambooError as exc:
        raise fail(exc.message) from exc
    console.print(f"{added} files uploaded to {dataset} ({len(files) - added} already there)")


@app.command()
def get(
    dataset: Annotated[str, typer.Argument(help="A dataset of the catalog.")],
    to: Annotated[Path, typer.Option("--to", help="Directory to copy the files into.")] = Path("."),
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Copy a dataset's files out of the local storage, checking each against its catalog checksum."""
    settings = settings_for(home, database_url)
    storage = DataStorage(settings.effective_storage_dir)

    async def listing(db: Database) -> list[CatalogFile] | None:
        async with db.transaction(write=False) as conn:
            return await LocalCatalog().list_files(conn, dataset)

    listed = with_database(settings, listing)
    if listed is None:
        raise fail(f"dataset {dataset} is not in the catalog")
    to.mkdir(parents=True, exist_ok=True)
    problems = []
    for item in listed:
        try:
            source = storage.path(item.scope or scope_of(dataset), item.lfn)
            if not source.is_file():
                problems.append(f"{item.lfn}: not in the local storage")
                continue
            expected = _adler32(item.checksum)
            if expected is not None and adler32_of(source) != expected:
                problems.append(f"{item.lfn}: stored copy does not match the catalog checksum")
                continue
            shutil.copyfile(source, to / item.lfn)
        except (StorageError, OSError) as exc:
            problems.append(f"{item.lfn}: {exc}")
    console.print(f"{len(listed) - len(problems)} of {len(listed)} files of {dataset} copied to {to}")
    if problems:
        raise fail("; ".join(problems))
