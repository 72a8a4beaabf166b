"""Pilot 3.11's legacy calls against the real server over HTTPS: getJob, updateJob and getStatus
sent as its request2 sends them (urllib, gzip JSON body without Content-Encoding, no Accept header,
bearer token with a production Origin), answers parsed as it parses them."""

from __future__ import annotations

import gzip
import json
import ssl
import urllib.request
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from bamboo.auth.local_issuer import LocalIssuer
from tests.e2e.conftest import RunningServer, wait_for
from tests.tasks import NO_INPUT_TASK, QUEUE

pytestmark = pytest.mark.e2e


def request2(server: RunningServer, method: str, data: dict[str, Any], token: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{server.https}/server/panda/{method}",
        gzip.compress(json.dumps(data).encode()),
        headers={
            "Authorization": f"Bearer {token}",
            "Origin": "bamboo.production",
            "User-Agent": "pilot/3.11.5.1 (Python 3.11; Linux x86_64)",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, context=ssl.create_default_context(cafile=server.ca)) as answer:
        text = answer.read().decode()
    if text.startswith("{") and text.endswith("}"):
        return json.loads(text)
    return {key: values[0] for key, values in parse_qs(text).items()}


def test_pilot_gets_runs_and_finishes_a_job(server: RunningServer) -> None:
    server.admin("queue", "add", QUEUE, "--type", "unified")
    # Tokens signed with the server's key in this process: two fewer CLI start-ups.
    issuer_url = httpx.get(f"{server.http}/.well-known/openid-configuration", timeout=10).json()["issuer"]
    issuer = LocalIssuer.load_or_create(server.home, issuer_url)
    user = issuer.issue_token(user="Test User")
    pilot = issuer.issue_token(user="Pilot Robot", role="production")
    submitted = httpx.post(
        f"{server.https}/api/v1/task/submit",
        json={"task_parameters": {**NO_INPUT_TASK, "nEvents": 1, "nEventsPerJob": 1}},
        headers={"Authorization": f"Bearer {user}", "Origin": "bamboo"},
        verify=ssl.create_default_context(cafile=server.ca),
        timeout=30,
    ).json()
    assert submitted["success"] is True, submitted
    asked = {"siteName": QUEUE, "computingElement": QUEUE, "prodSourceLabel": "user", "node": "wn1"}
    job = wait_for(
        "a job from getJob",
        lambda: request2(server, "getJob", {**asked, "diskSpace": 10000, "mem": 2000}, pilot),
        lambda answer: answer["StatusCode"] == 0,
        seconds=30,
    )
    assert job["taskID"] == submitted["data"] and job["prodSourceLabel"] == "user"
    base = {"jobId": job["PandaID"], "siteName": QUEUE, "node": "wn1", "attemptNr": job["attemptNr"]}
    running = request2(server, "updateJob", {**base, "state": "running", "startTime": 1_796_000_000}, pilot)
    assert running == {"StatusCode": 0, "command": "NULL"}
    final = {**base, "state": "finished", "transExitCode": 0, "pilotErrorCode": 0, "endTime": 1_796_000_009}
    assert request2(server, "updateJob", final, pilot)["StatusCode"] == 0
    status = wait_for(
        "the job finished",
        lambda: request2(server, "getStatus", {"ids": str(job["PandaID"])}, pilot),
        lambda answer: answer["status"] == "finished",
        seconds=20,
    )
    assert status == {"status": "finished", "attemptNr": str(job["attemptNr"]), "StatusCode": "0"}
