"""`bamboo events TASK`: how far a task's event ranges are (event service, domain.md §7)."""

from __future__ import annotations

from typing import Annotated

import orjson
import typer
from rich.progress_bar import ProgressBar
from rich.table import Table

from bamboo.cli.options import DatabaseOption, HomeOption, console, settings_for, with_database
from bamboo.db.engine import Database
from bamboo.logic import events

# Statuses in the order a range lives them; anything else found is listed after them.
_ORDER = ("ready", "sent", "running", "finished", "done", "merged", "failed", "fatal")


def show(
    task_id: Annotated[int, typer.Argument(help="The task's jediTaskID.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Count a task's event ranges by status, with a bar of the processed share."""

    async def work(db: Database) -> dict[str, int]:
        async with db.transaction(write=False) as conn:
            return await events.task_progress(conn, task_id)

    counts = with_database(settings_for(home, database_url), work)
    if as_json:
        typer.echo(orjson.dumps(counts, option=orjson.OPT_SORT_KEYS).decode())
        return
    total = sum(counts.values())
    if not total:
        console.print(f"task {task_id} has no event ranges")
        return
    table = Table("status", "ranges", "share")
    ordered = [status for status in _ORDER if status in counts]
    ordered += sorted(status for status in counts if status not in _ORDER)
    for status in ordered:
        table.add_row(status, str(counts[status]), f"{100 * counts[status] / total:.1f} %")
    console.print(table)
    processed = sum(counts.get(status, 0) for status in events.PROCESSED_STATUSES)
    bar = Table.grid(padding=(0, 1))
    bar.add_row("processed", ProgressBar(total=total, completed=processed, width=40), f"{processed}/{total}")
    console.print(bar)
