"""`bamboo data`: the local dataset catalog (inputs for tasks)."""

from __future__ import annotations

from typing import Annotated

import typer

from bamboo.cli.options import DatabaseOption, HomeOption, console, fail, settings_for, with_database
from bamboo.db.engine import Database
from bamboo.logic.catalog import CatalogFile, LocalCatalog
from bamboo.logic.clock import SystemClock
from bamboo.logic.errors import BambooError

app = typer.Typer(help="The dataset catalog.", no_args_is_help=True)


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
