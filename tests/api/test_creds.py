"""The creds/* endpoints of api-v1.md §2.7 through the API, on both databases: user secrets, key
pairs, cached proxies and access tokens, token keys, with the contract's exact answers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from bamboo.db.schema import cached_credentials, user_secrets
from bamboo.logic import secrets
from tests.api.conftest import ApiServer
from tests.api.test_task_flow import envelope
from tests.conftest import FixedClock

JANE = "Jane Doe"
DN = "/DC=org/DC=example/OU=Users/CN=jdoe/CN=Jane Doe"
NOT_SECURE = {"success": False, "message": "SSL secure connection is required", "data": None}


async def allow(api: ApiServer, name: str, letters: str) -> None:
    async with api.state.db.transaction() as conn:
        await secrets.change_allowances(conn, FixedClock(), name, letters, allow=True)


async def store(api: ApiServer, kind: str, subject: str, role: str, text: str) -> None:
    async with api.state.db.transaction() as conn:
        keyring = api.state.keyring.keyring()
        await secrets.store_credential(conn, FixedClock(), keyring, kind, subject, role, text)


async def call(api: ApiServer, function: str, *, method: str = "GET", headers=None, **params) -> dict:
    headers = api.token_headers() if headers is None else headers
    async with api.client(headers=headers) as client:
        if method == "GET":
            response = await client.get(f"/api/v1/creds/{function}", params=params)
        else:
            response = await client.post(f"/api/v1/creds/{function}", json=params)
    return envelope(response)


# --- set_user_secrets / get_user_secrets ------------------------------------------------------


async def test_secrets_set_get_delete(api: ApiServer) -> None:
    assert await call(api, "get_user_secrets") == {"success": True, "message": "", "data": "{}"}
    ok = {"success": True, "message": "OK", "data": None}
    assert await call(api, "set_user_secrets", method="POST", key="test_key", value="test_value") == ok
    assert await call(api, "set_user_secrets", method="POST", key="other", value="2") == ok
    answer = await call(api, "get_user_secrets")
    assert isinstance(answer["data"], str)
    assert json.loads(answer["data"]) == {"test_key": "test_value", "other": "2"}
    filtered = await call(api, "get_user_secrets", keys=["test_key", "absent"])
    assert filtered["data"] == '{"test_key": "test_value"}'
    # Deleting a key also deletes its ___file___ twin.
    await call(api, "set_user_secrets", method="POST", key="___file___:cfg", value="file body")
    await call(api, "set_user_secrets", method="POST", key="cfg", value="plain")
    await call(api, "set_user_secrets", method="POST", key="cfg", value=None)
    remaining = json.loads((await call(api, "get_user_secrets"))["data"])
    assert remaining == {"test_key": "test_value", "other": "2"}
    # A null key deletes them all.
    assert await call(api, "set_user_secrets", method="POST", key=None) == ok
    assert (await call(api, "get_user_secrets"))["data"] == "{}"


async def test_concurrent_changes_of_one_user_are_all_kept(api: ApiServer) -> None:
    answers = await asyncio.gather(
        *(call(api, "set_user_secrets", method="POST", key=f"k{n}", value=str(n)) for n in range(8))
    )
    assert all(answer["success"] for answer in answers)
    stored = json.loads((await call(api, "get_user_secrets"))["data"])
    assert stored == {f"k{n}": str(n) for n in range(8)}


async def test_secrets_belong_to_their_owner(api: ApiServer) -> None:
    await call(api, "set_user_secrets", method="POST", key="k", value="jane's")
    other = api.token_headers(user="John Smith")
    assert (await call(api, "get_user_secrets", headers=other))["data"] == "{}"
    await call(api, "set_user_secrets", method="POST", headers=other, key="k", value="john's")
    assert json.loads((await call(api, "get_user_secrets"))["data"]) == {"k": "jane's"}


async def test_secrets_need_identity_and_methods(api: ApiServer) -> None:
    assert await call(api, "get_user_secrets", headers={}) == NOT_SECURE
    assert await call(api, "set_user_secrets", method="POST", headers={}, key="k", value="v") == NOT_SECURE
    assert await call(api, "set_user_secrets", key="k", value="v") == {
        "success": False,
        "message": "expecting POST, received GET",
        "data": None,
    }
    answer = await call(api, "set_user_secrets", method="POST", key="k", value=3)
    assert answer["success"] is False and answer["message"].startswith("Type error: 'value'")
    answer = await call(api, "set_user_secrets", method="POST", key="k", colour="red")
    assert answer["message"] == "Argument error: got an unexpected keyword argument 'colour'"


async def test_secrets_limits(api_factory) -> None:
    api = api_factory(secrets_max_value_bytes=10, secrets_max_keys=2, secrets_max_user_bytes=12)
    too_long = await call(api, "set_user_secrets", method="POST", key="k", value="x" * 11)
    assert too_long == {
        "success": False,
        "message": "secret value of 'k' is larger than 10 bytes",
        "data": None,
    }
    await call(api, "set_user_secrets", method="POST", key="a", value="1")
    await call(api, "set_user_secrets", method="POST", key="b", value="2")
    third = await call(api, "set_user_secrets", method="POST", key="c", value="3")
    assert third["message"] == "at most 2 secrets per user; delete some first"
    big = await call(api, "set_user_secrets", method="POST", key="b", value="y" * 10)
    assert big["message"] == "a user's secrets may total at most 12 bytes"
    assert json.loads((await call(api, "get_user_secrets"))["data"]) == {"a": "1", "b": "2"}
    long_key = await call(api, "set_user_secrets", method="POST", key="k" * 600, value="v")
    assert long_key["message"] == "secret key must have 1 to 512 characters"
    many = await call(api, "get_user_secrets", keys=["a", "b", "c"])
    assert many == {"success": False, "message": "at most 2 keys may be asked for", "data": {}}


async def test_secrets_stored_sealed(api: ApiServer) -> None:
    await call(api, "set_user_secrets", method="POST", key="password", value="hunter2-clear-text")
    async with api.state.db.transaction(write=False) as conn:
        row = (await conn.execute(sa.select(user_secrets))).mappings().one()
    assert row["owner"] == JANE
    assert row["key_id"] == api.state.keyring.keyring().current.id
    assert b"hunter2" not in bytes(row["sealed"]) and b"password" not in bytes(row["sealed"])


async def test_secrets_that_do_not_open_are_a_database_error(api: ApiServer) -> None:
    await call(api, "set_user_secrets", method="POST", key="k", value="v")
    async with api.state.db.transaction() as conn:
        await conn.execute(sa.update(user_secrets).values(owner="John Smith"))
    john = api.token_headers(user="John Smith")
    answer = await call(api, "get_user_secrets", headers=john)
    assert answer == {"success": False, "message": "database error", "data": {}}
    answer = await call(api, "set_user_secrets", method="POST", headers=john, key="b", value="1")
    assert answer == {"success": False, "message": "database error", "data": None}


# --- get_key_pair -----------------------------------------------------------------------------


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    directory.mkdir()
    (directory / "pub.pem").write_text("PUBLIC KEY")
    (directory / "priv.pem").write_text("PRIVATE KEY")
    return directory


async def test_key_pair(api_factory, key_dir: Path) -> None:
    api = api_factory(key_pair_dir=key_dir, server_hostnames=["panda.example.org"])
    params = {"public_key_name": "pub.pem", "private_key_name": "priv.pem"}
    denied = await call(api, "get_key_pair", **params)
    assert denied == {
        "success": False,
        "message": "Failed since 'Jane Doe' not authorized with 'k' in BAMBOO.USERS.GRIDPREF",
        "data": None,
    }
    await allow(api, JANE, "k")
    assert await call(api, "get_key_pair", **params) == {
        "success": True,
        "message": "",
        "data": {"public_key": "PUBLIC KEY", "private_key": "PRIVATE KEY"},
    }
    for missing in ("absent.pem", "../keys/pub.pem", ".hidden"):
        answer = await call(api, "get_key_pair", public_key_name="pub.pem", private_key_name=missing)
        assert answer == {
            "success": False,
            "message": f"Failed for 'Jane Doe' since {missing} is missing on panda.example.org",
            "data": None,
        }
    answer = await call(api, "get_key_pair", public_key_name="pub.pem")
    assert answer["message"] == "Argument error: missing a required argument: 'private_key_name'"
    assert await call(api, "get_key_pair", headers={}, **params) == NOT_SECURE


async def test_key_pair_without_directory(api: ApiServer) -> None:
    await allow(api, JANE, "k")
    answer = await call(api, "get_key_pair", public_key_name="pub.pem", private_key_name="priv.pem")
    assert answer["message"] == "Failed for 'Jane Doe' since pub.pem is missing on localhost"


# --- get_proxy --------------------------------------------------------------------------------


async def test_proxy(api: ApiServer) -> None:
    headers = api.cert_headers(DN)
    denied = await call(api, "get_proxy", headers=headers)
    assert denied == {
        "success": False,
        "message": "failed: 'Jane Doe' not in authorized users with 'p' in BAMBOO.USERS.GRIDPREF "
        "to get proxy",
        "data": None,
    }
    await allow(api, JANE, "p")
    assert await call(api, "get_proxy", headers=headers) == {
        "success": False,
        "message": f"'proxy' not found for {DN}",
        "data": None,
    }
    await store(api, secrets.PROXY, DN, "", "PEM no role")
    await store(api, secrets.PROXY, DN, "production", "PEM production")
    await store(api, secrets.PROXY, "/DC=org/CN=Robot", "", "PEM robot")
    assert (await call(api, "get_proxy", headers=headers))["data"] == {"user_proxy": "PEM no role"}
    answer = await call(api, "get_proxy", headers=headers, role="production")
    assert answer == {"success": True, "message": "", "data": {"user_proxy": "PEM production"}}
    answer = await call(api, "get_proxy", headers=headers, dn="/DC=org/CN=Robot/CN=proxy/CN=proxy")
    assert answer["data"] == {"user_proxy": "PEM robot"}
    answer = await call(api, "get_proxy", headers=headers, dn="/DC=org/CN=Nobody")
    assert answer["message"] == "'proxy' not found for /DC=org/CN=Nobody"
    assert await call(api, "get_proxy", headers={}) == NOT_SECURE


# --- get_access_token / get_token_key ---------------------------------------------------------


@pytest.fixture
def token_keys(tmp_path: Path) -> Path:
    path = tmp_path / "token-keys.json"
    path.write_text(json.dumps({"pilot_server": ["old-key", "new-key"]}))
    return path


async def test_access_token(api_factory, token_keys: Path) -> None:
    api = api_factory(token_keys_file=token_keys)
    denied = await call(api, "get_access_token", client_name="pilot_server", token_key="new-key")
    assert denied["message"] == (
        "failed: 'Jane Doe' not in authorized users with 'p' in BAMBOO.USERS.GRIDPREF to get access token"
    )
    await allow(api, JANE, "p")
    answer = await call(api, "get_access_token", client_name="pilot_server", token_key="new-key")
    assert answer == {"success": False, "message": "'token' not found for pilot_server", "data": None}
    await store(api, secrets.TOKEN, "pilot_server", "", "eyJ.token")
    for key in ("old-key", "new-key"):
        answer = await call(api, "get_access_token", client_name="pilot_server", token_key=key)
        assert answer == {"success": True, "message": "", "data": {"user_proxy": "eyJ.token"}}
    for params in ({"token_key": "wrong"}, {}):
        answer = await call(api, "get_access_token", client_name="pilot_server", **params)
        invalid = "failed since token key is invalid for pilot_server"
        assert answer == {"success": False, "message": invalid, "data": None}
    # A client without configured keys needs none.
    await store(api, secrets.TOKEN, "other_client", "", "eyJ.other")
    answer = await call(api, "get_access_token", client_name="other_client")
    assert answer["data"] == {"user_proxy": "eyJ.other"}
    answer = await call(api, "get_access_token")
    assert answer["message"] == "Argument error: missing a required argument: 'client_name'"


async def test_token_key(api_factory, token_keys: Path) -> None:
    api = api_factory(token_keys_file=token_keys)
    denied = await call(api, "get_token_key", client_name="pilot_server")
    assert denied == {
        "success": False,
        "message": "Denied since 'Jane Doe' not authorized with 't' in BAMBOO.USERS.GRIDPREF",
        "data": None,
    }
    await allow(api, JANE, "t")
    assert await call(api, "get_token_key", client_name="pilot_server") == {
        "success": True,
        "message": "",
        "data": {"tokenKey": "new-key"},
    }
    answer = await call(api, "get_token_key", client_name="unknown")
    assert answer == {"success": False, "message": "Token key is missing for 'unknown'", "data": None}
    assert await call(api, "get_token_key", headers={}, client_name="x") == NOT_SECURE


async def test_allowances_are_per_letter(api: ApiServer) -> None:
    await allow(api, JANE, "t")
    answer = await call(api, "get_proxy")
    assert answer["message"].startswith("failed: 'Jane Doe' not in authorized users with 'p'")
    async with api.state.db.transaction(write=False) as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(cached_credentials)) == 0
