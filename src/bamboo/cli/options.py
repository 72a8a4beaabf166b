"""Options every `bamboo` subcommand shares, so admin commands act on their server's home and database."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.console import Console

from bamboo.config import Settings
from bamboo.db.engine import Database

T = TypeVar("T")

console = Console()
errors = Console(stderr=True)

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="Data directory (default: $BAMBOO_HOME or ./.bamboo).", show_default=False),
]
DatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="SQLAlchemy async URL (default: $BAMBOO_DATABASE_URL or SQLite in the home).",
        show_default=False,
    ),
]


def settings_for(home: Path | None, database_url: str | None, **overrides: Any) -> Settings:
    """Settings from the environment, with the given command-line values on top."""
    values = {key: value for key, value in overrides.items() if value is not None}
    if home is not None:
        values["home"] = home
    if database_url is not None:
        values["database_url"] = database_url
    return Settings(**values)


def fail(message: str, code: int = 1) -> typer.Exit:
    # Not folded to the console's width: a path or a dataset name in it must stay copyable.
    errors.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def read_json_file(path: Path, limit: int) -> Any:
    """A JSON document from a file of at most ``limit`` bytes; clear errors otherwise."""
    try:
        if path.stat().st_size > limit:
            raise fail(f"{path} is larger than {limit} bytes")
        return orjson.loads(path.read_bytes())
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror}") from exc
    except orjson.JSONDecodeError as exc:
        raise fail(f"{path} is not valid JSON: {exc}") from exc


def with_database(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    """Run one async job against the settings' database (migrating the embedded SQLite first)."""
    from bamboo.db import migrate

    async def run() -> T:
        settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        db = Database(settings.effective_database_url, pool_size=2)
        try:
            if db.is_sqlite:
                await migrate.upgrade(db)
            return await work(db)
        finally:
            await db.dispose()

    return asyncio.run(run())
