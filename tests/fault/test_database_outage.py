"""PostgreSQL stopped under load: clients get 503 with Retry-After and nothing else, then recover.

A real ``bamboo serve`` runs on a private PostgreSQL cluster (``pg_cluster.py``; the machine's shared
server is never touched) while pilot-like clients acquire jobs and report them. The database is
stopped for 10 s, with a fast shutdown (sessions told to end) and with an immediate one (a crash,
so the restart replays the WAL). Every answer must be HTTP 200 or HTTP 503 with ``Retry-After``:
a 500, a reset connection or a request hanging past a bound counts as a failure. Once PostgreSQL
accepts connections again, requests must succeed within 5 s and the agents must carry on (a task
submitted after the outage gets its jobs and finishes), all without restarting Bamboo.

Two more tests force, one by one, the windows where PostgreSQL is neither up nor down, which a
timed outage meets only by chance: requests cut off mid-query by a shutdown, a shutdown refusing
new sessions, the port closed, a server refusing sessions until it is ready (a standby being
promoted), and a server process killed, which drops every session and replays the WAL.

``BAMBOO_FAULT_FULL=1`` (set by ``python -m tests.fault --full``) runs the load test bigger.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import time
import uuid
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import REQUIRE_POSTGRES
from tests.e2e.conftest import RunningServer, bamboo, start_server
from tests.fault.harness import AUDITS, Summary
from tests.fault.pg_cluster import PostgresCluster, postgres_bindir, private_cluster
from tests.tasks import NO_INPUT_TASK, QUEUE

pytestmark = pytest.mark.fault

FULL = os.environ.get("BAMBOO_FAULT_FULL") == "1"
PILOTS = 48 if FULL else 8
JOBS_PER_TASK = 2000 if FULL else 400
OUTAGE_SECONDS = 10.0
# The bound: requests succeed again this soon after PostgreSQL accepts connections.
RECOVERY_SECONDS = 5.0
# An answer slower than this is a hang. Generous: the machine's cores are shared.
REQUEST_BOUND_SECONDS = 30.0
# Pilots retry a refused request after this pause rather than the advertised Retry-After, so the
# server stays under load during the outage and the recovery is measured to a fraction of a second.
RETRY_PAUSE_SECONDS = 0.2
WARMUP_CYCLES = PILOTS * 3
SETTLE_SECONDS = 120.0
DATABASE = "bamboo"


@dataclass
class OutageSite:
    """The private cluster, the server on it, and the credentials of a user and of a pilot."""

    cluster: PostgresCluster
    server: RunningServer
    user_token: str
    pilot_token: str

    def client(self, token: str, origin: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"{self.server.https}/api/v1",
            headers={"Authorization": f"Bearer {token}", "Origin": origin, "Accept": "application/json"},
            verify=ssl.create_default_context(cafile=self.server.ca),
            timeout=REQUEST_BOUND_SECONDS,
            limits=httpx.Limits(max_connections=PILOTS + 4),
        )

    def pilots(self) -> httpx.AsyncClient:
        return self.client(self.pilot_token, "bamboo.production")

    def user(self) -> httpx.AsyncClient:
        return self.client(self.user_token, "bamboo")

    @property
    def dsn(self) -> str:
        return self.cluster.dsn(DATABASE)

    def server_problems(self) -> str:
        """The server's log lines about unexpected errors, with their tracebacks (the last ones)."""
        lines = self.server.output
        picked = [
            "".join(lines[index : index + 30])
            for index, line in enumerate(lines)
            if "unexpected error" in line or "Exception in ASGI" in line
        ]
        return "\n".join(picked[-3:])[-6000:]


@pytest.fixture(scope="module")
def outage_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OutageSite]:
    if postgres_bindir() is None:
        message = "PostgreSQL server programs (initdb, pg_ctl) not installed"
        if REQUIRE_POSTGRES:
            pytest.fail(message)
        pytest.skip(f"{message} (set BAMBOO_REQUIRE_POSTGRES=1 to fail)")
    home = tmp_path_factory.mktemp("outage") / "home"
    with ExitStack() as cleanup:
        cluster = cleanup.enter_context(private_cluster())
        asyncio.run(_create_database(cluster))
        url = cluster.database_url(DATABASE)
        bamboo("db", "upgrade", "--home", str(home), "--database-url", url)
        server = start_server(home, url)
        cleanup.callback(server.stop)
        # Each admin command is a Python start-up; side by side they cost one.
        with ThreadPoolExecutor(3) as pool:
            queue = pool.submit(server.admin, "queue", "add", QUEUE, "--type", "unified")
            user = pool.submit(server.admin, "token", "issue", "--user", "Test User")
            pilot = pool.submit(
                server.admin, "token", "issue", "--user", "Pilot Robot", "--role", "production"
            )
            queue.result()
        yield OutageSite(cluster, server, user.result().strip(), pilot.result().strip())


