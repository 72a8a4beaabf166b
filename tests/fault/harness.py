"""The fault-test harness: real Bamboo processes, pilots under load, kills, and the final audit.

A :class:`Deployment` is a home and a database (SQLite in the home, or a fresh PostgreSQL
database) with ``bamboo serve`` and ``bamboo agents`` processes on free loopback ports; each can be
killed with SIGKILL and started again on the same ports. :func:`run_load` submits no-input tasks
and drives pilot clients (asyncio + httpx, a production token, as the pilot and Harvester call
the API: ``acquire_jobs``, then ``update_job`` running, then finished with an output report) until
every task is final or a deadline passes, retrying on connection errors and 503 as real pilots
do. :func:`audit` then compares what the pilots were told with what the database holds.
:func:`run_es_load` and :func:`audit_event_service` do the same for one event-service task,
range by range (:class:`EsPilot` consumes ranges over HTTP as a pilot does).

Sizes come from the environment: ``BAMBOO_FAULT_FULL=1`` (``python -m tests.fault --full``)
selects the full size of the issue, otherwise a small one fit for CI.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from bamboo.db.engine import Database
from bamboo.db.schema import events, jobs, jobs_archive, task_datasets, task_files, tasks
from bamboo.logic.states import JOB_FINAL, TASK_FINAL
from tests.tasks import input_task

log = logging.getLogger("tests.fault")

FULL = os.environ.get("BAMBOO_FAULT_FULL") == "1"
LOOPBACK = "127.0.0.1"
BAMBOO = [sys.executable, "-m", "bamboo.cli"]
QUEUE = "FAULT_PQ"
# The machine may be shared and slow: every wait is bounded by minutes, and polls a condition.
START_SECONDS = 120.0
STOP_SECONDS = 60.0
ADMIN_SECONDS = 180.0
REQUEST_SECONDS = 120.0
POLL_SECONDS = 0.5
RETRY_SECONDS = (0.2, 1.0)
_LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+) and https://127\.0\.0\.1:(\d+)")
# Answers after which a real pilot tries again later (the server or its database is restarting).
RETRYABLE_STATUSES = {502, 503, 504}
# update_job commands that say the report did not take effect: the pilot drops the job.
REFUSALS = {"tobekilled", "alreadydone"}
NO_JOBS = "No jobs in PanDA"
# Status order for the lost-update check: a job must end at or past what its pilot was told.
_RANK = {"sent": 0, "starting": 1, "running": 2, "holding": 3, "transferring": 3, "finished": 4}


@dataclass(frozen=True)
class LoadSize:
    clients: int
    jobs: int
    tasks: int
    deadline_seconds: float


def load_size(ci: LoadSize, full: LoadSize) -> LoadSize:
    """The size of a scenario: ``full`` under ``BAMBOO_FAULT_FULL=1``, else ``ci``."""
    return full if FULL else ci


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every bamboo process the harness starts."""
    # Warnings only: access lines for every request would cost the loaded machine CPU and disk.
    env = {**os.environ, "BAMBOO_TOKEN_OVER_HTTP": "true", "BAMBOO_LOG_LEVEL": "warning"}
    # A home or database from the caller's environment would be written to: every command gets
    # --home and --database-url explicitly instead.
    for name in ("BAMBOO_DATABASE_URL", "BAMBOO_HOME", "BAMBOO_HOST"):
        env.pop(name, None)
    return {**env, **(extra or {})}


class BambooProcess:
    """One `bamboo serve` or `bamboo agents` process, restartable with the same command and ports."""

    def __init__(
        self, name: str, command: list[str], env: dict[str, str], log_path: Path, *, serves: bool
    ) -> None:
        self.name = name
        self.command = command
        self.serves = serves
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.http_port = 0
        self.https_port = 0
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _command(self) -> list[str]:
        if not self.serves:
            return self.command
        # A restart listens where the first start did, so clients find it again.
        return [*self.command, "--http-port", str(self.http_port), "--https-port", str(self.https_port)]

    def _spawn(self) -> int:
        """Start the process with its output appended to the log; return where this start's begins."""
        assert self.process is None or self.process.poll() is not None, f"{self.name} is running"
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as output:
            output.write(f"--- start {self.starts + 1}: {' '.join(self._command()[2:])}\n".encode())
            output.flush()
            self.process = subprocess.Popen(
                self._command(), stdout=output, stderr=subprocess.STDOUT, env=self.env
            )
        self.starts += 1
        return offset

    async def start(self) -> None:
        """Start the process; for a server, wait until it listens."""
        offset = self._spawn()
        if not self.serves:
            return
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            with self.log_path.open("rb") as output:
                output.seek(offset)
                match = _LISTENING.search(output.read())
            if match:
                self.http_port, self.https_port = int(match.group(1)), int(match.group(2))
                return
            if self.process.poll() is not None:
                break
            await asyncio.sleep(0.1)
        self.kill_now()
        raise AssertionError(f"{self.name} did not start:\n{self.log_tail()}")

    def kill_now(self) -> None:
        """SIGKILL and reap the process, if it runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=STOP_SECONDS)

    async def kill(self) -> None:
        """SIGKILL, then wait (without blocking the event loop) until the process is gone."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + STOP_SECONDS
        while self.process.poll() is None:
            assert time.monotonic() < deadline, f"{self.name} survived SIGKILL"
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, as an operator would; SIGKILL if it does not end in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill_now()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_count(self, needle: str) -> int:
        try:
            return self.log_path.read_text(errors="replace").count(needle)
        except OSError:
            return 0


