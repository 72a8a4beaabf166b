"""The `bamboo` command."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from bamboo.cli import (
    credentials,
    data,
    database,
    events,
    harvester,
    nodes,
    queues,
    secrets,
    shares,
    tasks,
    users,
    worker,
)
from bamboo.cli.options import DatabaseOption, HomeOption, fail, settings_for

app = typer.Typer(
    name="bamboo",
    help="Bamboo: a workload management server speaking the PanDA REST API v1.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(database.app, name="db")
app.add_typer(queues.app, name="queue")
app.add_typer(users.app, name="user")
app.add_typer(credentials.token_app, name="token")
app.add_typer(credentials.cert_app, name="cert")
app.add_typer(tasks.app, name="task")
app.add_typer(data.app, name="data")
app.add_typer(shares.app, name="share")
app.add_typer(nodes.app, name="node")
app.add_typer(harvester.app, name="harvester")
app.add_typer(secrets.app, name="secrets")
app.command("events")(events.show)
app.command("worker")(worker.worker)


@app.command()
def serve(
    home: HomeOption = None,
    database_url: DatabaseOption = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    http_port: Annotated[int | None, typer.Option(help="Plain-HTTP port (default 25080).")] = None,
    https_port: Annotated[int | None, typer.Option(help="HTTPS port (default 25443).")] = None,
    workers: Annotated[int | None, typer.Option(help="Server processes (default 1).")] = None,
    no_agents: Annotated[
        bool, typer.Option("--no-agents", help="Do not run background agents here.")
    ] = False,
    ca_dir: Annotated[
        list[str] | None, typer.Option("--ca-dir", help="Extra trusted CA directory or file (repeatable).")
    ] = None,
    local_worker: Annotated[
        bool | None,
        typer.Option(
            "--local-worker/--no-local-worker",
            help="Also run a built-in worker (`bamboo worker`) for the local worker queue; "
            "it stops with the server.",
            show_default=False,
        ),
    ] = None,
    local_worker_queue: Annotated[
        str | None, typer.Option(help="Queue of the local worker (default LOCAL).")
    ] = None,
    local_worker_slots: Annotated[
        int | None, typer.Option(help="Jobs the local worker runs at once (default 1).")
    ] = None,
) -> None:
    """Run the server: HTTP and HTTPS listeners on the embedded SQLite or the given database."""
    from bamboo.server import ServerStartError
    from bamboo.server import serve as run

    overrides = {
        "host": host,
        "http_port": http_port,
        "https_port": https_port,
        "workers": workers,
        "agents": False if no_agents else None,
        "ca_dirs": ca_dir or None,
        "local_worker": local_worker,
        "local_worker_queue": local_worker_queue,
        "local_worker_slots": local_worker_slots,
    }
    settings = settings_for(home, database_url, **overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        run(settings)
    except ServerStartError as exc:
        raise fail(str(exc)) from exc


@app.command()
def agents(home: HomeOption = None, database_url: DatabaseOption = None) -> None:
    """Run only the background agents (next to servers started with --no-agents)."""
    import asyncio

    import uvloop

    from bamboo.server import ServerStartError, install_retry_rules, prepare_database, run_agents

    settings = settings_for(home, database_url)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    async def check() -> None:
        from bamboo.db.engine import Database

        db = Database(settings.effective_database_url)
        try:
            await prepare_database(db)
        finally:
            await db.dispose()

    try:
        install_retry_rules(settings)
        asyncio.run(check())
    except ServerStartError as exc:
        raise fail(str(exc)) from exc
    uvloop.run(run_agents(settings))
