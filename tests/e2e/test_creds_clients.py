"""Secrets and credentials from the real clients against the real server process: panda-client
2.2.0's set_user_secret / get_user_secrets, pbook's secret commands, and Harvester's credential
calls (get_proxy, get_token_key) after the admin commands that allow and store them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Deployment
from tests.e2e.test_task_commands_clients import pbook

pytestmark = pytest.mark.e2e

# panda-client's extended answers are (success, data); set_user_secrets has no data.
SET = [0, [True, None]]


def test_panda_client_and_pbook_secrets(deployment: Deployment, tmp_path: Path) -> None:
    user = deployment.user
    assert user("get_user_secrets") == [0, [True, {}]]
    assert user("set_user_secret", "test_key", "test_value") == SET
    assert user("set_user_secret", "other", "2") == SET
    assert user("get_user_secrets") == [0, [True, {"test_key": "test_value", "other": "2"}]]
    assert user("set_user_secret", "other", None) == SET
    assert user("get_user_secrets") == [0, [True, {"test_key": "test_value"}]]

    output = pbook(deployment, "set_secret", "mykey", "myvalue")
    secret_file = tmp_path / "config.txt"
    secret_file.write_text("file body")
    pbook(deployment, "set_secret", "cfg", str(secret_file), "--is_file")
    listed = pbook(deployment, "list_secrets")
    assert "mykey" in listed and "myvalue" in listed and "cfg" in listed
    secrets = user("get_user_secrets")[1][1]
    assert secrets["___file___:cfg"] == "ZmlsZSBib2R5"  # base64 of the file, as pbook sends it
    pbook(deployment, "delete_secret", "cfg")
    assert "___file___:cfg" not in user("get_user_secrets")[1][1]
    output = pbook(deployment, "delete_all_secrets")
    assert user("get_user_secrets") == [0, [True, {}]]
    assert "No secrets" in pbook(deployment, "list_secrets"), output
    # The values went through the server (set, listed, read back) and none of them was logged.
    for value in ("test_value", "myvalue", "ZmlsZSBib2R5"):
        assert not any(value in line for line in deployment.server.output), value


def test_harvester_credential_calls(deployment: Deployment, tmp_path: Path) -> None:
    server, harvester = deployment.server, deployment.harvester
    proxy = tmp_path / "proxy.pem"
    proxy.write_text("-----BEGIN CERTIFICATE-----\nproxy\n-----END CERTIFICATE-----\n")
    denied = harvester.http.get("/creds/get_proxy", params={"role": "production"}).json()
    assert denied["message"] == (
        "failed: 'Harvester Robot' not in authorized users with 'p' in BAMBOO.USERS.GRIDPREF to get proxy"
    )
    server.admin("user", "allow", "Harvester Robot", "--proxy", "--token-key")
    server.admin("secrets", "put-proxy", str(proxy), "--dn", "/DC=org/CN=Robot", "--role", "production")
    answer = harvester.http.get("/creds/get_proxy", params={"role": "production", "dn": "/DC=org/CN=Robot"})
    assert answer.json() == {"success": True, "message": "", "data": {"user_proxy": proxy.read_text()}}
    missing = harvester.http.get("/creds/get_token_key", params={"client_name": "pilot_server"}).json()
    assert missing == {"success": False, "message": "Token key is missing for 'pilot_server'", "data": None}
    # A rotation while the server runs: it reads the new keyring and still opens every value.
    assert "retired key" in server.admin("secrets", "rotate-key")
    answer = harvester.http.get("/creds/get_proxy", params={"role": "production", "dn": "/DC=org/CN=Robot"})
    assert answer.json()["data"] == {"user_proxy": proxy.read_text()}
    assert deployment.user("set_user_secret", "k", "v") == SET
    assert deployment.user("get_user_secrets") == [0, [True, {"k": "v"}]]
    assert not any("-----BEGIN CERTIFICATE-----" in line for line in server.output)