@pytest.fixture(autouse=True)
def database_running(outage_site: OutageSite) -> None:
    """Each test starts with PostgreSQL up, even after one that failed during its outage."""
    if not outage_site.cluster.is_running():
        outage_site.cluster.start()


async def _create_database(cluster: PostgresCluster) -> None:
    connection = await asyncpg.connect(cluster.dsn(), timeout=30)
    try:
        await connection.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await connection.close()


@dataclass(frozen=True)
class Answer:
    """One request as a client saw it; ``problem`` is set when no HTTP answer came."""

    endpoint: str
    sent: float
    received: float
    status: int | None
    retry_after: str | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.problem is None

    @property
    def unavailable(self) -> bool:
        delay = self.retry_after or ""
        return self.status == 503 and self.problem is None and delay.isdigit() and int(delay) > 0

    def describe(self) -> str:
        return f"{self.endpoint} -> {self.status or self.problem} after {self.received - self.sent:.1f} s"


@dataclass
class Tally:
    """Every answer the clients got, and the jobs they were given and reported finished."""

    answers: list[Answer] = field(default_factory=list)
    acquired: list[int] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)

    def others(self) -> list[Answer]:
        return [answer for answer in self.answers if not (answer.ok or answer.unavailable)]

    def counts(self) -> str:
        unavailable = sum(answer.unavailable for answer in self.answers)
        ok = sum(answer.ok for answer in self.answers)
        return (
            f"requests={len(self.answers)} ok={ok} 503s={unavailable} others={len(self.others())} "
            f"jobs acquired={len(self.acquired)} finished={len(self.finished)}"
        )


async def call(
    client: httpx.AsyncClient, tally: Tally, endpoint: str, payload: dict[str, Any]
) -> tuple[Answer, Any]:
    """POST one API call; record how it went; return the answer and the decoded body (if any)."""
    sent = time.monotonic()
    try:
        response = await client.post(f"/{endpoint}", json=payload)
    except httpx.HTTPError as exc:
        answer = Answer(endpoint, sent, time.monotonic(), None, problem=f"{type(exc).__name__}: {exc}")
        tally.answers.append(answer)
        return answer, None
    answer = Answer(
        endpoint, sent, time.monotonic(), response.status_code, response.headers.get("Retry-After")
    )
    body = None
    try:
        body = response.json()
    except ValueError:
        answer = Answer(
            endpoint, sent, answer.received, response.status_code, problem=f"not JSON: {response.text[:200]}"
        )
    if answer.unavailable and not (isinstance(body, dict) and body.get("success") is False):
        answer = Answer(endpoint, sent, answer.received, 503, problem=f"503 body {response.text[:200]}")
    tally.answers.append(answer)
    return answer, body


async def report(client: httpx.AsyncClient, tally: Tally, job: dict[str, Any], status: str) -> bool:
    """Send one job report until the server acknowledges it, as a pilot does; False if it never did."""
    payload: dict[str, Any] = {
        "job_id": job["PandaID"],
        "job_status": status,
        "attempt_nr": job["attemptNr"],
        "site_name": QUEUE,
        "node": "wn-outage",
    }
    if status == "finished":
        payload["job_output_report"] = _output_report(job)
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        answer, body = await call(client, tally, "pilot/update_job", payload)
        if answer.ok:
            assert body["data"]["StatusCode"] == 0, body
            return True
        await asyncio.sleep(RETRY_PAUSE_SECONDS)
    return False


def _output_report(job: dict[str, Any]) -> str:
    return json.dumps(
        {
            lfn: {"guid": str(uuid.uuid4()), "fsize": 1024, "adler32": f"{zlib.adler32(lfn.encode()):08x}"}
            for lfn in job["outFiles"].split(",")
        }
    )


