"""`bamboo secrets` (rotate-key, put-proxy, put-token) and `bamboo user allow/deny` on both
databases; and nothing secret is readable in clear in the database itself."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from bamboo.cli.main import app
from bamboo.config import Settings
from bamboo.db import users as users_db
from bamboo.db.engine import Database
from bamboo.db.schema import cached_credentials, user_secrets
from bamboo.home import KeyringSource, ensure_keyring_file, read_keyring_file, write_keyring_file
from bamboo.logic import secrets
from tests.conftest import FixedClock

runner = CliRunner()
LIMITS = secrets.SecretLimits(max_value_bytes=1000, max_user_bytes=10000, max_keys=100)
SECRET_VALUE = "s3cr3t-value-never-in-clear"
PROXY_TEXT = "-----BEGIN CERTIFICATE-----\nproxy-body-never-in-clear\n-----END CERTIFICATE-----\n"
TOKEN_TEXT = "eyJ-token-never-in-clear"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def cli(db: Database, database_url: str, home: Path):
    def run(*args: str, code: int = 0, env: dict[str, str] | None = None) -> str:
        result = runner.invoke(
            app,
            [*args, "--home", str(home), "--database-url", database_url],
            env={"COLUMNS": "200", **(env or {})},
        )
        assert result.exit_code == code, result.output
        return result.output

    return run


def keyring_of(home: Path) -> secrets.Keyring:
    settings = Settings(home=home)
    ensure_keyring_file(settings.effective_secrets_key_file)
    return KeyringSource(settings).keyring()


async def put_secrets(db: Database, keyring: secrets.Keyring, owners: list[str]) -> None:
    async with db.transaction() as conn:
        for owner in owners:
            await secrets.set_user_secret(
                conn, FixedClock(), keyring, LIMITS, owner, "password", SECRET_VALUE
            )
            await secrets.set_user_secret(conn, FixedClock(), keyring, LIMITS, owner, "name", owner)


async def key_ids(db: Database) -> list[str]:
    async with db.transaction(write=False) as conn:
        rows = await conn.execute(
            sa.select(user_secrets.c.key_id).union_all(sa.select(cached_credentials.c.key_id))
        )
        return sorted(rows.scalars())


async def read_all(db: Database, keyring: secrets.Keyring, owners: list[str]) -> dict[str, dict[str, str]]:
    async with db.transaction(write=False) as conn:
        return {owner: await secrets.get_user_secrets(conn, keyring, owner) for owner in owners}


OWNERS = [f"User {n}" for n in range(7)]


def on_db(database_url: str, work):
    """Run ``work(database)`` in a loop of its own (the CLI runs its own loops too)."""

    async def run():
        database = Database(database_url)
        try:
            return await work(database)
        finally:
            await database.dispose()

    return asyncio.run(run())


def test_rotate_key_reseals_everything_and_retires_the_old_key(
    cli, database_url: str, home: Path, tmp_path: Path
) -> None:
    old = keyring_of(home)
    on_db(database_url, lambda d: put_secrets(d, old, OWNERS))
    proxy_file = tmp_path / "proxy.pem"
    proxy_file.write_text(PROXY_TEXT)
    cli("secrets", "put-proxy", str(proxy_file), "--dn", "/DC=org/CN=Robot", "--role", "production")
    output = cli("secrets", "rotate-key", "--batch-size", "3")
    assert "resealed 7 user secret rows and 1 cached credentials" in output
    keys = read_keyring_file(Settings(home=home).effective_secrets_key_file)
    assert len(keys) == 1 and keys[0].id != old.current.id
    assert f"retired key {old.current.id}" in output
    assert set(on_db(database_url, lambda d: key_ids(d))) == {keys[0].id}
    new = secrets.Keyring(keys)
    assert on_db(database_url, lambda d: read_all(d, new, OWNERS)) == {
        o: {"password": SECRET_VALUE, "name": o} for o in OWNERS
    }
    with pytest.raises(secrets.SecretsUnavailable):
        on_db(database_url, lambda d: read_all(d, old, OWNERS[:1]))


def test_an_interrupted_rotation_resumes(cli, database_url: str, home: Path) -> None:
    old = keyring_of(home)
    on_db(database_url, lambda d: put_secrets(d, old, OWNERS))
    # A rotation killed after its first batch: the keyring holds both keys, two rows moved.
    path = Settings(home=home).effective_secrets_key_file
    added = secrets.SecretKey.new()
    write_keyring_file(path, [old.current, added])
    both = secrets.Keyring([old.current, added])

    async def one_batch(d: Database) -> None:
        async with d.transaction() as conn:
            await secrets.reseal_batch(conn, both, 2, secrets.RotationCount())

    on_db(database_url, one_batch)
    output = cli("secrets", "rotate-key")
    assert f"resuming an unfinished rotation to key {added.id}" in output
    assert "resealed 5 user secret rows" in output
    assert [key.id for key in read_keyring_file(path)] == [added.id]
    assert set(on_db(database_url, lambda d: key_ids(d))) == {added.id}
    assert (
        on_db(database_url, lambda d: read_all(d, secrets.Keyring([added]), OWNERS))["User 3"]["password"]
        == SECRET_VALUE
    )


def test_rotate_key_refuses_a_key_from_the_environment(cli) -> None:
    key = secrets.SecretKey.new().to_base64()
    output = cli("secrets", "rotate-key", code=1, env={"BAMBOO_SECRETS_KEY": key})
    assert "cannot be rotated" in output


def test_put_proxy_and_token(cli, database_url: str, home: Path, tmp_path: Path) -> None:
    proxy_file = tmp_path / "proxy.pem"
    proxy_file.write_text(PROXY_TEXT)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN_TEXT + "\n")
    cli("secrets", "put-proxy", str(proxy_file), "--dn", "/DC=org/CN=Robot/CN=proxy")
    cli("secrets", "put-token", str(token_file), "--client", "pilot_server")
    cli("user", "allow", "Robot", "--proxy")
    keyring = keyring_of(home)

    async def fetch(d: Database) -> tuple[str, str]:
        async with d.transaction(write=False) as conn:
            proxy = await secrets.proxy(conn, keyring, "Robot", "/DC=org/CN=Robot", None, None)
            token = await secrets.access_token(conn, keyring, "Robot", None, "pilot_server", None)
            return proxy, token

    assert on_db(database_url, fetch) == (PROXY_TEXT, TOKEN_TEXT)
    assert "cannot read" in cli("secrets", "put-token", str(tmp_path / "absent"), "--client", "x", code=1)
    big = tmp_path / "big"
    big.write_text("x" * (secrets.MAX_CREDENTIAL_BYTES + 1))
    assert "larger than" in cli("secrets", "put-token", str(big), "--client", "x", code=1)


def test_user_allow_and_deny(cli, database_url: str) -> None:
    async def letters(d: Database, name: str) -> str | None:
        async with d.transaction(write=False) as conn:
            return await users_db.gridpref(conn, name)

    assert "letters: pt" in cli("user", "allow", "Jane Doe", "--token-key", "--proxy")
    assert on_db(database_url, lambda d: letters(d, "Jane Doe")) == "pt"
    assert "letters: pkt" in cli("user", "allow", "Jane Doe", "--key-pair")
    assert "letters: k" in cli("user", "deny", "Jane Doe", "--proxy", "--token-key")
    assert "letters: (none)" in cli("user", "deny", "Jane Doe", "--key-pair")
    assert on_db(database_url, lambda d: letters(d, "Jane Doe")) is None
    assert "at least one of" in cli("user", "allow", "Jane Doe", code=1)
    # The user row keeps its ban status: allow-lists and bans are separate.
    cli("user", "ban", "Jane Doe")
    cli("user", "allow", "Jane Doe", "--proxy")
    assert "unbanned" in cli("user", "unban", "Jane Doe")


def test_nothing_secret_is_in_clear_in_the_database(
    cli, database_url: str, home: Path, tmp_path: Path
) -> None:
    on_db(database_url, lambda d: put_secrets(d, keyring_of(home), OWNERS[:2]))
    proxy_file = tmp_path / "proxy.pem"
    proxy_file.write_text(PROXY_TEXT)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN_TEXT)
    cli("secrets", "put-proxy", str(proxy_file), "--dn", "/DC=org/CN=Robot")
    cli("secrets", "put-token", str(token_file), "--client", "pilot_server")
    needles = [SECRET_VALUE, "proxy-body-never-in-clear", TOKEN_TEXT]
    if database_url.startswith("sqlite"):
        path = Path(sa.make_url(database_url).database or "")
        raw = b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())
        assert b"User 0" in raw  # the owner is a plain column: the file was read
        for needle in needles:
            assert needle.encode() not in raw
        return

    async def raw_rows(d: Database) -> str:
        async with d.transaction(write=False) as conn:
            rows = await conn.execute(sa.text("SELECT CAST(s AS text) FROM user_secrets s"))
            more = await conn.execute(
                sa.text("SELECT CAST(c AS text), encode(c.sealed, 'escape') FROM cached_credentials c")
            )
            return json.dumps([list(r) for r in rows] + [list(r) for r in more])

    text = on_db(database_url, raw_rows)
    assert "User 0" in text
    for needle in needles:
        assert needle not in text
