"""async_process against the real server process: the process registers itself as a machine, its
agent runs a sleep_echo request, and a clean stop deletes its machine row; with several workers
every process is a machine and a grep runs on each."""

from __future__ import annotations

import json
import socket
import sqlite3
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import RunningServer, start_server, wait_for

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


def test_every_process_of_a_multi_worker_server_greps_its_logs(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    (log_dir / "panda-server.log").write_text("INFO started\nERROR job 42 failed\n")
    env = {"BAMBOO_ALLOW_ASYNC_REQUEST": json.dumps(["Test User"]), "BAMBOO_LOG_DIR": str(log_dir)}
    running = start_server(tmp_path / "home", None, "--workers", "2", env=env)
    try:
        token = running.admin("token", "issue", "--user", "Test User").strip()
        headers = {"Authorization": f"Bearer {token}", "Origin": "bamboo", "Accept": "application/json"}
        verify = ssl.create_default_context(cafile=running.ca)
        with httpx.Client(
            base_url=f"{running.https}/api/v1", headers=headers, verify=verify, timeout=30
        ) as client:

            def result(request_id: str) -> dict[str, Any]:
                answer = client.get("/async_process/get_result", params={"request_id": request_id})
                return answer.json()["data"]

            def grep_all(service: str) -> dict[str, Any]:
                params = {"pattern": "ERROR", "log_filename": "panda-server.log", "service_name": service}
                answer = client.post("/async_process/submit_grep_request", json=params).json()
                if not answer["success"]:
                    return {"expected_machines": []}
                return {"request_id": answer["data"]["request_id"], **result(answer["data"]["request_id"])}

            # Two serving workers and the agents process, each registered by its first heartbeat;
            # a request expects the machines alive when it is submitted.
            for service, count in (("bamboo-server", 2), ("bamboo-agents", 1)):
                submitted = wait_for(
                    f"{count} machines of {service}",
                    lambda service=service: grep_all(service),
                    lambda data, count=count: len(data["expected_machines"]) == count,
                )
                data = wait_for(
                    f"the grep on {service}",
                    lambda submitted=submitted: result(submitted["request_id"]),
                    lambda data: data["overall_status"] == "complete",
                )
                assert {row["machine_name"] for row in data["results"]} == set(data["expected_machines"])
                assert {(row["status"], row["result"]) for row in data["results"]} == {
                    ("done", "ERROR job 42 failed")
                }
    finally:
        assert running.stop() == 0
