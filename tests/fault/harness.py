"""The fault-test harness: real Bamboo processes, pilots under load, kills, and the final audit.

A :class:`Deployment` is a home and a database (SQLite in the home, or a fresh PostgreSQL
database) with ``bamboo serve`` and ``bamboo agents`` processes on free loopback ports; each can be
killed with SIGKILL and started again on the same ports. :func:`run_load` submits no-input tasks
and drives pilot clients (asyncio + httpx, a production token, as the pilot and Harvester call
the API: ``acquire_jobs``, then ``update_job`` running, then finished with an output report) until
every task is final or a deadline passes, retrying on connection errors and 503 as real pilots
do. :func:`audit` then compares what the pilots were told with what the database holds.

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
from bamboo.db.schema import jobs, jobs_archive, tasks
from bamboo.logic.states import TASK_FINAL

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

    async def call(
        self, function: str, payload: dict[str, Any], stop: asyncio.Event
    ) -> dict[str, Any] | None:
        """POST until an answer comes; None if ``stop`` is set first."""
        while not stop.is_set():
            urls = self.urls()
            url = f"{urls[self.target % len(urls)]}/api/v1/{function}"
            try:
                response = await self.client.post(url, json=payload)
            except httpx.TransportError:
                pass
            else:
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
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        outputs = {
            lfn: {"guid": str(uuid.uuid4()), "fsize": 1024, "adler32": f"{zlib.adler32(lfn.encode()):08x}"}
            for lfn in job["outFiles"].split(",")
        }
        await self.report(
            job,
            "finished",
            stop,
            start_time=now,
            end_time=now,
            job_output_report=json.dumps(outputs),
        )

    async def close(self) -> None:
        await self.client.aclose()


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


AUDITS: list[Audit] = []
"""Every audit of the session, printed in the terminal summary (see conftest.py)."""


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
    running = [asyncio.create_task(pilot.run(stop)) for pilot in pilots]
    disrupting = asyncio.create_task(disruption(ledger)) if disruption else None
    deadline = started + size.deadline_seconds
    try:
        while time.monotonic() < deadline:
            if disrupting is not None and disrupting.done():
                disrupting.result()
            statuses = await _read_statuses(deployment.db, task_ids)
            if len(statuses) == len(task_ids) and set(statuses.values()) <= TASK_FINAL:
                break
            await asyncio.sleep(1.0)
    finally:
        stop.set()
        await asyncio.gather(*running, return_exceptions=True)
        for pilot in pilots:
            await pilot.close()
        if disrupting is not None and not disrupting.done():
            disrupting.cancel()
    for task in running:
        task.result()
    if disrupting is not None and not disrupting.cancelled():
        disrupting.result()
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