async def pilot(
    client: httpx.AsyncClient, tally: Tally, stop: asyncio.Event, task_id: int | None = None
) -> None:
    """Take one job at a time, report it running then finished; on 503 pause briefly and retry."""
    request: dict[str, Any] = {"site_name": QUEUE, "prod_source_label": "user", "node": "wn-outage"}
    if task_id is not None:
        request["task_id"] = task_id
    while not stop.is_set():
        answer, body = await call(client, tally, "pilot/acquire_jobs", request)
        if not answer.ok:
            await asyncio.sleep(RETRY_PAUSE_SECONDS)
            continue
        if body["data"] is None:
            await asyncio.sleep(0.5)
            continue
        for job in body["data"]["jobs"]:
            tally.acquired.append(job["PandaID"])
            if await report(client, tally, job, "running") and await report(client, tally, job, "finished"):
                tally.finished.append(job["PandaID"])


async def submit(user: httpx.AsyncClient, jobs: int) -> int:
    """Submit a task of ``jobs`` one-event jobs with no input; return its jediTaskID."""
    name = f"user.testuser.outage.{uuid.uuid4().hex[:12]}"
    params = {
        **NO_INPUT_TASK,
        "taskName": name,
        "nEvents": jobs,
        "nEventsPerJob": 1,
        "log": {**NO_INPUT_TASK["log"], "dataset": f"{name}.log/", "container": f"{name}.log/",
                "value": f"{name}.log.$JEDITASKID.${{SN}}.log.tgz"},
    }  # fmt: skip
    response = await user.post("/task/submit", json={"task_parameters": params})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True, body
    return int(body["data"])


