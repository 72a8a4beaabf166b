"""`bamboo db`: schema migrations."""

from __future__ import annotations

import asyncio

import typer

from bamboo.cli.options import DatabaseOption, HomeOption, console, settings_for
from bamboo.db import migrate
from bamboo.db.engine import Database

app = typer.Typer(help="Database schema.", no_args_is_help=True)


@app.command()
def upgrade(home: HomeOption = None, database_url: DatabaseOption = None) -> None:
    """Migrate the database schema to the newest revision."""
    settings = settings_for(home, database_url)

    async def run() -> tuple[str, ...]:
        settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        db = Database(settings.effective_database_url)
        try:
            await migrate.upgrade(db)
            return await migrate.current_revisions(db)
        finally:
            await db.dispose()

    console.print(f"database at revision {', '.join(asyncio.run(run()))}")


@app.command()
def current(home: HomeOption = None, database_url: DatabaseOption = None) -> None:
    """Show the schema revision of the database and whether it is the newest."""
    settings = settings_for(home, database_url)

    async def run() -> tuple[str, ...]:
        db = Database(settings.effective_database_url)
        try:
            return await migrate.current_revisions(db)
        finally:
            await db.dispose()

    revisions = asyncio.run(run())
    heads = migrate.head_revisions()
    state = "up to date" if set(revisions) == set(heads) else f"behind (newest: {', '.join(heads)})"
    console.print(f"revision {', '.join(revisions) or '(empty database)'}: {state}")