@dataclass
class Deployment:
    """A home and a database, the processes running on them and the credentials clients use."""

    name: str
    root: Path
    database_url: str | None
    env: dict[str, str] = field(default_factory=dict)
    servers: list[BambooProcess] = field(default_factory=list)
    agents: list[BambooProcess] = field(default_factory=list)
    pilot_token: str = ""
    user_token: str = ""
    _db: Database | None = None

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def url(self) -> str:
        """The database the processes use (SQLite inside the home by default)."""
        return self.database_url or f"sqlite+aiosqlite:///{self.home / 'bamboo.db'}"

    @property
    def db(self) -> Database:
        """The test's own connection to the deployment's database, for setup reads and the audit."""
        if self._db is None:
            self._db = Database(self.url, pool_size=2)
        return self._db

    def admin(self, *args: str) -> str:
        database = ["--database-url", self.database_url] if self.database_url else []
        extra = database if args[0] in ("db", "queue", "user", "data", "task") else []
        result = subprocess.run(
            [*BAMBOO, *args, "--home", str(self.home), *extra],
            capture_output=True,
            text=True,
            timeout=ADMIN_SECONDS,
            env=child_environment(self.env),
            check=False,
        )
        assert result.returncode == 0, f"bamboo {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
        return result.stdout

    def _database_args(self) -> list[str]:
        return [
            "--home",
            str(self.home),
            *(["--database-url", self.database_url] if self.database_url else []),
        ]

    def server(self, *extra: str) -> BambooProcess:
        """A `bamboo serve` process (not started) on free ports of the loopback interface."""
        index = len(self.servers)
        command = [
            *BAMBOO,
            "serve",
            *self._database_args(),
            "--host",
            LOOPBACK,
            *extra,
        ]
        process = BambooProcess(
            f"server {index}",
            command,
            child_environment(self.env),
            self.root / f"server{index}.log",
            serves=True,
        )
        self.servers.append(process)
        return process

    def agent_process(self) -> BambooProcess:
        """A `bamboo agents` process (not started)."""
        index = len(self.agents)
        command = [*BAMBOO, "agents", *self._database_args()]
        process = BambooProcess(
            f"agents {index}",
            command,
            child_environment(self.env),
            self.root / f"agents{index}.log",
            serves=False,
        )
        self.agents.append(process)
        return process

    def prepare(self) -> None:
        """Migrate the database, add the queue and issue the pilots' and the submitter's tokens."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.admin("db", "upgrade")
        self.admin("queue", "add", QUEUE, "--type", "unified")
        self.pilot_token = self.admin(
            "token", "issue", "--user", "Fault Pilot", "--role", "production"
        ).strip()
        self.user_token = self.admin("token", "issue", "--user", "Fault User").strip()

    @property
    def pilot_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.pilot_token}", "Origin": "bamboo.production"}

    @property
    def user_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.user_token}", "Origin": "bamboo"}

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    async def close(self) -> None:
        for process in [*self.servers, *self.agents]:
            process.stop()
        if self._db is not None:
            await self._db.dispose()

    def logs(self) -> str:
        """The end of every process log, for failure messages."""
        return "\n".join(
            f"== {process.name} ({process.log_path})\n{process.log_tail()}"
            for process in [*self.servers, *self.agents]
        )


# --- tasks -------------------------------------------------------------------------------------


def task_parameters(name: str, n_jobs: int) -> dict[str, Any]:
    """A no-input task of ``n_jobs`` one-event jobs at the fault queue, each writing a log."""
    return {
        "taskName": name,
        "vo": "bamboo",
        "prodSourceLabel": "user",
        "site": QUEUE,
        "transPath": "run",
        "noInput": True,
        "nEvents": n_jobs,
        "nEventsPerJob": 1,
        # All jobs at once: a scouting round would hold most of them back.
        "skipScout": True,
        "jobParameters": [{"type": "constant", "value": "echo fault"}],
        "log": {
            "type": "template",
            "param_type": "log",
            "dataset": f"{name}.log/",
            "value": f"{name}.log.$JEDITASKID.${{SN}}.log.tgz",
        },
    }


async def submit_tasks(deployment: Deployment, n_jobs: int, n_tasks: int) -> list[int]:
    """Submit ``n_tasks`` no-input tasks of ``n_jobs`` jobs in all; return their jediTaskIDs."""
    run = uuid.uuid4().hex[:8]
    sizes = [n_jobs // n_tasks + (1 if index < n_jobs % n_tasks else 0) for index in range(n_tasks)]
    ids = []
    async with httpx.AsyncClient(headers=deployment.user_headers, timeout=REQUEST_SECONDS) as client:
        for index, size in enumerate(sizes):
            name = f"user.faultuser.{run}.{index:03d}"
            response = await client.post(
                f"{deployment.urls[0]}/api/v1/task/submit",
                json={"task_parameters": task_parameters(name, size)},
            )
            body = response.json()
            assert response.status_code == 200 and body["success"] is True, body
            ids.append(int(body["data"]))
    return ids


async def count_jobs(db: Database, task_ids: Sequence[int], status: str) -> int:
    async with db.transaction(write=False) as conn:
        query = sa.select(sa.func.count()).where(jobs.c.jediTaskID.in_(task_ids), jobs.c.jobStatus == status)
        return (await conn.execute(query)).scalar_one()


async def job_outcomes(db: Database, panda_ids: Sequence[int]) -> dict[int, tuple[str, int | None]]:
    """Status and jobDispatcherErrorCode of each job, whether still active or archived."""
    found = {}
    async with db.transaction(write=False) as conn:
        for table in (jobs, jobs_archive):
            query = sa.select(table.c.PandaID, table.c.jobStatus, table.c.jobDispatcherErrorCode).where(
                table.c.PandaID.in_(panda_ids)
            )
            found.update(
                {
                    row.PandaID: (row.jobStatus, row.jobDispatcherErrorCode)
                    for row in await conn.execute(query)
                }
            )
    return found


async def task_statuses(db: Database, task_ids: Sequence[int]) -> dict[int, str]:
    async with db.transaction(write=False) as conn:
        query = sa.select(tasks.c.jediTaskID, tasks.c.status).where(tasks.c.jediTaskID.in_(task_ids))
        return {row.jediTaskID: row.status for row in await conn.execute(query)}


async def poll(what: str, probe: Callable[[], Awaitable[Any]], seconds: float) -> Any:
    """Await ``probe`` every POLL_SECONDS until it returns something true; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = await probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up after {seconds:.0f} s waiting for {what}"
        await asyncio.sleep(POLL_SECONDS)


