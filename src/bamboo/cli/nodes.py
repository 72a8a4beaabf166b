"""`bamboo node`: the worker-node catalog pilots report into (pilot/update_worker_node, _gpu)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from bamboo.cli.options import DatabaseOption, HomeOption, console, settings_for, with_database
from bamboo.db.engine import Database
from bamboo.logic import worker_nodes

app = typer.Typer(help="Worker nodes pilots have reported.", no_args_is_help=True)


def _gpus(node: dict[str, Any]) -> str:
    return ", ".join(f"{gpu['count']}x {gpu['vendor']} {gpu['model']}" for gpu in node["gpus"])


def _cores(node: dict[str, Any]) -> str:
    return "" if node["n_logical_cpus"] is None else str(node["n_logical_cpus"])


@app.command("list")
def list_nodes(
    site: Annotated[str | None, typer.Option(help="Only the nodes of this site.")] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=worker_nodes.MAX_LISTED, help="Most nodes shown, last seen first.")
    ] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="Print every attribute as JSON.")] = False,
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """List the worker nodes, most recently seen first, with their queues and GPUs."""

    async def work(db: Database) -> list[dict[str, Any]]:
        async with db.transaction(write=False) as conn:
            return await worker_nodes.list_nodes(conn, site, limit)

    nodes = with_database(settings_for(home, database_url), work)
    if as_json:
        typer.echo(orjson.dumps(nodes, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())
        return
    table = Table("site", "host", "cpu", "cores", "memory MB", "disk GB", "queues", "gpus", "last seen")
    for node in nodes:
        table.add_row(
            node["site"],
            node["host_name"],
            node["cpu_model_normalized"] or node["cpu_model"],
            _cores(node),
            "" if node["total_memory"] is None else str(node["total_memory"]),
            "" if node["total_local_disk"] is None else str(node["total_local_disk"]),
            ", ".join(node["queues"]),
            _gpus(node),
            node["last_seen"].strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(table)
