"""`bamboo user`: the ban list."""

from __future__ import annotations

from typing import Annotated

import typer

from bamboo.cli.options import DatabaseOption, HomeOption, console, fail, settings_for, with_database
from bamboo.db.engine import Database
from bamboo.logic import users
from bamboo.logic.clock import SystemClock
from bamboo.logic.errors import BambooError

app = typer.Typer(help="Users and the ban list.", no_args_is_help=True)

UserName = Annotated[str, typer.Argument(help="Compact user name, as in task userName (e.g. 'John Doe').")]


@app.command()
def ban(name: UserName, home: HomeOption = None, database_url: DatabaseOption = None) -> None:
    """Refuse every request of a user (HTTP 403), on every server sharing the database."""

    async def work(db: Database) -> None:
        async with db.transaction() as conn:
            await users.ban(conn, SystemClock(), name)

    try:
        with_database(settings_for(home, database_url), work)
    except BambooError as exc:
        raise fail(exc.message) from exc
    console.print(f"user {name!r} banned")


@app.command()
def unban(name: UserName, home: HomeOption = None, database_url: DatabaseOption = None) -> None:
    """Lift a ban."""

    async def work(db: Database) -> bool:
        async with db.transaction() as conn:
            return await users.unban(conn, SystemClock(), name)

    try:
        lifted = with_database(settings_for(home, database_url), work)
    except BambooError as exc:
        raise fail(exc.message) from exc
    if not lifted:
        raise fail(f"user {name!r} is not banned")
    console.print(f"user {name!r} unbanned")
