"""A pilot that hangs up before reading its acquire_jobs answer, and one whose answer is lost.

The first must not leave the jobs its request claimed in ``sent``: the server sees the closed
connection before it commits and rolls the claim back. An answer lost after the commit (the pilot
vanished with it) cannot be noticed there; the `sent` watchdog fails such jobs with
jobDispatcherErrorCode 102 and their task makes new ones. The server runs with a short `sent`
timeout so that recovery is observed.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.fault.conftest import MakeDeployment
from tests.fault.harness import (
    LOOPBACK,
    QUEUE,
    REQUEST_SECONDS,
    START_SECONDS,
    BambooProcess,
    Deployment,
    LoadSize,
    count_jobs,
    job_outcomes,
    poll,
    run_load,
    submit_tasks,
)

pytestmark = pytest.mark.fault

JOBS = 30
HANG_UPS = 10
JOBS_PER_HANG_UP = 3
VANISHED_JOBS = 2
SIZE = LoadSize(clients=5, jobs=JOBS, tasks=1, deadline_seconds=600)
ROLLED_BACK = "client hung up before the answer of /api/v1/pilot/acquire_jobs"
SENT_TIMEOUT_SECONDS = 6
SHORT_SENT_TIMEOUT = {
    "BAMBOO_JOB_SENT_TIMEOUT_MINUTES": str(SENT_TIMEOUT_SECONDS / 60),
    "BAMBOO_JOB_WATCHDOG_PERIOD_SECONDS": "2",
    # The rollbacks are counted in the server's log, where they are written at INFO.
    "BAMBOO_LOG_LEVEL": "info",
}


def acquire_request(n_jobs: int) -> dict[str, object]:
    return {"site_name": QUEUE, "prod_source_label": "user", "node": "wn-gone", "n_jobs": n_jobs}


async def hang_up(server: BambooProcess, deployment: Deployment) -> None:
    """Send acquire_jobs and close the connection at once, without reading anything."""
    body = json.dumps(acquire_request(JOBS_PER_HANG_UP)).encode()
    head = "".join(
        [
            "POST /api/v1/pilot/acquire_jobs HTTP/1.1\r\n",
            f"Host: {LOOPBACK}:{server.http_port}\r\n",
            *(f"{name}: {value}\r\n" for name, value in deployment.pilot_headers.items()),
            "Content-Type: application/json\r\n",
            f"Content-Length: {len(body)}\r\n\r\n",
        ]
    )
    _, writer = await asyncio.open_connection(LOOPBACK, server.http_port)
    writer.write(head.encode() + body)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def vanish_with_jobs(server: BambooProcess, deployment: Deployment) -> list[int]:
    """Acquire jobs, read the answer and never report: an answer lost after the commit."""
    async with httpx.AsyncClient(headers=deployment.pilot_headers, timeout=REQUEST_SECONDS) as client:
        response = await client.post(
            f"{server.url}/api/v1/pilot/acquire_jobs", json=acquire_request(VANISHED_JOBS)
        )
    body = response.json()
    assert body["success"] is True, body
    return [job["PandaID"] for job in body["data"]["jobs"]]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_hung_up_and_lost_answers(make_deployment: MakeDeployment, backend: str) -> None:
    deployment = await make_deployment(backend, **SHORT_SENT_TIMEOUT)
    server = deployment.server()
    await server.start()
    task_ids = await submit_tasks(deployment, JOBS, 1)

    async def all_activated() -> bool:
        return await count_jobs(deployment.db, task_ids, "activated") == JOBS

    await poll(f"{JOBS} activated jobs", all_activated, START_SECONDS)

    for _ in range(HANG_UPS):
        await hang_up(server, deployment)

    async def answered() -> bool:
        # Done when every request was rolled back, or as soon as one claimed jobs for nobody.
        rolled_back = server.log_count(ROLLED_BACK) >= HANG_UPS
        return rolled_back or await count_jobs(deployment.db, task_ids, "sent") > 0

    await poll(f"the server to handle {HANG_UPS} acquire_jobs nobody read", answered, START_SECONDS)
    assert await count_jobs(deployment.db, task_ids, "sent") == 0
    assert server.log_count(ROLLED_BACK) == HANG_UPS
    assert await count_jobs(deployment.db, task_ids, "activated") == JOBS

    vanished = await vanish_with_jobs(server, deployment)
    assert len(vanished) == VANISHED_JOBS
    result = await run_load(
        deployment, f"{backend}, hung-up and lost acquire_jobs answers", SIZE, task_ids=task_ids
    )
    result.check(deployment)
    recovered = await job_outcomes(deployment.db, vanished)
    assert recovered == dict.fromkeys(vanished, ("failed", 102))
    assert result.watchdog_recovered >= VANISHED_JOBS