# --- pilots ------------------------------------------------------------------------------------


@dataclass
class Ledger:
    """What the pilots were told."""

    handed_out: Counter[int] = field(default_factory=Counter)
    acknowledged: dict[int, str] = field(default_factory=dict)
    dropped: int = 0
    retries: int = 0
    unexpected: list[str] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return sum(1 for status in self.acknowledged.values() if status == "finished")


class Pilot:
    """One pilot client: its own connection, a preferred server, and the next one on failures."""

    def __init__(
        self, index: int, urls: Callable[[], list[str]], headers: dict[str, str], ledger: Ledger
    ) -> None:
        self.index = index
        self.urls = urls
        self.target = index
        self.ledger = ledger
        self.n_jobs = 1 + index % 3
        self.node = f"wn{index:03d}"
        self.client = httpx.AsyncClient(headers=headers, timeout=REQUEST_SECONDS)
        # Whether an attempt of the last call may have reached a server whose answer was lost
        # (sent, then the connection died or a 5xx came back): that attempt may have taken effect.
        self.last_call_uncertain = False

    async def call(
        self, function: str, payload: dict[str, Any], stop: asyncio.Event
    ) -> dict[str, Any] | None:
        """POST until an answer comes; None if ``stop`` is set first."""
        self.last_call_uncertain = False
        while not stop.is_set():
            urls = self.urls()
            url = f"{urls[self.target % len(urls)]}/api/v1/{function}"
            try:
                response = await self.client.post(url, json=payload)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                pass  # never sent
            except httpx.TransportError:
                self.last_call_uncertain = True
            else:
                self.last_call_uncertain |= response.status_code != 200
                if response.status_code == 200:
                    return response.json()
                if response.status_code not in RETRYABLE_STATUSES:
                    self.ledger.unexpected.append(
                        f"{function}: HTTP {response.status_code} {response.text[:200]}"
                    )
            # The server is down or restarting: try the next one after a pause, as pilots
            # behind a load balancer would.
            self.ledger.retries += 1
            self.target += 1
            await _pause(stop, random.uniform(*RETRY_SECONDS))
        return None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            request = {
                "site_name": QUEUE,
                "prod_source_label": "user",
                "node": self.node,
                "n_jobs": self.n_jobs,
            }
            body = await self.call("pilot/acquire_jobs", request, stop)
            if body is None:
                return
            if body.get("success") is not True:
                if body.get("message") != NO_JOBS:
                    self.ledger.unexpected.append(f"acquire_jobs: {str(body)[:200]}")
                await _pause(stop, POLL_SECONDS)
                continue
            received = body["data"]["jobs"]
            self.ledger.handed_out.update(job["PandaID"] for job in received)
            for job in received:
                await self.run_job(job, stop)

    async def report(self, job: dict[str, Any], status: str, stop: asyncio.Event, **extra: Any) -> bool:
        """One update_job; True when it was acknowledged (and so must be visible afterwards)."""
        payload = {
            "job_id": job["PandaID"],
            "job_status": status,
            "attempt_nr": job["attemptNr"],
            "site_name": QUEUE,
            "node": self.node,
            **extra,
        }
        body = await self.call("pilot/update_job", payload, stop)
        if body is None:
            return False
        data = body.get("data") or {}
        if body.get("success") is not True or data.get("StatusCode") != 0:
            self.ledger.unexpected.append(f"update_job: {str(body)[:200]}")
            return False
        if data.get("command") in REFUSALS:
            self.ledger.dropped += 1
            return False
        self.ledger.acknowledged[job["PandaID"]] = status
        return True

    async def run_job(self, job: dict[str, Any], stop: asyncio.Event) -> None:
        if not await self.report(job, "running", stop):
            return
        await self.report(job, "finished", stop, **finished_report(job))

    async def close(self) -> None:
        await self.client.aclose()