async def wait_until(what: str, probe: Any, seconds: float = SETTLE_SECONDS) -> Any:
    """Await ``probe()`` every 0.2 s until it returns something true; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.2)


async def task_status(user: httpx.AsyncClient, task_id: int) -> str:
    response = await user.get("/task/get_status", params={"task_id": task_id})
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def job_statuses(client: httpx.AsyncClient, job_ids: list[int]) -> list[str]:
    statuses: list[str] = []
    for start in range(0, len(job_ids), 200):
        chunk = job_ids[start : start + 200]
        response = await client.get("/job/get_status", params={"job_ids": chunk})
        assert response.status_code == 200, response.text
        statuses += [entry["status"] for entry in response.json()["data"]]
    return statuses


async def run_after_outage(pilots: httpx.AsyncClient, user: httpx.AsyncClient) -> None:
    """The agents still work: a task submitted now gets its jobs, a pilot runs them, the task ends."""
    tally = Tally()
    task_id = await submit(user, 4)
    stop = asyncio.Event()
    worker = asyncio.create_task(pilot(pilots, tally, stop, task_id))
    try:
        await wait_until(f"the 4 jobs of task {task_id} finished by the pilot", lambda: _finished(tally, 4))
        status = await wait_until(
            f"task {task_id} done", lambda: _final_status(user, task_id), seconds=SETTLE_SECONDS
        )
    finally:
        stop.set()
        await worker
    assert status == "done", f"task {task_id} ended {status}; {tally.counts()}"
    assert not tally.others(), [answer.describe() for answer in tally.others()]


async def _finished(tally: Tally, count: int) -> bool:
    return len(tally.finished) >= count


async def _final_status(user: httpx.AsyncClient, task_id: int) -> str | None:
    status = await task_status(user, task_id)
    return status if status in ("done", "finished", "failed", "broken", "aborted") else None


@dataclass
class Outage:
    """Moments (monotonic clock) around one stop and start of PostgreSQL."""

    stopping: float = 0.0
    stopped: float = 0.0
    starting: float = 0.0
    started: float = 0.0


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_outage_under_load(outage_site: OutageSite, mode: str) -> None:
    asyncio.run(_outage_under_load(outage_site, mode))


async def _outage_under_load(outage_site: OutageSite, mode: str) -> None:
    tally = Tally()
    outage = Outage()
    async with outage_site.pilots() as pilots, outage_site.user() as user:
        await submit(user, JOBS_PER_TASK)
        stop = asyncio.Event()
        workers = [asyncio.create_task(pilot(pilots, tally, stop)) for _ in range(PILOTS)]
        try:
            await wait_until(
                f"{WARMUP_CYCLES} jobs done before the outage",
                lambda: _finished(tally, WARMUP_CYCLES),
            )
            outage.stopping = time.monotonic()
            await asyncio.to_thread(outage_site.cluster.stop, mode)
            outage.stopped = time.monotonic()
            await asyncio.sleep(OUTAGE_SECONDS)
            outage.starting = time.monotonic()
            await asyncio.to_thread(outage_site.cluster.start)
            outage.started = time.monotonic()
            # Load goes on past the recovery bound, so late failures would show.
            await asyncio.sleep(RECOVERY_SECONDS + 2)
        finally:
            stop.set()
            await asyncio.gather(*workers)
        _check_outage(outage_site, tally, outage, mode)
        finished = sorted(set(tally.finished))
        statuses = await job_statuses(pilots, finished)
        lost = [job for job, status in zip(finished, statuses, strict=True) if status in ("sent", "running")]
        dispatched = len(set(tally.acquired))
        AUDITS.append(
            Summary(
                f"PostgreSQL stopped for {OUTAGE_SECONDS:g} s ({mode}) under load: dispatched {dispatched}, "
                f"duplicates {len(tally.acquired) - dispatched}, lost updates {len(lost)} ({tally.counts()})"
            )
        )
        assert not lost, f"{len(lost)} acknowledged final reports lost, e.g. {lost[:5]}; {tally.counts()}"
        await run_after_outage(pilots, user)


def _check_outage(outage_site: OutageSite, tally: Tally, outage: Outage, mode: str) -> None:
    counts = tally.counts()
    others = tally.others()
    assert not others, (
        f"{mode} stop: answers other than 200 or 503 + Retry-After; {counts}; e.g. "
        f"{[answer.describe() for answer in others[:5]]}\n{outage_site.server_problems()}"
    )
    during = [
        answer
        for answer in tally.answers
        if outage.stopped <= answer.sent and answer.received <= outage.starting
    ]
    assert during and all(answer.unavailable for answer in during), (
        f"{mode} stop: {len(during)} answers while PostgreSQL was down, "
        f"{sum(not answer.unavailable for answer in during)} of them not 503; {counts}"
    )
    after = [answer for answer in tally.answers if answer.sent >= outage.started]
    first_ok = min((answer.received for answer in after if answer.ok), default=None)
    refused = [answer for answer in after if not answer.ok]
    last_refused = max((answer.received for answer in refused), default=outage.started)
    recovery = last_refused - outage.started
    summary = (
        f"{mode} stop: {counts}; 503s while down={len(during)}; stop took "
        f"{outage.stopped - outage.stopping:.1f} s, start {outage.started - outage.starting:.1f} s; "
        f"after the start: first success at {(first_ok or 0) - outage.started:.2f} s, "
        f"last 503 at {recovery:.2f} s ({len(refused)} of {len(after)} refused)"
    )
    print(summary)
    assert first_ok is not None, summary
    assert recovery <= RECOVERY_SECONDS, summary
    dispatched = len(tally.acquired)
    duplicates = dispatched - len(set(tally.acquired))
    assert duplicates == 0, f"{duplicates} jobs dispatched twice; {summary}"


class Probe:
    """Bursts of concurrent ``acquire_jobs`` requests, every answer tallied."""

    def __init__(self, pilots: httpx.AsyncClient) -> None:
        self.pilots = pilots
        self.tally = Tally()

    async def burst(self, count: int) -> list[Answer]:
        request = {"site_name": QUEUE, "prod_source_label": "user", "node": "wn-outage"}
        results = await asyncio.gather(
            *(call(self.pilots, self.tally, "pilot/acquire_jobs", request) for _ in range(count))
        )
        return [answer for answer, _ in results]

    async def success(self) -> float | None:
        """When a burst got a 200, or None."""
        answers = await self.burst(2)
        return max(answer.received for answer in answers) if any(answer.ok for answer in answers) else None

    def check(self, outage_site: OutageSite, summary: str) -> None:
        assert not self.tally.others(), (
            f"{summary}; e.g. {[answer.describe() for answer in self.tally.others()[:5]]}\n"
            f"{outage_site.server_problems()}"
        )


async def block_requests(
    outage_site: OutageSite, probe: Probe, count: int
) -> tuple[asyncpg.Connection, asyncpg.Connection, asyncio.Task[list[Answer]]]:
    """Lock the jobs table from a session of ours and send ``count`` requests that wait on the lock.

    Returns an admin session, the lock holder's session and the task of the waiting requests, so
    that what happens next finds those requests in the middle of a query.
    """
    admin = await asyncpg.connect(outage_site.dsn, timeout=30)
    holder = await asyncpg.connect(outage_site.dsn, timeout=30)
    await holder.execute("BEGIN")
    await holder.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
    blocked = asyncio.create_task(probe.burst(count))
    await wait_until("requests waiting on the jobs lock", lambda: _lock_waiters(admin, count), 60)
    return admin, holder, blocked


def test_shutdown_and_startup_windows(outage_site: OutageSite) -> None:
    asyncio.run(_windows(outage_site))


async def _windows(outage_site: OutageSite) -> None:
    """Force each in-between state of a stop and start in turn: every answer is 503 + Retry-After."""
    async with outage_site.pilots() as pilots:
        probe = Probe(pilots)
        # Fill the server's pool, so stale connections are there to be found later.
        assert all(answer.ok for answer in await probe.burst(PILOTS)), probe.tally.counts()
        admin, holder, blocked = await block_requests(outage_site, probe, 4)
        # A smart shutdown refuses new sessions ("the database system is shutting down") until our
        # two sessions end; terminating the server's sessions cuts the waiting requests off.
        outage_site.cluster.stop("smart", wait=False)
        await wait_until("the shutdown to refuse sessions", lambda: _refused(outage_site.dsn), 60)
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> ALL($1::int[])",
            [admin.get_server_pid(), holder.get_server_pid()],
        )
        cut_off = await blocked
        shutting_down = await probe.burst(PILOTS * 3)
        await holder.close()
        await admin.close()
        await wait_until(
            "PostgreSQL stopped", lambda: asyncio.to_thread(lambda: not outage_site.cluster.is_running())
        )
        down = await probe.burst(4)
        # A standby with hot standby off runs but refuses every session, like a server that is
        # still starting up; promoting it ends that state.
        outage_site.cluster.start(standby=True)
        starting = await probe.burst(4)
        promoted = time.monotonic()
        await asyncio.to_thread(outage_site.cluster.promote)
        recovery = await wait_until("a success after the promotion", probe.success) - promoted
    summary = (
        f"{probe.tally.counts()}; cut off mid-query: {_kinds(cut_off)}; "
        f"shutting down: {_kinds(shutting_down)}; down: {_kinds(down)}; starting: {_kinds(starting)}; "
        f"first success {recovery:.2f} s after the promotion"
    )
    AUDITS.append(Summary(f"PostgreSQL shutting-down and starting-up windows: {summary}"))
    probe.check(outage_site, summary)
    for phase in (cut_off, shutting_down, down, starting):
        assert all(answer.unavailable for answer in phase), summary
    # Each window really was met, so each mapping was exercised.
    _met(
        outage_site,
        summary,
        "terminating connection due to administrator command",
        "the database system is shutting down",
        "the database system is not accepting connections",
    )
    assert recovery <= RECOVERY_SECONDS, summary


def test_server_process_crash(outage_site: OutageSite) -> None:
    asyncio.run(_crash(outage_site))


async def _crash(outage_site: OutageSite) -> None:
    """A PostgreSQL process killed (as by the OOM killer): 503s through the crash restart."""
    async with outage_site.pilots() as pilots:
        probe = Probe(pilots)
        admin, holder, blocked = await block_requests(outage_site, probe, 4)
        victim = await admin.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE '%jobs%' LIMIT 1"
        )
        # PostgreSQL then drops every other session without a word, refuses new ones while it
        # replays the WAL ("in recovery mode", "not yet accepting connections"), and carries on.
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        cut_off = await blocked
        holder.terminate()
        admin.terminate()
        back = await wait_until("a success after the crash", probe.success) - killed
    summary = (
        f"{probe.tally.counts()}; cut off by the crash: {_kinds(cut_off)}; "
        f"first success {back:.2f} s after the kill"
    )
    AUDITS.append(Summary(f"PostgreSQL process killed: {summary}"))
    probe.check(outage_site, summary)
    assert all(answer.unavailable for answer in cut_off), summary
    _met(outage_site, summary, "connection was closed in the middle of operation")


def _met(outage_site: OutageSite, summary: str, *messages: str) -> None:
    log = "".join(outage_site.server.output)
    for message in messages:
        assert message in log, f"the server never met {message!r}; {summary}"


async def _lock_waiters(admin: asyncpg.Connection, count: int) -> bool:
    waiting = await admin.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE '%jobs%'"
    )
    return waiting >= count


async def _refused(dsn: str) -> bool:
    try:
        connection = await asyncpg.connect(dsn, timeout=10)
    except asyncpg.CannotConnectNowError:
        return True
    await connection.close()
    return False


def _kinds(answers: list[Answer]) -> str:
    kinds: dict[str, int] = {}
    for answer in answers:
        key = str(answer.status or answer.problem)
        kinds[key] = kinds.get(key, 0) + 1
    return ", ".join(f"{count}x{key}" for key, count in sorted(kinds.items())) or "none"
