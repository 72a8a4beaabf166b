"""`bamboo queue`: the queue catalog (PanDA queues that brokerage and pilots use)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
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
from bamboo.logic import queues
from bamboo.logic.clock import SystemClock
from bamboo.logic.errors import BambooError

app = typer.Typer(help="PanDA queues.", no_args_is_help=True)

_MAX_FILE_BYTES = 64 * 1024 * 1024

Status = Annotated[str | None, typer.Option(help=f"One of {', '.join(queues.STATUSES)}.")]
Type = Annotated[str | None, typer.Option("--type", help=f"One of {', '.join(queues.TYPES)}.")]
Cloud = Annotated[str | None, typer.Option(help="Cloud the queue belongs to.")]
Site = Annotated[str | None, typer.Option(help="Site (ATLAS site name) of the queue.")]
CoreCount = Annotated[int | None, typer.Option(help="Cores per slot: 0 any, -1 job decides.")]
MaxRss = Annotated[int | None, typer.Option(help="Most memory per slot, MB.")]
MinRss = Annotated[int | None, typer.Option(help="Least memory per slot, MB.")]
MaxTime = Annotated[int | None, typer.Option(help="Longest walltime, seconds (0 unlimited).")]
MinTime = Annotated[int | None, typer.Option(help="Shortest walltime, seconds.")]
MaxWdir = Annotated[int | None, typer.Option(help="Scratch space per slot, MB.")]
JobSeed = Annotated[str | None, typer.Option(help=f"Event service mode: {', '.join(queues.JOBSEEDS)}.")]
Harvester = Annotated[
    str | None,
    typer.Option(
        help="The Harvester instance (harvester_id) serving the queue: it receives the queue's commands."
    ),
]
Attributes = Annotated[
    list[str] | None,
    typer.Option(
        "--attr", help="Any other attribute as KEY=JSON (e.g. --attr 'capability=\"ucore\"'); repeatable."
    ),
]


def _attributes(pairs: list[str] | None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise fail(f"--attr needs KEY=VALUE, got {pair!r}")
        try:
            values[key] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            values[key] = raw  # a bare word is a string
    return values


def _given(**fields: Any) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


def _run(home: Path | None, database_url: str | None, work: Any) -> Any:
    try:
        return with_database(settings_for(home, database_url), work)
    except BambooError as exc:
        raise fail(exc.message) from exc


@app.command()
def add(
    name: Annotated[str, typer.Argument(help="PanDA queue name.")],
    status: Status = None,
    queue_type: Type = None,
    cloud: Cloud = None,
    site: Site = None,
    corecount: CoreCount = None,
    maxrss: MaxRss = None,
    minrss: MinRss = None,
    maxtime: MaxTime = None,
    mintime: MinTime = None,
    maxwdir: MaxWdir = None,
    jobseed: JobSeed = None,
    harvester: Harvester = None,
    attr: Attributes = None,
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Add a queue (or replace it entirely if it exists)."""
    spec = {
        **_attributes(attr),
        **_given(
            name=name,
            status=status,
            type=queue_type,
            cloud=cloud,
            site=site,
            corecount=corecount,
            maxrss=maxrss,
            minrss=minrss,
            maxtime=maxtime,
            mintime=mintime,
            maxwdir=maxwdir,
            jobseed=jobseed,
            harvester=harvester,
        ),
    }

    async def work(db: Database) -> bool:
        async with db.transaction() as conn:
            return await queues.put(conn, SystemClock(), spec)

    created = _run(home, database_url, work)
    console.print(f"queue {name} {'added' if created else 'replaced'}")


@app.command("set")
def set_attributes(
    name: Annotated[str, typer.Argument(help="PanDA queue name.")],
    status: Status = None,
    queue_type: Type = None,
    cloud: Cloud = None,
    site: Site = None,
    corecount: CoreCount = None,
    maxrss: MaxRss = None,
    minrss: MinRss = None,
    maxtime: MaxTime = None,
    mintime: MinTime = None,
    maxwdir: MaxWdir = None,
    jobseed: JobSeed = None,
    harvester: Harvester = None,
    attr: Attributes = None,
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Change some attributes of a queue (``--attr KEY=null`` removes one)."""
    changes = {
        **_attributes(attr),
        **_given(
            status=status,
            type=queue_type,
            cloud=cloud,
            site=site,
            corecount=corecount,
            maxrss=maxrss,
            minrss=minrss,
            maxtime=maxtime,
            mintime=mintime,
            maxwdir=maxwdir,
            jobseed=jobseed,
            harvester=harvester,
        ),
    }
    if not changes:
        raise fail("nothing to change: give at least one option")

    async def work(db: Database) -> dict[str, Any]:
        async with db.transaction() as conn:
            return await queues.update(conn, SystemClock(), name, changes)

    _run(home, database_url, work)
    console.print(f"queue {name} updated")


@app.command("list")
def list_queues(
    as_json: Annotated[bool, typer.Option("--json", help="Print the full specs as JSON.")] = False,
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """List the queues."""

    async def work(db: Database) -> list[dict[str, Any]]:
        async with db.transaction(write=False) as conn:
            return await queues.list_specs(conn)

    specs = _run(home, database_url, work)
    if as_json:
        typer.echo(orjson.dumps(specs, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table("name", "status", "type", "cloud", "site", "corecount", "maxrss", "maxtime")
    for spec in specs:
        table.add_row(
            *(
                str(spec.get(key, "")) if spec.get(key) is not None else ""
                for key in ("name", "status", "type", "cloud", "site", "corecount", "maxrss", "maxtime")
            )
        )
    console.print(table)


@app.command()
def remove(
    name: Annotated[str, typer.Argument(help="PanDA queue name.")],
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Remove a queue from the catalog."""

    async def work(db: Database) -> None:
        async with db.transaction() as conn:
            await queues.remove(conn, name)

    _run(home, database_url, work)
    console.print(f"queue {name} removed")


@app.command()
def load(
    file: Annotated[Path, typer.Argument(help="schedconfig-style JSON: one spec, a list, or name -> spec.")],
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Add or replace queues from a JSON file, all or none."""
    document = read_json_file(file, _MAX_FILE_BYTES)

    async def work(db: Database) -> list[bool]:
        specs = queues.specs_from_document(document)
        async with db.transaction() as conn:
            return [await queues.put(conn, SystemClock(), spec) for spec in specs]

    results = _run(home, database_url, work)
    console.print(
        f"{len(results)} queues loaded ({sum(results)} new, {len(results) - sum(results)} replaced)"
    )
