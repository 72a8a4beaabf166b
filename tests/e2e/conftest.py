"""Start the real `bamboo serve` process on free ports with a temporary home, and the clients on it.

A ``deployment`` is a server with a queue, the real panda-client in a child process for a user and
one for a production operator, and a Harvester-like resource side with a production token.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from bamboo.config import Settings
from bamboo.home import prepare_home
from tests.conftest import create_postgres_database, drop_postgres_database
from tests.tasks import QUEUE

BAMBOO = [sys.executable, "-m", "bamboo.cli"]
_LISTENING = re.compile(r"listening on http://[^:]+:(\d+) and https://[^:]+:(\d+)")
STARTUP_SECONDS = 60


def bamboo(*args: str, env: dict[str, str] | None = None) -> str:
    """Run a bamboo admin command and return its standard output."""
    result = subprocess.run(
        [*BAMBOO, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert result.returncode == 0, f"bamboo {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def whole_response(sock: socket.socket) -> bytes:
    """One HTTP response with a Content-Length, however many segments it arrives in (the server
    may send the head and the body separately, so one recv can return half of it)."""
    response = b""
    while b"\r\n\r\n" not in response or len(response.partition(b"\r\n\r\n")[2]) < _content_length(response):
        chunk = sock.recv(4096)
        assert chunk, response
        response += chunk
    return response


def _content_length(response: bytes) -> int:
    for line in response.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise AssertionError(f"no Content-Length in {response!r}")


@dataclass
class RunningServer:
    process: subprocess.Popen[str]
    home: Path
    database_url: str | None
    http_port: int
    https_port: int
    output: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def ca(self) -> str:
        return str(self.home / "ca.pem")

    def admin(self, *args: str) -> str:
        uses_database = args[0] in ("db", "queue", "user", "data", "task", "secrets")
        extra = ["--database-url", self.database_url] if self.database_url and uses_database else []
        return bamboo(*args, "--home", str(self.home), *extra)

    def token(self, user: str, role: str | None = None) -> str:
        """A token of the server's embedded issuer, minted in this process the way `bamboo token issue`
        does: two CLI start-ups per deployment were seconds of every end-to-end test."""
        settings = Settings(home=self.home)
        issuer = prepare_home(settings).issuer
        return issuer.issue_token(user=user, vo=settings.local_token_vos[0], role=role)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        if self.reader is not None:
            self.reader.join(timeout=10)
        return code


def start_server(
    home: Path, database_url: str | None, *extra: str, env: dict[str, str] | None = None
) -> RunningServer:
    command = [*BAMBOO, "serve", "--home", str(home), "--http-port", "0", "--https-port", "0", *extra]
    if database_url:
        command += ["--database-url", database_url]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    output: list[str] = []
    ports: list[tuple[int, int]] = []
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            match = _LISTENING.search(line)
            if match and not ports:
                ports.append((int(match.group(1)), int(match.group(2))))
                ready.set()
        ready.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    ready.wait(STARTUP_SECONDS)
    if not ports:
        process.kill()
        raise AssertionError("server did not start:\n" + "".join(output))
    http_port, https_port = ports[0]
    return RunningServer(process, home, database_url, http_port, https_port, output, reader)


BACKENDS = ["sqlite", "postgresql"]


@contextmanager
def database_for(backend: str) -> Iterator[str | None]:
    """None for the embedded default; a fresh, empty PostgreSQL database (dropped after) otherwise."""
    if backend == "sqlite":
        yield None
        return
    url = asyncio.run(create_postgres_database())
    if url is None:
        pytest.skip("PostgreSQL not reachable (set BAMBOO_REQUIRE_POSTGRES=1 to fail)")
    try:
        yield url
    finally:
        asyncio.run(drop_postgres_database(url))


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    with database_for(request.param) as url:
        yield url


@pytest.fixture
def server(tmp_path: Path, backend_url: str | None) -> Iterator[RunningServer]:
    home = tmp_path / "home"
    if backend_url:
        bamboo("db", "upgrade", "--home", str(home), "--database-url", backend_url)
    # Re-read the ban list on every request so a ban shows at once.
    running = start_server(home, backend_url, env={"BAMBOO_BAN_REFRESH_SECONDS": "0"})
    yield running
    running.stop()


STEPS = Path(__file__).with_name("panda_client_steps.py")
HARVESTER_ID = "e2e_harvester"
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
        self.env = env
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

    def __call__(
        self, function: str, *args: Any, job_specs: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> Any:
        """The function's result; ``job_specs`` are made JobSpecs and passed first (see the steps)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        request: dict[str, Any] = {"call": function, "args": args, "kwargs": kwargs}
        if job_specs is not None:
            request["job_specs"] = job_specs
        self.process.stdin.write(json.dumps(request) + "\n")
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
    # panda-client as a production manager runs it: the commands only that role may send.
    operator: PandaClient
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


