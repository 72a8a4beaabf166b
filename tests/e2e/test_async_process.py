"""async_process against the real server process: the process registers itself as a machine, its
agent runs a sleep_echo request, and a clean stop deletes its machine row."""

from __future__ import annotations

import socket
import sqlite3
import ssl
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import RunningServer, wait_for

pytestmark = pytest.mark.e2e


def test_the_server_process_runs_a_sleep_echo_request(server: RunningServer) -> None:
    token = server.admin("token", "issue", "--user", "Prod Operator", "--role", "production").strip()
    headers = {
        "Authorization": f"Bearer {token}",
        "Origin": "bamboo.production",
        "Accept": "application/json",
    }
    verify = ssl.create_default_context(cafile=server.ca)
    params = {"service_name": "bamboo-server", "message": "ping", "seconds": 0}
    with httpx.Client(
        base_url=f"{server.https}/api/v1", headers=headers, verify=verify, timeout=30
    ) as client:

        def submit() -> dict[str, Any]:
            return client.post("/async_process/submit_sleep_echo_request", json=params).json()

        # The first heartbeat, which registers the process, runs as the server starts.
        submitted = wait_for("the server's machine row", submit, lambda answer: answer["success"])
        request_id = submitted["data"]["request_id"]
        data = wait_for(
            "the sleep_echo result",
            lambda: client.get("/async_process/get_result", params={"request_id": request_id}).json()["data"],
            lambda data: data["overall_status"] == "complete",
        )
    (row,) = data["results"]
    machine = f"{socket.gethostname()}:{server.process.pid}:"
    assert data["expected_machines"] == [row["machine_name"]]
    assert row["machine_name"].startswith(machine)
    assert (row["status"], row["result"], row["attempts"], row["return_code"]) == ("done", "ping", 1, 0)
    assert server.stop() == 0
    if server.database_url is None:
        with sqlite3.connect(server.home / "bamboo.db") as conn:
            assert conn.execute("SELECT count(*) FROM machines").fetchone() == (0,)
