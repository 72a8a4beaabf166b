"""The real panda-client and a Harvester-like resource side against the real server process.

The user side is panda-client from PyPI, configured only through its environment variables and run in a
child process (tests/e2e/panda_client_steps.py) because it reads that environment at import time. The
resource side makes exactly the calls Harvester's PandaCommunicator makes, with its payloads, a
production token and the server's CA. Both talk HTTPS to ``bamboo serve`` on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import re
import select
import ssl
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.e2e.conftest import RunningServer, bamboo, start_server
from tests.tasks import NO_INPUT_TASK, QUEUE, input_task

pytestmark = pytest.mark.e2e

STEPS = Path(__file__).with_name("panda_client_steps.py")
HARVESTER_ID = "e2e_harvester"
ACTIVE = {"registered", "defined", "ready", "scouting", "running"}
CALL_SECONDS = 60
# What Harvester's JobSpec.convert_job_json and its output bookkeeping read from a fetched job.
HARVESTER_JOB_KEYS = {
    "PandaID",
    "taskID",
    "attemptNr",
    "jobsetID",
    "currentPriority",
    "coreCount",
    "resource_type",
    "outFiles",
    "scopeOut",
    "scopeLog",
    "logFile",
    "logGUID",
    "realDatasets",
    "ddmEndPointOut",
}
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T], done: Callable[[T], bool], seconds: float = 30) -> T:
    """Call probe every 0.2 s until done accepts its value; fail after the given time."""
    deadline = time.monotonic() + seconds
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}; last value: {value!r}")
        time.sleep(0.2)


class PandaClient:
    """pandaclient.Client in a child process whose environment points it at the server under test."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, str(STEPS)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=env,
            )

    def __call__(self, function: str, *args: Any, **kwargs: Any) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"call": function, "args": args, "kwargs": kwargs}) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], CALL_SECONDS)
        line = self.process.stdout.readline() if ready else ""
        assert line, f"panda-client gave no answer to {function}:\n{self.log.read_text()}"
        reply = json.loads(line)
        assert "error" not in reply, reply["error"]
        return reply["result"]

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Harvester:
    """Harvester's PandaCommunicator calls as it sends them: JSON POSTs, repeated query keys on GETs."""

    def __init__(self, base_url: str, token: str, ca: str) -> None:
        self.http = httpx.Client(
            base_url=f"{base_url}/api/v1",
            headers={
                "Authorization": f"Bearer {token}",
                "Origin": "bamboo.production",
                "Accept": "application/json",
                "Connection": "close",
            },
            verify=ssl.create_default_context(cafile=ca),
            timeout=30,
        )

    def _body(self, response: httpx.Response) -> dict[str, Any]:
        assert response.status_code == 200, response.text
        return response.json()

    def get_jobs(self, n_jobs: int) -> list[dict[str, Any]]:
        body = self._body(
            self.http.post(
                "/pilot/acquire_jobs",
                json={
                    "site_name": QUEUE,
                    "node": "wn01",
                    "prod_source_label": "user",
                    "computing_element": "wn01",
                    "n_jobs": n_jobs,
                    "scheduler_id": f"harvester-{HARVESTER_ID}",
                },
            )
        )
        if body["data"] is None:
            assert body == {"success": False, "message": "No jobs in PanDA", "data": None}
            return []
        assert body["data"]["StatusCode"] == 0, body
        jobs = body["data"]["jobs"]
        for job in jobs:
            assert HARVESTER_JOB_KEYS <= job.keys(), HARVESTER_JOB_KEYS - job.keys()
            # Harvester refuses a job whose log file is not among its outputs.
            assert job["logFile"] in job["outFiles"].split(","), job
        return jobs

    def update_jobs(self, job_list: list[dict[str, Any]]) -> list[dict[str, Any]]:
        body = self._body(
            self.http.post(
                "/pilot/update_jobs_bulk", json={"job_list": job_list, "harvester_id": HARVESTER_ID}
            )
        )
        assert body["success"] is True, body
        assert isinstance(body["data"], list) and len(body["data"]) == len(job_list), body
        return [envelope["data"] for envelope in body["data"]]

    def check_jobs(self, job_ids: list[int]) -> list[dict[str, Any]]:
        body = self._body(self.http.get("/job/get_status", params={"job_ids": job_ids}))
        assert body["success"] is True, body
        return body["data"]

    def pilot_job_status(self, job_ids: list[int]) -> list[dict[str, Any]]:
        body = self._body(self.http.get("/pilot/get_job_status", params={"job_ids": job_ids}))
        assert body["success"] is True, body
        return body["data"]

    def acquire(self, count: int) -> list[dict[str, Any]]:
        """Fetch until count jobs came (the agents may still be making them)."""
        jobs: list[dict[str, Any]] = []

        def probe() -> int:
            jobs.extend(self.get_jobs(count - len(jobs)))
            return len(jobs)

        wait_for(f"{count} jobs at {QUEUE}", probe, lambda got: got >= count)
        return jobs

    def run(self, job: dict[str, Any], final: str = "finished") -> None:
        """Report the job running and then in its final state, as the propagator does, and check it."""
        common = {
            "job_id": job["PandaID"],
            "site_name": QUEUE,
            "attempt_nr": job["attemptNr"],
            "core_count": job["coreCount"],
            "node": "wn01",
        }
        running = self.update_jobs([{**common, "job_status": "running", "job_sub_status": "running"}])
        assert running == [{"StatusCode": 0, "command": "NULL"}]
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        report = {**common, "job_status": final, "job_sub_status": final, "start_time": now, "end_time": now}
        if final == "finished":
            report["job_output_report"] = json.dumps(
                {
                    lfn: {
                        "guid": str(uuid.uuid4()),
                        "fsize": 1024,
                        "adler32": f"{zlib.adler32(lfn.encode()):08x}",
                    }
                    for lfn in job["outFiles"].split(",")
                }
            )
        else:
            report |= {"pilot_error_code": 1305, "pilot_error_diag": "payload failed"}
        assert self.update_jobs([report]) == [{"StatusCode": 0, "command": "NULL"}]
        statuses = wait_for(
            f"job {job['PandaID']} leaving holding",
            lambda: self.check_jobs([job["PandaID"]]),
            lambda got: got[0]["status"] != "holding",
        )
        assert statuses == [{"status": final, "command": None}]
        assert self.pilot_job_status([job["PandaID"]]) == [
            {"job_id": job["PandaID"], "status": final, "attempt_number": job["attemptNr"]}
        ]

    def close(self) -> None:
        self.http.close()