def start_panda_client(
    server: RunningServer, token: str, origin: str, home: Path, transport: str
) -> PandaClient:
    """panda-client for one token; ``origin`` is the VO (and role) it names, ``home`` its directory."""
    config_root = home / "pathena"
    config_root.mkdir(parents=True)
    # Only the settings below may steer panda-client, whatever the caller's shell has.
    inherited = {key: value for key, value in os.environ.items() if not key.startswith(("PANDA", "OIDC_"))}
    env = {
        **inherited,
        "PANDA_URL_SSL": f"{server.https}/server/panda",
        "PANDA_URL": f"{server.http}/server/panda",
        "PANDACACHE_URL": f"{server.https}/server/panda",
        # No DNS round trips to rewrite 127.0.0.1 into a host name.
        "PANDA_BEHIND_REAL_LB": "1",
        "PANDA_AUTH": "oidc",
        "PANDA_AUTH_VO": origin,
        "PANDA_AUTH_ID_TOKEN": token,
        "PANDA_CONFIG_ROOT": str(config_root),
        # The server's certificate comes from its own CA, which curl is not told about.
        "PANDA_VERIFY_HOST": "off",
        **({"PANDA_USE_NATIVE_HTTPLIB": "1"} if transport == "urllib" else {}),
    }
    return PandaClient(env, home / "panda-client.log")


@contextmanager
def deployed(
    tmp: Path, backend_url: str | None, transport: str, env: dict[str, str] | None = None
) -> Iterator[Deployment]:
    """A server (its settings from ``env`` too) on a new home under ``tmp`` with the queue, both
    panda-clients and Harvester."""
    home = tmp / "home"
    if backend_url:
        bamboo("db", "upgrade", "--home", str(home), "--database-url", backend_url)
    with ExitStack() as cleanup:
        server = start_server(home, backend_url, env=env)
        cleanup.callback(server.stop)
        server.admin("queue", "add", QUEUE, "--type", "unified")
        user_token = server.token("Test User")
        robot_token = server.token("Harvester Robot", role="production")
        user = start_panda_client(server, user_token, "bamboo", tmp / "user", transport)
        cleanup.callback(user.close)
        operator = start_panda_client(server, robot_token, "bamboo.production", tmp / "operator", transport)
        cleanup.callback(operator.close)
        harvester = Harvester(server.https, robot_token, server.ca)
        cleanup.callback(harvester.close)
        yield Deployment(server, user, operator, harvester)


@pytest.fixture
def server_env() -> dict[str, str]:
    """Settings the deployment's server starts with (tests override it, e.g. short watchdog timeouts)."""
    return {}


@pytest.fixture
def deployment(
    tmp_path: Path, backend_url: str | None, transport: str, server_env: dict[str, str]
) -> Iterator[Deployment]:
    with deployed(tmp_path, backend_url, transport, env=server_env) as running:
        yield running
