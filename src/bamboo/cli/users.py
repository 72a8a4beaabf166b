"""`bamboo user`: the ban list and the allow-lists of the creds endpoints."""

from __future__ import annotations

from typing import Annotated

import typer

from bamboo.cli.options import DatabaseOption, HomeOption, console, fail, settings_for, with_database
from bamboo.db.engine import Database
from bamboo.logic import secrets, users
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


ProxyFlag = Annotated[
    bool, typer.Option("--proxy", help="p: cached proxies and access tokens (get_proxy, get_access_token).")
]
KeyPairFlag = Annotated[bool, typer.Option("--key-pair", help="k: key pairs (get_key_pair).")]
TokenKeyFlag = Annotated[bool, typer.Option("--token-key", help="t: token keys (get_token_key).")]


def _change(name: str, letters: str, *, allow: bool, home: HomeOption, database_url: DatabaseOption) -> None:
    if not letters:
        raise fail("give at least one of --proxy, --key-pair, --token-key")

    async def work(db: Database) -> str:
        async with db.transaction() as conn:
            return await secrets.change_allowances(conn, SystemClock(), name, letters, allow=allow)

    try:
        now = with_database(settings_for(home, database_url), work)
    except BambooError as exc:
        raise fail(exc.message) from exc
    console.print(f"user {name!r} allow-list letters: {now or '(none)'}", highlight=False)


def _letters(proxy: bool, key_pair: bool, token_key: bool) -> str:
    chosen = (
        (proxy, secrets.ALLOW_PROXY),
        (key_pair, secrets.ALLOW_KEY_PAIR),
        (token_key, secrets.ALLOW_TOKEN_KEY),
    )
    return "".join(letter for flag, letter in chosen if flag)


@app.command()
def allow(
    name: UserName,
    proxy: ProxyFlag = False,
    key_pair: KeyPairFlag = False,
    token_key: TokenKeyFlag = False,
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Let a user fetch credentials from the creds endpoints (adds gridpref letters p, k, t)."""
    _change(name, _letters(proxy, key_pair, token_key), allow=True, home=home, database_url=database_url)


@app.command()
def deny(
    name: UserName,
    proxy: ProxyFlag = False,
    key_pair: KeyPairFlag = False,
    token_key: TokenKeyFlag = False,
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Take back what `bamboo user allow` gave (removes the named gridpref letters)."""
    _change(name, _letters(proxy, key_pair, token_key), allow=False, home=home, database_url=database_url)