@dataclass
class Deployment:
    server: RunningServer
    user: PandaClient
    harvester: Harvester

    def register_dataset(self, name: str, files: list[str]) -> None:
        args = [arg for spec in files for arg in ("--file", spec)]
        self.server.admin("data", "register", name, *args)

    def submit(self, params: dict[str, Any], parent_tid: int | None = None) -> int:
        status, (code, message) = self.user("insertTaskParams", params, parent_tid=parent_tid)
        assert (status, code) == (0, 0), message
        match = re.fullmatch(r"succeeded\. new jediTaskID=(\d+)", message)
        assert match, message
        return int(match.group(1))

    def task_status(self, task_id: int) -> str:
        status, value = self.user("getTaskStatus", task_id)
        assert status == 0, value
        return value

    def job_ids(self, task_id: int, count: int) -> list[int]:
        def probe() -> list[int]:
            status, ids = self.user("getPandaIDsWithTaskID", task_id)
            assert status == 0, ids
            return ids

        return wait_for(f"{count} jobs of task {task_id}", probe, lambda ids: len(ids) >= count, seconds=10)

    def wait_task(self, task_id: int, status: str) -> None:
        wait_for(f"task {task_id} {status}", lambda: self.task_status(task_id), lambda got: got == status, 20)


@pytest.fixture
def transport() -> str:
    """panda-client's default transport spawns the curl binary; tests may ask for its urllib one."""
    return "curl"


@pytest.fixture
def deployment(tmp_path: Path, backend_url: str | None, transport: str) -> Iterator[Deployment]:
    home = tmp_path / "home"
    if backend_url:
        bamboo("db", "upgrade", "--home", str(home), "--database-url", backend_url)
    with ExitStack() as cleanup:
        server = start_server(home, backend_url)
        cleanup.callback(server.stop)
        server.admin("queue", "add", QUEUE, "--type", "unified")
        user_token = server.admin("token", "issue", "--user", "Test User").strip()
        robot_token = server.admin(
            "token", "issue", "--user", "Harvester Robot", "--role", "production"
        ).strip()
        config_root = tmp_path / "pathena"
        config_root.mkdir()
        # Only the settings below may steer panda-client, whatever the caller's shell has.
        inherited = {
            key: value for key, value in os.environ.items() if not key.startswith(("PANDA", "OIDC_"))
        }
        user = PandaClient(
            {
                **inherited,
                "PANDA_URL_SSL": f"{server.https}/server/panda",
                "PANDA_URL": f"{server.http}/server/panda",
                "PANDACACHE_URL": f"{server.https}/server/panda",
                # No DNS round trips to rewrite 127.0.0.1 into a host name.
                "PANDA_BEHIND_REAL_LB": "1",
                "PANDA_AUTH": "oidc",
                "PANDA_AUTH_VO": "bamboo",
                "PANDA_AUTH_ID_TOKEN": user_token,
                "PANDA_CONFIG_ROOT": str(config_root),
                # The server's certificate comes from its own CA, which curl is not told about.
                "PANDA_VERIFY_HOST": "off",
                **({"PANDA_USE_NATIVE_HTTPLIB": "1"} if transport == "urllib" else {}),
            },
            tmp_path / "panda-client.log",
        )
        cleanup.callback(user.close)
        harvester = Harvester(server.https, robot_token, server.ca)
        cleanup.callback(harvester.close)
        yield Deployment(server, user, harvester)


