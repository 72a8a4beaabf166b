"""`bamboo share`: the global share tree (load it from a JSON file, list it with its usage).

The commands act through the same logic functions as the API (``logic/shares.py``); the file
format is in docs/operations.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bamboo.cli.options import (
    DatabaseOption,
    HomeOption,
    console,
    fail,
    read_json_file,
    settings_for,
    with_database,
)
from bamboo.db.engine import Database
from bamboo.logic import shares
from bamboo.logic.errors import BambooError

app = typer.Typer(help="Global shares.", no_args_is_help=True)

# A tree of MAX_SHARES shares with long selectors stays well under this.
_MAX_FILE_BYTES = 4 * 1024 * 1024


@app.command()
def load(
    file: Annotated[Path, typer.Argument(help="The share tree as JSON (see docs/operations.md).")],
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Replace the share tree with the one in the file, all or nothing."""
    document = read_json_file(file, _MAX_FILE_BYTES)

    async def work(db: Database) -> shares.ShareTree:
        async with db.transaction() as conn:
            return await shares.load(conn, document)

    try:
        tree = with_database(settings_for(home, database_url), work)
    except BambooError as exc:
        raise fail(exc.message) from exc
    console.print(f"{len(tree.shares)} shares loaded ({len(tree.leaves())} leaves, default {tree.default})")


def _percent(value: float) -> str:
    return f"{value:.4g}"


@app.command(name="list")
def list_shares(home: HomeOption = None, database_url: DatabaseOption = None) -> None:
    """The share tree: each leaf's target of all executing jobs, and its executing and waiting jobs."""

    async def work(db: Database) -> list[shares.ShareUsage]:
        async with db.transaction(write=False) as conn:
            return await shares.overview(conn)

    rows = with_database(settings_for(home, database_url), work)
    if not rows:
        console.print("no share tree loaded (bamboo share load FILE.json)")
        return
    table = Table("share", "value %", "target %", "executing", "waiting", "selectors", "flags")
    for row in rows:
        flags = [flag for flag, on in (("default", row.default), ("throttled", row.share.throttled)) if on]
        selectors = [f"{key}={pattern}" for key, pattern in row.share.selectors]
        if row.share.queue_id is not None:
            selectors.append(f"queue_id={row.share.queue_id}")
        table.add_row(
            "  " * row.depth + row.share.name,
            _percent(row.share.value),
            _percent(float(row.target) * 100) if row.target is not None else "",
            str(row.executing) if row.leaf else "",
            str(row.waiting) if row.leaf else "",
            " ".join(selectors),
            ",".join(flags),
        )
    console.print(table)
