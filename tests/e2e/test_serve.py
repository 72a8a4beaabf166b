"""The real server process over real HTTP and HTTPS, with credentials from the admin commands."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import BAMBOO, RunningServer, start_server, whole_response

# Longer than uvicorn's default keep-alive timeout, shorter than the request-head deadline.
IDLE_SECONDS = 6.5

pytestmark = pytest.mark.e2e


def test_is_alive_over_http(server: RunningServer) -> None:
    response = httpx.get(f"{server.http}/api/v1/system/is_alive", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"success": True, "message": "", "data": None}
    assert response.headers["content-type"] == "application/json"


def test_an_idle_kept_alive_connection_serves_its_next_request(server: RunningServer) -> None:
    """A connection idle for longer than uvicorn's default keep-alive (5 s) but well within the
    request-head deadline (30 s) is still open: closing it earlier races with the client's next
    request on it."""
    request = b"GET /api/v1/system/is_alive HTTP/1.1\r\nHost: localhost\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        for pause in (IDLE_SECONDS, 0):
            sock.sendall(request)
            answer = whole_response(sock)
            assert answer.startswith(b"HTTP/1.1 200"), answer
            time.sleep(pause)


def test_token_over_https(server: RunningServer) -> None:
    token = server.admin("token", "issue", "--user", "Test User").strip()
    response = httpx.get(
        f"{server.https}/api/v1/system/get_user_attributes",
        headers={"Authorization": f"Bearer {token}", "Origin": "bamboo", "Accept": "application/json"},
        verify=ssl.create_default_context(cafile=server.ca),
        timeout=10,
    )
    body = response.json()
    assert body["success"] is True, body
    assert body["data"]["user_dn_raw"] == "Test User/CN=nickname:testuser"


def test_production_token_file(server: RunningServer, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    server.admin(
        "token", "issue", "--user", "Harvester Robot", "--role", "production", "--out", str(token_file)
    )
    assert not token_file.read_text().endswith("\n")
    assert token_file.stat().st_mode & 0o777 == 0o600
    response = httpx.get(
        f"{server.https}/api/v1/system/get_user_attributes",
        headers={"Authorization": f"Bearer {token_file.read_text()}", "Origin": "bamboo.production"},
        verify=ssl.create_default_context(cafile=server.ca),
        timeout=10,
    )
    assert response.json()["data"]["is_production_user"] is True


def _client_context(server: RunningServer, prefix: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=server.ca)
    context.load_cert_chain(f"{prefix}.pem", f"{prefix}.key")
    return context


def test_certificate_over_https(server: RunningServer, tmp_path: Path) -> None:
    prefix = tmp_path / "user"
    server.admin(
        "cert",
        "issue",
        "--dn",
        "/DC=org/DC=example/OU=Users/CN=jdoe/CN=123456/CN=John Doe",
        "--out",
        str(prefix),
    )
    response = httpx.get(
        f"{server.https}/api/v1/system/get_user_attributes",
        verify=_client_context(server, prefix),
        timeout=10,
    )
    data = response.json()["data"]
    assert data["user_dn_raw"] == "/DC=org/DC=example/OU=Users/CN=jdoe/CN=123456/CN=John Doe"
    assert data["is_production_user"] is False


def test_voms_proxy_over_https(server: RunningServer, tmp_path: Path) -> None:
    prefix = tmp_path / "proxy"
    server.admin(
        "cert",
        "issue",
        "--dn",
        "/DC=org/DC=example/CN=Prod Manager",
        "--out",
        str(prefix),
        "--proxy",
        "--fqan",
        "/bamboo/Role=production",
    )
    response = httpx.get(
        f"{server.https}/api/v1/system/get_user_attributes",
        verify=_client_context(server, prefix),
        timeout=10,
    )
    data = response.json()["data"]
    assert data["user_dn_raw"].startswith("/DC=org/DC=example/CN=Prod Manager/CN=")
    assert data["fqans"] == ["/bamboo/Role=production"]
    assert data["is_production_user"] is True


def test_limited_proxy_is_refused(server: RunningServer, tmp_path: Path) -> None:
    prefix = tmp_path / "limited"
    server.admin("cert", "issue", "--dn", "/DC=org/CN=Larry", "--out", str(prefix), "--proxy", "--limited")
    response = httpx.get(
        f"{server.https}/api/v1/system/get_user_attributes",
        verify=_client_context(server, prefix),
        timeout=10,
    )
    assert response.json()["message"] == "SSL secure connection is required"


def test_admin_commands_act_on_the_servers_database(server: RunningServer) -> None:
    server.admin("queue", "add", "E2E_QUEUE", "--type", "analysis", "--maxrss", "4000")
    specs = httpx.get(f"{server.http}/api/v1/metaconfig/get_site_specs", timeout=10).json()["data"]
    assert specs["E2E_QUEUE"]["maxrss"] == 4000
    server.admin("user", "ban", "Test User")
    token = server.admin("token", "issue", "--user", "Test User").strip()
    response = httpx.get(
        f"{server.https}/api/v1/system/is_alive",
        headers={"Authorization": f"Bearer {token}", "Origin": "bamboo"},
        verify=ssl.create_default_context(cafile=server.ca),
        timeout=10,
    )
    assert response.status_code == 403
    assert response.text == "ERROR : Test User is banned"
    server.admin("user", "unban", "Test User")
    response = httpx.get(
        f"{server.https}/api/v1/system/is_alive",
        headers={"Authorization": f"Bearer {token}", "Origin": "bamboo"},
        verify=ssl.create_default_context(cafile=server.ca),
        timeout=10,
    )
    assert response.status_code == 200


def test_sigterm_exits_zero(server: RunningServer) -> None:
    assert httpx.get(f"{server.http}/api/v1/system/is_alive", timeout=10).status_code == 200
    assert server.stop() == 0
    assert any("bamboo.server: stopped" in line for line in server.output), "".join(server.output)


def test_home_files_have_safe_permissions(server: RunningServer) -> None:
    for name in ("ca.key", "server.key", "token-signing.key"):
        assert (server.home / name).stat().st_mode & 0o777 == 0o600, name
    assert server.home.stat().st_mode & 0o777 == 0o700


def test_two_workers_share_the_ports(tmp_path: Path) -> None:
    running = start_server(tmp_path / "home", None, "--workers", "2")
    try:
        for _ in range(20):
            assert httpx.get(f"{running.http}/api/v1/system/is_alive", timeout=10).status_code == 200
    finally:
        assert running.stop() == 0


def test_agents_in_their_own_process(tmp_path: Path) -> None:
    home = tmp_path / "home"
    running = start_server(home, None, "--no-agents")
    agents = None
    try:
        running.admin("queue", "add", "AGENT_PQ", "--type", "unified")
        token = running.admin("token", "issue", "--user", "Test User").strip()
        headers = {"Authorization": f"Bearer {token}", "Origin": "bamboo"}
        verify = ssl.create_default_context(cafile=running.ca)
        params = {
            "taskName": "user.testuser.agents.v1",
            "vo": "bamboo",
            "prodSourceLabel": "user",
            "transPath": "run",
            "noInput": True,
            "nEvents": 2,
            "nEventsPerJob": 1,
            "jobParameters": [{"type": "constant", "value": "echo"}],
            "log": {
                "type": "template",
                "param_type": "log",
                "dataset": "user.testuser.agents.log/",
                "value": "l.${SN}",
            },
        }
        with httpx.Client(base_url=running.https, headers=headers, verify=verify, timeout=10) as client:
            task_id = client.post("/api/v1/task/submit", json={"task_parameters": params}).json()["data"]
            assert (
                client.get("/api/v1/task/get_status", params={"task_id": task_id}).json()["data"]
                == "registered"
            )
            agents = subprocess.Popen(
                [*BAMBOO, "agents", "--home", str(home)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            deadline = time.monotonic() + 30
            status = "registered"
            # Both jobs are the task's scouts (no skipScout), so it waits in scouting.
            while status != "scouting" and time.monotonic() < deadline:
                time.sleep(0.2)
                status = client.get("/api/v1/task/get_status", params={"task_id": task_id}).json()["data"]
            assert status == "scouting"
            assert (
                len(client.get("/api/v1/task/get_job_ids", params={"task_id": task_id}).json()["data"]) == 2
            )
        agents.send_signal(signal.SIGTERM)
        assert agents.wait(timeout=30) == 0
    finally:
        if agents is not None and agents.poll() is None:
            agents.kill()
        assert running.stop() == 0