# urllib differs on the wire: JSON content type and a "{}" body on GETs, no gzip, Python's User-Agent.
@pytest.mark.parametrize("transport", ["curl", "urllib"])
def test_no_input_task_from_panda_client_to_done(deployment: Deployment) -> None:
    user, harvester = deployment.user, deployment.harvester
    assert user("hello") == [0, ""]
    task_id = deployment.submit(NO_INPUT_TASK)
    assert task_id >= 10_000_000
    assert deployment.task_status(task_id) in ACTIVE
    job_ids = deployment.job_ids(task_id, 2)
    assert len(job_ids) == 2

    jobs = [harvester.acquire(1)[0], harvester.acquire(1)[0]]
    assert sorted(job["PandaID"] for job in jobs) == sorted(job_ids)
    assert all(job["taskID"] == task_id and job["inFiles"] == "" for job in jobs)
    assert harvester.get_jobs(1) == []
    for job in jobs:
        harvester.run(job)

    deployment.wait_task(task_id, "done")
    status, records = user("getJobStatus", job_ids)
    assert status == 0
    assert [(record["PandaID"], record["jobStatus"]) for record in records] == [
        (job_id, "finished") for job_id in job_ids
    ]
    assert all(record["jediTaskID"] == task_id for record in records)
    # panda-client turned the server's {"__datetime__": ...} objects back into datetimes.
    assert all(datetime.fromisoformat(record["modificationTime"]) for record in records)
    status, tasks = user("get_tasks_detailed_info_since", filters={"jediTaskID": str(task_id)})
    assert status == 0
    (task,) = tasks
    assert (task["jediTaskID"], task["userName"], task["status"], task["nFilesFinished"]) == (
        task_id,
        "Test User",
        "done",
        2,
    )


def test_input_task_with_a_retry_then_a_chained_task(deployment: Deployment) -> None:
    user, harvester = deployment.user, deployment.harvester
    lfns = [f"data.{i:02d}.root" for i in range(10)]
    deployment.register_dataset(
        "user.testuser.input.v1", [f"{lfn}:{1000 + i}:100" for i, lfn in enumerate(lfns)]
    )
    task_id = deployment.submit(input_task("user.testuser.input.v1", "user.testuser.ana.v1", 3))
    job_ids = deployment.job_ids(task_id, 4)
    assert len(job_ids) == 4

    jobs = sorted(harvester.acquire(4), key=lambda job: job["PandaID"])
    assert [job["PandaID"] for job in jobs] == sorted(job_ids)
    assert [job["inFiles"].split(",") for job in jobs] == [
        [lfns[i] for i in chunk] for chunk in ([0, 1, 2], [3, 4, 5], [6, 7, 8], [9])
    ]
    for job in jobs[:3]:
        harvester.run(job)
    harvester.run(jobs[3], final="failed")

    (retry,) = harvester.acquire(1)
    assert retry["PandaID"] not in job_ids
    assert (retry["inFiles"], retry["attemptNr"]) == (lfns[9], 2)
    assert deployment.task_status(task_id) in ACTIVE
    harvester.run(retry)
    deployment.wait_task(task_id, "done")
    assert sorted(deployment.job_ids(task_id, 5)) == sorted([*job_ids, retry["PandaID"]])
    status, records = user("getJobStatus", [jobs[3]["PandaID"], retry["PandaID"]])
    assert status == 0
    assert [record["jobStatus"] for record in records] == ["failed", "finished"]

    outputs = sorted(
        lfn for job in [*jobs[:3], retry] for lfn in job["outFiles"].split(",") if lfn.endswith(".out.root")
    )
    assert len(outputs) == 4
    child_id = deployment.submit(
        input_task("user.testuser.ana.v1_out/", "user.testuser.skim.v1", 2), parent_tid=task_id
    )
    child_ids = deployment.job_ids(child_id, 2)
    child_jobs = harvester.acquire(2)
    assert sorted(job["PandaID"] for job in child_jobs) == sorted(child_ids)
    assert sorted(lfn for job in child_jobs for lfn in job["inFiles"].split(",")) == outputs
    for job in child_jobs:
        harvester.run(job)
    deployment.wait_task(child_id, "done")