def finished_report(job: dict[str, Any]) -> dict[str, str]:
    """The extra fields of a finished update_job: times and every output file of the job."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    outputs = {
        lfn: {"guid": str(uuid.uuid4()), "fsize": 1024, "adler32": f"{zlib.adler32(lfn.encode()):08x}"}
        for lfn in job["outFiles"].split(",")
    }
    return {"start_time": now, "end_time": now, "job_output_report": json.dumps(outputs)}


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


# --- the load and the audit --------------------------------------------------------------------

Disruption = Callable[[Ledger], Awaitable[None]]


@dataclass
class Audit:
    """The counts the issue asks for, and what explains them."""

    scenario: str
    jobs: int
    dispatched: int
    duplicates: int
    lost_updates: int
    stuck_tasks: int
    acknowledged_finished: int
    watchdog_recovered: int
    dropped: int
    retries: int
    elapsed: float
    task_statuses: dict[str, int]
    unexpected: list[str]
    details: list[str]

    def line(self) -> str:
        statuses = ", ".join(f"{status} {count}" for status, count in sorted(self.task_statuses.items()))
        return (
            f"{self.scenario}: {self.jobs} jobs, dispatched {self.dispatched}, duplicates {self.duplicates}, "
            f"lost updates {self.lost_updates}, stuck tasks {self.stuck_tasks} "
            f"(acknowledged finished {self.acknowledged_finished}, recovered by the sent watchdog "
            f"{self.watchdog_recovered}, dropped on the server's word {self.dropped}, client retries "
            f"{self.retries}, unexpected answers {len(self.unexpected)}, tasks: {statuses}; "
            f"{self.elapsed:.0f} s)"
        )

    def check(self, deployment: Deployment) -> None:
        """The invariants: nothing handed out twice, nothing acknowledged lost, every task final."""
        problems = "\n".join([*self.details[:20], *self.unexpected[:10]])
        assert (self.duplicates, self.lost_updates, self.stuck_tasks) == (0, 0, 0), (
            f"{self.line()}\n{problems}\n{deployment.logs()}"
        )


@dataclass(frozen=True)
class Summary:
    """The one-line result of a fault test that is not a job audit (the database outage probes)."""

    text: str

    def line(self) -> str:
        return self.text


AUDITS: list[Audit | EsAudit | Summary] = []
"""Every audit of the session, printed in the terminal summary (see conftest.py)."""


async def _drive(
    pilots: Sequence[Any],
    stop: asyncio.Event,
    disruption: Awaitable[None] | None,
    deadline: float,
    finished: Callable[[], Awaitable[bool]],
) -> None:
    """Run the pilots, and the disruption beside them, until ``finished`` says so or the deadline
    passes; then stop the pilots and cancel a disruption still waiting for its moment (or restarting
    a process): it ends there, unfinished. Errors of the pilots and the disruption are raised."""
    running = [asyncio.create_task(pilot.run(stop)) for pilot in pilots]
    disrupting = asyncio.create_task(disruption) if disruption is not None else None
    try:
        while time.monotonic() < deadline:
            if disrupting is not None and disrupting.done():
                disrupting.result()
            if await finished():
                break
            await asyncio.sleep(1.0)
    finally:
        stop.set()
        await asyncio.gather(*running, return_exceptions=True)
        for pilot in pilots:
            await pilot.close()
        if disrupting is not None and not disrupting.done():
            disrupting.cancel()
            await asyncio.gather(disrupting, return_exceptions=True)
    for task in running:
        task.result()
    if disrupting is not None and not disrupting.cancelled():
        disrupting.result()


async def run_load(
    deployment: Deployment,
    scenario: str,
    size: LoadSize,
    *,
    disruption: Disruption | None = None,
    task_ids: Sequence[int] | None = None,
) -> Audit:
    """Submit the tasks (unless given), drive the pilots until every task is final, then audit.

    ``disruption`` runs beside the pilots (it kills and restarts processes). The load ends when
    every task is final, or at the size's deadline; a disruption still waiting then is cancelled
    (tests check how often their processes were started).
    """
    started = time.monotonic()
    if task_ids is None:
        task_ids = await submit_tasks(deployment, size.jobs, size.tasks)
    ledger = Ledger()
    stop = asyncio.Event()
    pilots = [
        Pilot(index, lambda: deployment.urls, deployment.pilot_headers, ledger)
        for index in range(size.clients)
    ]

    async def all_final() -> bool:
        statuses = await _read_statuses(deployment.db, task_ids)
        return len(statuses) == len(task_ids) and set(statuses.values()) <= TASK_FINAL

    await _drive(
        pilots, stop, disruption(ledger) if disruption else None, started + size.deadline_seconds, all_final
    )
    result = await audit(deployment, scenario, task_ids, ledger, size.jobs, time.monotonic() - started)
    AUDITS.append(result)
    log.warning("fault audit: %s", result.line())
    return result


async def _read_statuses(db: Database, task_ids: Sequence[int]) -> dict[int, str]:
    # The database may be briefly unreachable (another test stops it): the next poll tries again.
    try:
        return await task_statuses(db, task_ids)
    except (sa.exc.OperationalError, sa.exc.InterfaceError, OSError):
        return {}


async def audit(
    deployment: Deployment,
    scenario: str,
    task_ids: Sequence[int],
    ledger: Ledger,
    n_jobs: int,
    elapsed: float,
) -> Audit:
    """Compare what the pilots were told with the database, active and archived jobs alike."""
    columns = ("PandaID", "jobStatus", "jobDispatcherErrorCode")
    async with deployment.db.transaction(write=False) as conn:
        rows = {}
        for table in (jobs, jobs_archive):
            query = sa.select(*(table.c[name] for name in columns)).where(table.c.jediTaskID.in_(task_ids))
            rows.update({row.PandaID: row for row in await conn.execute(query)})
        statuses = {
            row.jediTaskID: row.status
            for row in await conn.execute(
                sa.select(tasks.c.jediTaskID, tasks.c.status).where(tasks.c.jediTaskID.in_(task_ids))
            )
        }
    details = []
    duplicates = [panda_id for panda_id, count in ledger.handed_out.items() if count > 1]
    details += [
        f"PandaID {panda_id} handed out {ledger.handed_out[panda_id]} times" for panda_id in duplicates
    ]
    lost = 0
    for panda_id, told in ledger.acknowledged.items():
        row = rows.get(panda_id)
        status = row.jobStatus if row is not None else None
        # A finished report ends finished; a running one at running or later (failed is later too).
        kept = (
            status == "finished"
            if told == "finished"
            else status is not None and (_RANK.get(status, 5) >= _RANK[told])
        )
        if not kept:
            lost += 1
            details.append(f"PandaID {panda_id}: acknowledged {told}, now {status}")
    stuck = [task_id for task_id in task_ids if statuses.get(task_id) not in TASK_FINAL]
    details += [f"task {task_id} is {statuses.get(task_id)}" for task_id in stuck]
    recovered = sum(1 for row in rows.values() if row.jobDispatcherErrorCode == 102)
    return Audit(
        scenario=scenario,
        jobs=n_jobs,
        dispatched=len(ledger.handed_out),
        duplicates=len(duplicates),
        lost_updates=lost,
        stuck_tasks=len(stuck),
        acknowledged_finished=ledger.finished,
        watchdog_recovered=recovered,
        dropped=ledger.dropped,
        retries=ledger.retries,
        elapsed=elapsed,
        task_statuses=dict(Counter(statuses.values())),
        unexpected=ledger.unexpected,
        details=details,
    )


async def kill_and_restart(processes: Sequence[BambooProcess]) -> None:
    """SIGKILL the processes together, then start each again (servers on their ports)."""
    for process in processes:
        await process.kill()
    for process in processes:
        await process.start()


def _at_least(ledger: Ledger, finished: float) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return ledger.finished >= finished

    return probe


def kills_at(
    fractions: Sequence[float], size: LoadSize, processes: Callable[[], Sequence[BambooProcess]]
) -> Disruption:
    """A disruption that kills and restarts ``processes`` once the pilots have had that fraction of
    the jobs acknowledged finished, for each fraction in turn."""

    async def disrupt(ledger: Ledger) -> None:
        for fraction in fractions:
            await poll(
                f"{fraction:.0%} of the jobs finished",
                _at_least(ledger, fraction * size.jobs),
                size.deadline_seconds,
            )
            victims = processes()
            log.warning(
                "killing %s at %d finished", ", ".join(process.name for process in victims), ledger.finished
            )
            await kill_and_restart(victims)

    return disrupt


# --- the event service -------------------------------------------------------------------------
#
# One event-service task over a registered dataset: its consumer jobs are driven by EsPilot
# clients over HTTP (acquire_jobs, update_job running, acquire_event_ranges and
# update_event_ranges until the jobset has nothing left, update_job finished), its ES merge jobs
# just finished. The audit compares the ranges the clients were given and told accepted with
# the final event rows, input files, jobs and dataset counters.

#: Job eventService of an ES consumer (domain.md §7).
ES_CONSUMER = 1
#: Ranges per acquire_event_ranges call, as a pilot asks for a handful at a time.
ES_RANGES_PER_ACQUIRE = 10
#: Share of ranges a consumer reports failed (they go to another consumer while attempts remain).
#: A consumer's failed ranges go back to the jobset only when it ends, so the last consumers'
#: leave it to a new consumer, one per generation, and a jobset fails once maxAttemptEsJob (3)
#: generations ended with ranges left: at 5 % that happened to about one jobset of 2,000 ranges in
#: four under kills (their files retried, some out of attempts), at 2 % it is rare.
ES_FAILURE_RATE = 0.02
#: Share of first-attempt consumers whose pilot dies with ranges in hand (reported failed).
ES_DYING_RATE = 0.1
#: Attempts of a range (maxAttemptES): a failure, a death or a lost answer each costs one. Enough
#: that a range runs out of them by chance almost never: the one fatal report of a load (made by
#: pilot 0, see EsPilot) fails its jobset on purpose, so the retry of its files is always seen.
ES_MAX_ATTEMPT = 5
#: Range statuses a range may end in: merged, or one of the others in a jobset that failed.
ES_RANGE_FINAL = frozenset({"merged", "failed", "fatal", "discarded", "cancelled"})

# A range of a jobset: (jobsetID, fileID, job_processID). A file retried after its jobset failed
# gets a new jobset, with ranges of its own.
RangeKey = tuple[int, int, int]


@dataclass(frozen=True)
class EsSize:
    """An event-service load: ``files`` files of ``events_per_file`` one-event ranges, grouped
    ``files_per_jobset`` to a jobset of ``consumers_per_jobset`` consumers, and the clients."""

    clients: int
    files: int
    events_per_file: int
    files_per_jobset: int
    consumers_per_jobset: int
    deadline_seconds: float

    @property
    def ranges(self) -> int:
        return self.files * self.events_per_file


@dataclass
class EsLedger(Ledger):
    """What the consumer clients were given and told, range by range."""

    holders: dict[RangeKey, int] = field(default_factory=dict)
    accepted_finished: Counter[RangeKey] = field(default_factory=Counter)
    ranges_handed_out: int = 0
    repeated_reports: int = 0
    lost_answers: Counter[str] = field(default_factory=Counter)
    consumers: set[int] = field(default_factory=set)
    merges: set[int] = field(default_factory=set)
    closed: int = 0
    duplicates: list[str] = field(default_factory=list)
    rehanded: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    @property
    def ranges_finished(self) -> int:
        return len(self.accepted_finished)

    def take(self, panda_id: int, keys: list[RangeKey]) -> None:
        """Ranges handed to a consumer: none may be in another's hands, nor accepted finished."""
        for key in keys:
            holder = self.holders.get(key)
            if holder is not None:
                self.duplicates.append(f"range {key} handed to {panda_id} while {holder} holds it")
            if key in self.accepted_finished:
                self.rehanded.append(f"range {key} handed to {panda_id} after it was accepted finished")
            self.holders[key] = panda_id
        self.ranges_handed_out += len(keys)

    def release(self, panda_id: int, keys: list[RangeKey]) -> None:
        """The consumer gives its ranges up (it ends): the server may hand them out again."""
        for key in keys:
            if self.holders.get(key) == panda_id:
                del self.holders[key]


