"""`bamboo harvester`: the Harvester instances that talk to this server, and commands for them."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from bamboo.cli.options import DatabaseOption, HomeOption, console, fail, settings_for, with_database
from bamboo.db.engine import Database
from bamboo.logic import harvester_commands
from bamboo.logic.clock import SystemClock
from bamboo.logic.errors import BambooError

app = typer.Typer(help="Harvester instances and their commands.", no_args_is_help=True)

KILL_WORKERS = "kill-workers"


def _when(value: Any) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


@app.command("list")
def list_instances(
    as_json: Annotated[bool, typer.Option("--json", help="Print everything as JSON.")] = False,
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """List the instances with their last heartbeat, and their workers by status per queue."""

    async def work(db: Database) -> dict[str, Any]:
        async with db.transaction(write=False) as conn:
            return await harvester_commands.overview(conn)

    found = with_database(settings_for(home, database_url), work)
    if as_json:
        typer.echo(orjson.dumps(found, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())
        return
    instances = Table("harvester", "owner", "host", "version", "last heartbeat", title="instances")
    for row in found["instances"]:
        instances.add_row(
            row["harvester_ID"],
            row["owner"] or "",
            row["hostName"] or "",
            row["sw_version"] or "",
            _when(row["lastUpdate"]),
        )
    console.print(instances)
    workers = Table("harvester", "queue", "workers by status", title="workers")
    for entry in found["workers"]:
        counts = ", ".join(f"{status}={n}" for status, n in sorted(entry["statuses"].items()))
        workers.add_row(entry["harvester_id"], entry["queue"], counts)
    console.print(workers)


@app.command("command")
def send_command(
    queue: Annotated[str, typer.Argument(help="The PanDA queue whose Harvester gets the command.")],
    action: Annotated[str, typer.Argument(help=f"What to do: {KILL_WORKERS}.")],
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            help="Worker status to kill (repeatable; default: every live status, "
            + ", ".join(harvester_commands.LIVE_WORKER_STATUSES)
            + ").",
        ),
    ] = None,
    ce: Annotated[
        list[str] | None, typer.Option("--ce", help="Only workers of this CE (repeatable; default: all).")
    ] = None,
    submission_host: Annotated[
        list[str] | None,
        typer.Option("--submission-host", help="Only workers from this submission host (repeatable)."),
    ] = None,
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Queue a command for the Harvester instance serving QUEUE (as harvester/add_sweep_command does)."""
    if action != KILL_WORKERS:
        raise fail(f"unknown action {action!r}; known: {KILL_WORKERS}")
    statuses = list(status or harvester_commands.LIVE_WORKER_STATUSES)

    async def work(db: Database) -> int:
        async with db.transaction() as conn:
            return await harvester_commands.add_sweep(
                conn, SystemClock(), queue, statuses, ce or [], submission_host or []
            )

    try:
        command_id = with_database(settings_for(home, database_url), work)
    except BambooError as exc:
        raise fail(exc.message) from exc
    console.print(f"command {command_id} KILL_WORKERS queued for queue {queue}")
