"""`bamboo secrets`: rotate the key that seals secrets at rest; store proxies and access tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bamboo.cli.options import DatabaseOption, HomeOption, console, fail, settings_for, with_database
from bamboo.config import Settings
from bamboo.db.engine import Database
from bamboo.home import (
    KeyringError,
    KeyringSource,
    ensure_keyring_file,
    read_keyring_file,
    write_keyring_file,
)
from bamboo.logic import secrets
from bamboo.logic.clock import SystemClock
from bamboo.logic.errors import BambooError

app = typer.Typer(
    help="Secrets at rest: key rotation, cached proxies and access tokens.", no_args_is_help=True
)

CredentialFile = Annotated[
    Path, typer.Argument(help="File holding the credential (read whole).", show_default=False)
]


def _keyring_file(settings: Settings) -> Path:
    if settings.secrets_key is not None:
        raise fail(
            "the secrets key comes from BAMBOO_SECRETS_KEY and cannot be rotated here; "
            "use a keyring file (BAMBOO_SECRETS_KEY_FILE) to rotate keys"
        )
    path = settings.effective_secrets_key_file
    ensure_keyring_file(path)
    return path


@app.command("rotate-key")
def rotate_key(
    home: HomeOption = None,
    database_url: DatabaseOption = None,
    batch_size: Annotated[int, typer.Option(min=1, max=10000, help="Rows resealed per transaction.")] = 500,
) -> None:
    """Seal every stored secret with a new key, then retire the old one.

    A fresh rotation adds a new key to the keyring (servers pick it up for new writes at once) and
    reseals the rows batch by batch, one transaction each. Killed midway, run it again: the keyring
    still holds both keys and the rows not yet moved still name the old one, so it goes on where it
    stopped. The old key is removed only when no row uses it any more.
    """
    settings = settings_for(home, database_url)
    path = _keyring_file(settings)
    try:
        keys = read_keyring_file(path)
    except KeyringError as exc:
        raise fail(str(exc)) from exc
    if len(keys) == 1:
        keys = [*keys, secrets.SecretKey.new()]
        write_keyring_file(path, keys)
        console.print(f"new key {keys[-1].id} added; resealing rows sealed with {keys[0].id}")
    else:
        console.print(f"resuming an unfinished rotation to key {keys[-1].id}")
    keyring = secrets.Keyring(keys)
    counts = secrets.RotationCount()

    async def work(db: Database) -> set[str]:
        while True:
            async with db.transaction() as conn:
                if not await secrets.reseal_batch(conn, keyring, batch_size, counts):
                    break
        async with db.transaction(write=False) as conn:
            return await secrets.key_ids_in_use(conn)

    try:
        in_use = with_database(settings, work)
    except BambooError as exc:
        raise fail(exc.message) from exc
    console.print(
        f"resealed {counts.user_secrets} user secret rows and {counts.credentials} cached credentials "
        f"({counts.skipped} rewritten meanwhile by a server)"
    )
    left = in_use - {keyring.current.id}
    if left:
        raise fail(f"rows still sealed with {sorted(left)}; the old key is kept, run rotate-key again")
    write_keyring_file(path, [keyring.current])
    retired = ", ".join(key.id for key in keys[:-1])
    console.print(f"retired key {retired}; current key {keyring.current.id}")


def _store(settings: Settings, kind: str, subject: str, role: str, file: Path) -> None:
    try:
        if file.stat().st_size > secrets.MAX_CREDENTIAL_BYTES:
            raise fail(f"{file} is larger than {secrets.MAX_CREDENTIAL_BYTES} bytes")
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot read {file}: {exc}") from exc
    if kind == secrets.TOKEN:
        text = text.strip()  # token files usually end with a newline that is not part of the token
    if settings.secrets_key is None:
        ensure_keyring_file(settings.effective_secrets_key_file)

    async def work(db: Database) -> None:
        keyring = KeyringSource(settings).keyring()
        async with db.transaction() as conn:
            await secrets.store_credential(conn, SystemClock(), keyring, kind, subject, role, text)

    try:
        with_database(settings, work)
    except (BambooError, KeyringError) as exc:
        raise fail(exc.message if isinstance(exc, BambooError) else str(exc)) from exc


@app.command("put-proxy")
def put_proxy(
    file: CredentialFile,
    dn: Annotated[str, typer.Option("--dn", help="Owner DN of the proxy (stored as the bare DN).")],
    role: Annotated[str, typer.Option("--role", help="VOMS role it carries (default: none).")] = "",
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Store (or replace) the proxy creds/get_proxy serves for a DN and role, sealed at rest."""
    _store(settings_for(home, database_url), secrets.PROXY, dn, role, file)
    console.print(f"proxy stored for {dn!r} role {role!r}", highlight=False)


@app.command("put-token")
def put_token(
    file: CredentialFile,
    client: Annotated[str, typer.Option("--client", help="OAuth client name the token is for.")],
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Store (or replace) the access token creds/get_access_token serves for a client, sealed at rest."""
    _store(settings_for(home, database_url), secrets.TOKEN, client, "", file)
    console.print(f"access token stored for client {client!r}", highlight=False)