def _es_range_key(job: dict[str, Any], range_id: str) -> RangeKey:
    _, _, file_id, process_id, _ = range_id.split("-")
    return int(job["jobsetID"]), int(file_id), int(process_id)


def _es_updates(
    ranges: list[dict[str, Any]], rng: random.Random, *, fatal: bool
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The update_event_ranges parameters for a batch, in a random version, and its reports
    (the first one fatal when ``fatal``)."""
    reports = []
    for item in ranges:
        report: dict[str, Any] = {"eventRangeID": item["eventRangeID"]}
        if fatal and not reports:
            report |= {"eventStatus": "fatal", "errorCode": 1221, "errorDiag": "input event corrupted"}
        elif rng.random() < ES_FAILURE_RATE:
            report |= {"eventStatus": "failed", "errorCode": 1220, "errorDiag": "payload crashed"}
        else:
            report |= {"eventStatus": "finished", "coreCount": 1, "cpuConsumptionTime": 2.5}
        reports.append(report)
    version = rng.choice((0, 1, 2))
    if version == 0:
        return {"event_ranges": json.dumps(reports), "version": 0}, reports
    chunk: dict[str, Any] = {"eventRanges": reports}
    if version == 1:
        chunk["zipFile"] = {
            "lfn": f"EventService_premerge_{ranges[0]['eventRangeID']}.zip",
            "objstoreID": 1,
            "fsize": 4096,
            "adler32": "0badcafe",
            "numEvents": len(reports),
            "pathConvention": 1000,
        }
    # Harvester sends a list, panda-client JSON text: both are accepted.
    payload: Any = [chunk] if rng.random() < 0.5 else json.dumps([chunk])
    return {"event_ranges": payload, "version": version}, reports


class EsPilot(Pilot):
    """A pilot running event-service jobs: consumers range by range, merge jobs as plain jobs."""

    ledger: EsLedger

    def __init__(
        self, index: int, urls: Callable[[], list[str]], headers: dict[str, str], ledger: EsLedger
    ) -> None:
        super().__init__(index, urls, headers, ledger)
        # One job at a time: a consumer waiting behind another would sit `sent` until the sent
        # watchdog fails it.
        self.n_jobs = 1
        self.rng = random.Random(index)
        # Pilot 0 reports one range fatal: that range is hopeless, its jobset fails and its input
        # files are retried in a new jobset.
        self.fatal_left = 1 if index == 0 else 0

    async def run_job(self, job: dict[str, Any], stop: asyncio.Event) -> None:
        # Each job at the next server, as behind a load balancer: after a kill moved every pilot
        # off the killed server, the next jobs come back to it (so a second kill hits requests).
        self.target += 1
        if job.get("eventServiceMerge") == "True":
            self.ledger.merges.add(job["PandaID"])
            await super().run_job(job, stop)
        elif job.get("eventService") == "True":
            await self.consume(job, stop)
        else:
            self.ledger.unexpected.append(f"acquire_jobs: not an event-service job: {str(job)[:200]}")

    async def consume(self, job: dict[str, Any], stop: asyncio.Event) -> None:
        """Take ranges and report them until the jobset has none left, then end the job.

        The ranges a consumer was given stay its own (the server hands them out again only after
        the job ended), so the ledger releases them just before the final report.
        """
        panda_id = job["PandaID"]
        self.ledger.consumers.add(panda_id)
        if not await self.report(job, "running", stop):
            return
        dies = job["attemptNr"] == 1 and self.rng.random() < ES_DYING_RATE
        held: list[RangeKey] = []
        batches = 0
        while True:
            request = {
                "job_id": panda_id,
                "jobset_id": job["jobsetID"],
                "task_id": job["taskID"],
                "n_ranges": ES_RANGES_PER_ACQUIRE,
            }
            body = await self.call("event/acquire_event_ranges", request, stop)
            if body is None:
                return
            if body.get("success") is not True:
                # Closed as an unused sibling or killed: the server ended the job, the pilot stops.
                self.ledger.closed += 1
                self.ledger.release(panda_id, held)
                return
            ranges = body["data"]["eventRanges"]
            if not ranges:
                break
            keys = [_es_range_key(job, item["eventRangeID"]) for item in ranges]
            self.ledger.take(panda_id, keys)
            held.extend(keys)
            batches += 1
            if dies and batches == 2:
                self.ledger.release(panda_id, held)
                await self.report(job, "failed", stop, pilot_error_code=1008, pilot_error_diag="pilot died")
                return
            params, reports = _es_updates(ranges, self.rng, fatal=self.fatal_left > 0)
            self.fatal_left = 0
            body = await self.call("event/update_event_ranges", params, stop)
            if body is None:
                return
            if body.get("success") is not True:
                self.ledger.unexpected.append(f"update_event_ranges: {str(body)[:200]}")
                break
            self._record(job, reports, body["data"]["Returns"], self.last_call_uncertain)
            if str(panda_id) in body["data"]["Commands"]:
                break
        self.ledger.release(panda_id, held)
        await self.report(job, "finished", stop, **finished_report(job))

    async def call(
        self, function: str, payload: dict[str, Any], stop: asyncio.Event
    ) -> dict[str, Any] | None:
        body = await super().call(function, payload, stop)
        if self.last_call_uncertain:
            self.ledger.lost_answers[function.rpartition("/")[2]] += 1
        return body

    def _record(
        self, job: dict[str, Any], reports: list[dict[str, Any]], returns: list[Any], uncertain: bool
    ) -> None:
        """Note the outcome of each report of a batch.

        While its consumer lives nothing but that consumer's reports changes a range, so a report
        refused when an earlier attempt of the call may have reached the server was written by that
        attempt: it counts as accepted. Refused otherwise, it is a fault.
        """
        if len(returns) != len(reports):
            self.ledger.unexpected.append(f"update_event_ranges: {len(returns)} Returns for {len(reports)}")
            return
        for report, accepted in zip(reports, returns, strict=True):
            if accepted is True or (accepted is False and uncertain):
                if report["eventStatus"] == "finished":
                    self.ledger.accepted_finished[_es_range_key(job, report["eventRangeID"])] += 1
                self.ledger.repeated_reports += accepted is False
            else:
                self.ledger.refused.append(f"{report['eventRangeID']} {report['eventStatus']}: {accepted}")


def es_task_parameters(name: str, dataset: str, size: EsSize) -> dict[str, Any]:
    """An event-service task over ``dataset``: one-event ranges, a data output and a log."""
    return input_task(dataset, name, size.files_per_jobset) | {
        "site": QUEUE,
        "eventService": 1,
        "nEventsPerWorker": 1,
        "nEsConsumers": size.consumers_per_jobset,
        "maxAttemptES": ES_MAX_ATTEMPT,
    }


async def submit_es_task(deployment: Deployment, size: EsSize) -> int:
    """Register the input dataset with `bamboo data register`, submit the ES task; its jediTaskID."""
    name = f"user.faultuser.{uuid.uuid4().hex[:8]}.es"
    dataset = f"{name}.in"
    files = [
        f"{name}.in.{index:04d}.root:{100_000 + index}:{size.events_per_file}" for index in range(size.files)
    ]
    deployment.admin("data", "register", dataset, *(arg for spec in files for arg in ("--file", spec)))
    async with httpx.AsyncClient(headers=deployment.user_headers, timeout=REQUEST_SECONDS) as client:
        response = await client.post(
            f"{deployment.urls[0]}/api/v1/task/submit",
            json={"task_parameters": es_task_parameters(name, dataset, size)},
        )
    body = response.json()
    assert response.status_code == 200 and body["success"] is True, body
    return int(body["data"])


@dataclass
class EsAudit:
    """The event-service invariants, counted, and what explains them."""

    scenario: str
    ranges: int
    jobsets: int
    jobsets_failed: int
    consumers: int
    merges: int
    ranges_handed_out: int
    duplicates: int
    rehanded: int
    refused: int
    accepted_twice: int
    lost_finished: int
    unsettled_ranges: int
    files: int
    files_finished: int
    files_failed: int
    unsettled_files: int
    stuck_jobs: int
    counters_off: int
    events_off: int
    jobs_handed_twice: int
    task_status: str | None
    task_expected: str
    range_statuses: dict[str, int]
    repeated_reports: int
    lost_answers: dict[str, int]
    closed: int
    retries: int
    elapsed: float
    unexpected: list[str]
    details: list[str]

    def line(self) -> str:
        statuses = ", ".join(f"{status} {count}" for status, count in sorted(self.range_statuses.items()))
        lost = ", ".join(f"{function} {count}" for function, count in sorted(self.lost_answers.items()))
        return (
            f"{self.scenario}: {self.ranges} ranges in {self.jobsets} jobsets ({self.jobsets_failed} "
            f"failed and retried), handed out {self.ranges_handed_out}, held twice {self.duplicates}, "
            f"re-handed after finished {self.rehanded}, refused {self.refused}, accepted twice "
            f"{self.accepted_twice}, lost finished {self.lost_finished}, unsettled ranges "
            f"{self.unsettled_ranges}, files finished {self.files_finished}/{self.files} (failed "
            f"{self.files_failed}, unsettled {self.unsettled_files}), stuck jobs {self.stuck_jobs}, "
            f"counters off {self.counters_off}, consumer nEvents off {self.events_off}, jobs handed "
            f"twice {self.jobs_handed_twice}, task {self.task_status} (consumers {self.consumers}, "
            f"merge jobs {self.merges}, consumers closed {self.closed}, calls whose answer may have "
            f"been lost: {lost or 'none'}, reports refused as already written by such a call "
            f"{self.repeated_reports}, client retries {self.retries}, unexpected answers "
            f"{len(self.unexpected)}, ranges: {statuses}; {self.elapsed:.0f} s)"
        )

    def check(self, deployment: Deployment) -> None:
        """Nothing held twice, nothing accepted lost, everything settled, the task done."""
        faults = (
            self.duplicates,
            self.rehanded,
            self.refused,
            self.accepted_twice,
            self.lost_finished,
            self.unsettled_ranges,
            self.unsettled_files,
            self.stuck_jobs,
            self.counters_off,
            self.events_off,
            self.jobs_handed_twice,
            len(self.unexpected),
        )
        problems = "\n".join([*self.details[:20], *self.unexpected[:10]])
        assert faults == (0,) * len(faults) and self.task_status == self.task_expected, (
            f"{self.line()}\n{problems}\n{deployment.logs()}"
        )


def _counted_as(row: Any) -> str:
    """How a file row counts in its dataset: a row out of attempts left ready counts failed."""
    exhausted = (row.maxAttempt is not None and row.attemptNr >= row.maxAttempt) or (
        row.maxFailure is not None and row.failedAttempt >= row.maxFailure
    )
    return "failed" if row.status == "failed" or (row.status == "ready" and exhausted) else row.status


async def audit_event_service(
    deployment: Deployment, scenario: str, task_id: int, ledger: EsLedger, size: EsSize, elapsed: float
) -> EsAudit:
    """Compare what the consumer clients saw with the task's final ranges, files, jobs and counters."""
    async with deployment.db.transaction(write=False) as conn:
        ranges = list(await conn.execute(sa.select(events).where(events.c.jediTaskID == task_id)))
        file_rows = list(await conn.execute(sa.select(task_files).where(task_files.c.jediTaskID == task_id)))
        datasets = list(
            await conn.execute(sa.select(task_datasets).where(task_datasets.c.jediTaskID == task_id))
        )
        job_rows = {}
        for table in (jobs, jobs_archive):
            query = sa.select(
                table.c.PandaID, table.c.jobStatus, table.c.eventService, table.c.nEvents
            ).where(table.c.jediTaskID == task_id)
            job_rows.update({row.PandaID: row for row in await conn.execute(query)})
        task_status = (
            await conn.execute(sa.select(tasks.c.status).where(tasks.c.jediTaskID == task_id))
        ).scalar_one_or_none()
    details = [*ledger.duplicates, *ledger.rehanded, *ledger.refused]

    # Ranges: merged, or out of play in a jobset that failed (none of whose ranges merged).
    merged = {(r.jobsetID, r.fileID, r.job_processID) for r in ranges if r.status == "merged"}
    merged_jobsets = {key[0] for key in merged}
    failed_jobsets = {r.jobsetID for r in ranges if r.status != "merged"}
    unsettled = [
        r
        for r in ranges
        if r.status not in ES_RANGE_FINAL or (r.status != "merged" and r.jobsetID in merged_jobsets)
    ]
    details += [
        f"range {(r.jobsetID, r.fileID, r.job_processID)} is {r.status} (PandaID {r.PandaID})"
        for r in unsettled
    ]
    twice = [key for key, count in ledger.accepted_finished.items() if count > 1]
    details += [f"range {key} accepted finished {ledger.accepted_finished[key]} times" for key in twice]
    statuses_by_key = {(r.jobsetID, r.fileID, r.job_processID): r.status for r in ranges}
    lost = [
        key for key in ledger.accepted_finished if statuses_by_key.get(key) not in ("merged", "discarded")
    ]
    details += [f"range {key} accepted finished, now {statuses_by_key.get(key)}" for key in lost]

    # Files: finished exactly when one jobset merged all their ranges, else failed out of attempts;
    # the file of a failed jobset was retried (merged later) or is out of attempts.
    inputs = [row for row in file_rows if row.type == "input"]
    merged_by_file = Counter(key[1] for key in merged)
    files_finished = {row.fileID for row in inputs if row.status == "finished"}
    files_failed = {row.fileID for row in inputs if _counted_as(row) == "failed"}
    unsettled_files = {
        row.fileID
        for row in inputs
        if not (
            (row.fileID in files_finished and merged_by_file[row.fileID] == size.events_per_file)
            or (row.fileID in files_failed and row.fileID not in merged_by_file)
        )
    }
    details += [
        f"input file {row.fileID} is {row.status}, {merged_by_file[row.fileID]} ranges merged"
        for row in inputs
        if row.fileID in unsettled_files
    ]
    retried = set(merged_by_file) | files_failed
    abandoned = {r.fileID for r in ranges if r.jobsetID in failed_jobsets} - retried
    unsettled_files |= abandoned
    details += [f"input file {file_id}: its jobset failed and it was not retried" for file_id in abandoned]

    stuck = [row for row in job_rows.values() if row.jobStatus not in JOB_FINAL]
    # A consumer's nEvents counts the (one-event) ranges it finished: merged, or discarded when
    # their jobset failed.
    finished_by = Counter(r.PandaID for r in ranges if r.status in ("merged", "discarded"))
    events_off = [
        row
        for row in job_rows.values()
        if row.eventService == ES_CONSUMER and (row.nEvents or 0) != finished_by[row.PandaID]
    ]
    details += [
        f"consumer {row.PandaID}: nEvents {row.nEvents}, {finished_by[row.PandaID]} ranges finished"
        for row in events_off
    ]
    details += [f"job {row.PandaID} (eventService {row.eventService}) is {row.jobStatus}" for row in stuck]
    counters_off = 0
    for dataset in datasets:
        recount = Counter(_counted_as(row) for row in file_rows if row.datasetID == dataset.datasetID)
        if (dataset.nFilesFinished, dataset.nFilesFailed) != (recount["finished"], recount["failed"]):
            counters_off += 1
            details.append(
                f"dataset {dataset.datasetName}: finished {dataset.nFilesFinished}, failed "
                f"{dataset.nFilesFailed}; recount {recount['finished']}, {recount['failed']}"
            )
    handed_twice = [panda_id for panda_id, count in ledger.handed_out.items() if count > 1]
    details += [
        f"PandaID {panda_id} handed out {ledger.handed_out[panda_id]} times" for panda_id in handed_twice
    ]
    expected = "done" if inputs and len(files_finished) == len(inputs) else "finished"
    if task_status != expected:
        details.append(f"task {task_id} is {task_status}, expected {expected}")
    return EsAudit(
        scenario=scenario,
        ranges=size.ranges,
        jobsets=len({r.jobsetID for r in ranges}),
        jobsets_failed=len(failed_jobsets),
        consumers=len(ledger.consumers),
        merges=len(ledger.merges),
        ranges_handed_out=ledger.ranges_handed_out,
        duplicates=len(ledger.duplicates),
        rehanded=len(ledger.rehanded),
        refused=len(ledger.refused),
        accepted_twice=len(twice),
        lost_finished=len(lost),
        unsettled_ranges=len(unsettled),
        files=len(inputs),
        files_finished=len(files_finished),
        files_failed=len(files_failed),
        unsettled_files=len(unsettled_files),
        stuck_jobs=len(stuck),
        counters_off=counters_off,
        events_off=len(events_off),
        jobs_handed_twice=len(handed_twice),
        task_status=task_status,
        task_expected=expected,
        range_statuses=dict(Counter(r.status for r in ranges)),
        repeated_reports=ledger.repeated_reports,
        lost_answers=dict(ledger.lost_answers),
        closed=ledger.closed,
        retries=ledger.retries,
        elapsed=elapsed,
        unexpected=ledger.unexpected,
        details=details,
    )


def es_kills_at(
    fractions: Sequence[float], size: EsSize, processes: Callable[[], Sequence[BambooProcess]]
) -> Disruption:
    """A disruption that kills and restarts ``processes`` once the consumers have had that fraction
    of the ranges accepted finished, for each fraction in turn."""

    async def disrupt(ledger: Ledger) -> None:
        assert isinstance(ledger, EsLedger)
        for fraction in fractions:

            async def reached(share: float = fraction) -> bool:
                return ledger.ranges_finished >= share * size.ranges

            await poll(f"{fraction:.0%} of the ranges finished", reached, size.deadline_seconds)
            victims = processes()
            log.warning(
                "killing %s at %d ranges finished",
                ", ".join(process.name for process in victims),
                ledger.ranges_finished,
            )
            await kill_and_restart(victims)

    return disrupt


async def run_es_load(
    deployment: Deployment, scenario: str, size: EsSize, *, disruption: Disruption | None = None
) -> EsAudit:
    """Submit the ES task, drive the consumer clients until it is final (or the deadline), audit."""
    started = time.monotonic()
    task_id = await submit_es_task(deployment, size)
    ledger = EsLedger()
    stop = asyncio.Event()
    pilots = [
        EsPilot(index, lambda: deployment.urls, deployment.pilot_headers, ledger)
        for index in range(size.clients)
    ]

    async def final() -> bool:
        return (await _read_statuses(deployment.db, [task_id])).get(task_id) in TASK_FINAL

    await _drive(
        pilots, stop, disruption(ledger) if disruption else None, started + size.deadline_seconds, final
    )
    result = await audit_event_service(
        deployment, scenario, task_id, ledger, size, time.monotonic() - started
    )
    AUDITS.append(result)
    log.warning("fault audit: %s", result.line())
    return result
