"""``python -m bench``: start `bamboo serve`, load it on loopback, print the table, write the JSON.

The measurements, in order, each against the same server:

1. ``system/is_alive``: the ceiling of the stack (HTTP parsing, routing, envelope; no database);
2. ``pilot/acquire_jobs`` with n_jobs=1 and n_jobs=10, on jobs the agents generated beforehand;
3. ``pilot/update_job`` heartbeats (``running``) on the jobs dispatched in 2, then
   ``harvester/update_workers`` with 100 workers per call;
4. the latency from a task submission's answer to its first activated job;
5. dispatch and heartbeats again beside 10,000 active jobs, with an empty job archive and then
   with 1,000,000 archived jobs (written straight into the database), compared in the same run
   (measured right after 3);
6. the full job cycle: pilots take jobs, report them running and finished, and the server's agents
   finalise them, while the agents still generate the rest of the same task;
7. how fast the agents turn one large task (100,000 jobs by default) into activated jobs;
8. with ``--statistics N``: every ``statistics/*`` endpoint on one connection beside N archived
   jobs (written straight into the database) and 10,000 active ones.

Every rate is also given as a ratio to the is_alive rate of the same run, which takes out much of
what the machine contributes; the CPU columns show what the client and the server each used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
from rich.console import Console
from rich.table import Table

from bench import machine
from bench.load import WORKERS_PER_CALL, LoadResult, LoadSpec, Operation, run_load
from bench.server import (
    BenchError,
    Server,
    create_postgres_database,
    drop_postgres_database,
    run_admin,
    start_server,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SITE = "BENCH_PQ"
TRANSPORT = "plain HTTP on 127.0.0.1 with bearer tokens (BAMBOO_TOKEN_OVER_HTTP=true): no TLS cost"
WARMUP_SECONDS = 1.0
TABLE_WIDTH = 200
# Client processes get this long to be ready, so that their loads start together.
START_DELAY_SECONDS = 0.3
# A generous request budget per second of load: the deadline, not the budget, ends a normal load.
REQUESTS_PER_SECOND_BUDGET = 200_000
# Jobs made for a dispatch load: the rate it may reach times its duration, with a margin; bounded
# so that generating them stays well under a minute.
POOL_MARGIN = 1.25
MIN_POOL_JOBS = 100
MAX_POOL_JOBS = 30_000
GENERATION_POLL_SECONDS = 0.5
GENERATION_GRACE_SECONDS = 30.0
GENERATION_SECONDS_PER_JOB = 0.01
ACTIVATION_POLL_SECONDS = 0.02
ACTIVATION_TIMEOUT_SECONDS = 5.0
# The submission series stops after this many submissions in a row without an activated job.
ACTIVATION_MISSES = 3
# The large task: as many jobs as the issue names (a smoke run makes fewer). Its progress is read
# from the database, because listing 100,000 job ids through the API twice a second would load the
# server being measured; the API is asked once at the end to confirm the count.
LARGE_TASK_JOBS = 100_000
QUICK_LARGE_TASK_JOBS = 10_000
LARGE_TASK_POLL_SECONDS = 0.25
LARGE_TASK_TIMEOUT_SECONDS = 600.0
# The archive rows: dispatch and heartbeats beside this many active jobs, with an empty archive and
# with a full one, which must not slow them by more than a fifth (the project issue's aim).
ARCHIVE_JOBS = 1_000_000
QUICK_ARCHIVE_JOBS = 50_000
ARCHIVE_ACTIVE_JOBS = 10_000
QUICK_ARCHIVE_ACTIVE_JOBS = 2_000
ARCHIVE_AIM = 0.8
# Archived rows get PandaIDs and file row ids from here up (a thousand jobs per jediTaskID), far
# above what the server's sequences hand out during a run, so they never collide with jobs the
# archiver moves.
ARCHIVE_ID_BASE = 10**12
# Rows written per statement (and, on SQLite, per transaction) while filling the archive.
ARCHIVE_CHUNK = 100_000
# The full job cycle: Harvester-style pilots taking this many jobs per round, on a task with enough
# jobs to keep them busy for the whole load at the aimed rate and this many more, which the agents
# generate while the pilots run.
# The event range row: one task and jobset of consumer jobs, ids far above any the server gives.
EVENT_ROW = "event/acquire_event_ranges n_ranges=10"
EVENT_RANGES_PER_CALL = 10
EVENT_CONSUMERS = 64
EVENT_RANGES_PER_FILE = 1_000
MIN_EVENT_RANGES = 1_000
MAX_EVENT_RANGES = 300_000
EVENT_ID_BASE = 2 * 10**12
FULL_CYCLE_ROW = "full job cycle"
FULL_CYCLE_AIM_JOBS_PER_S = 1_000
FULL_CYCLE_JOBS_PER_PILOT = 10
FULL_CYCLE_GENERATED_JOBS = 4_000
FULL_CYCLE_POLL_SECONDS = 0.1
FULL_CYCLE_TIMEOUT_SECONDS = 600.0
# The statistics rows: this many active jobs (and --statistics archived ones) at queues of their
# own, with ids far above any the server gives; every statistics endpoint then read on one
# connection, its latency compared with the aim.
STATISTICS_ID_BASE = 3 * 10**12
STATISTICS_ACTIVE_ID_BASE = STATISTICS_ID_BASE + 10**10
STATISTICS_ACTIVE_JOBS = 10_000
# Archived jobs in the 12 h window: the newest fiftieth (as with 90 days of retention and a busy
# last half day), the others spread over the 89 days before.
STATISTICS_WINDOW_SHARE = 50
STATISTICS_AIM_MS = 50.0
# The agent recounts a million archived jobs in seconds; on a loaded machine, allow for more.
STATISTICS_RECOUNT_SECONDS = 300.0
_NO_RECOUNT = f"the statistics agent did not recount within {STATISTICS_RECOUNT_SECONDS:g} s"
STATISTICS_SHARES = {
    "default": "Bench Other",
    "shares": [
        {"name": "Bench Production", "value": 60, "prodsourcelabel": "managed"},
        {"name": "Bench Analysis", "value": 35, "prodsourcelabel": "user|panda"},
        {"name": "Bench Other", "value": 5},
    ],
}
STATISTICS_READS = (
    "job_stats_by_cloud",
    "job_stats_by_cloud?type=analysis",
    "production_job_stats_by_cloud_and_processing_type",
    "active_job_stats_by_site",
    "active_job_detailed_stats_by_site",
    "job_stats_by_site_and_resource_type",
    "job_stats_by_site_share_and_resource_type",
    # A week's window: about eight times the archived rows of the default one.
    "job_stats_by_site_and_resource_type?time_window=10080",
)


@dataclass(frozen=True)
class Options:
    database: str
    workers: int
    duration: float
    concurrency: int
    clients: int
    submissions: int
    quick: bool
    large_task_jobs: int
    archive_jobs: int = 0
    statistics_jobs: int = 0


@dataclass
class Row:
    """One line of the table (and of the JSON ``rows``)."""

    name: str
    requests: int = 0
    jobs: int = 0
    elapsed: float = 0.0
    errors: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    ops_per_s: float | None = None
    jobs_per_s: float | None = None
    ratio_to_is_alive: float | None = None
    client_cores: float | None = None
    server_cores: float | None = None
    machine_cores: float | None = None
    aim: str = ""
    aim_met: bool | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Aim:
    """A target from the project issue: something to aim at, never a pass/fail test."""

    text: str
    met: Callable[[Row], bool | None]


def large_task_row_name(jobs: int) -> str:
    return f"generate one {jobs:,}-job task"


def aims(database: str, large_task_jobs: int = LARGE_TASK_JOBS) -> dict[str, Aim]:
    """The targets by row name; batched dispatch aims higher on PostgreSQL than on SQLite."""
    batched = 5_000 if database == "postgresql" else 2_000
    return {
        # 100,000 jobs in well under a minute, on either database.
        large_task_row_name(large_task_jobs): Aim(
            "≥ 2,000 jobs/s", lambda row: _at_least(row.jobs_per_s, 2_000) if not row.errors else False
        ),
        "acquire n_jobs=1": Aim("≥ 25 % of is_alive", lambda row: _at_least(row.ratio_to_is_alive, 0.25)),
        "acquire n_jobs=10": Aim(f"≥ {batched:,} jobs/s", lambda row: _at_least(row.jobs_per_s, batched)),
        "update_job heartbeat": Aim("≥ 2,000/s", lambda row: _at_least(row.ops_per_s, 2_000)),
        # A submission that never showed a job counts against the aim, whatever the others did.
        "submit → first job activated": Aim(
            "p95 < 1 s",
            lambda row: None if row.latency_p95_ms is None else row.latency_p95_ms < 1_000 and not row.errors,
        ),
    }


def _at_least(value: float | None, floor: float) -> bool | None:
    return None if value is None else value >= floor


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile (no interpolation: with 20 samples, p95 is the 19th)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1_000


class Bench:
    """One benchmark run against one started server."""

    def __init__(
        self, server: Server, options: Options, executor: ProcessPoolExecutor, console: Console
    ) -> None:
        self.server = server
        self.options = options
        self.executor = executor
        self.console = console
        self.run_id = uuid.uuid4().hex[:8]
        self.tasks_submitted = 0
        self.user_headers: dict[str, str] = {}
        self.production_headers: dict[str, str] = {}
        # Activated jobs left in the queue by the dispatch loads so far.
        self.queued = 0

    def issue_tokens(self) -> None:
        user = self.server.token("Bench User")
        robot = self.server.token("Bench Robot", role="production")
        self.user_headers = {"Authorization": f"Bearer {user}", "Origin": "bamboo"}
        self.production_headers = {"Authorization": f"Bearer {robot}", "Origin": "bamboo.production"}

    def say(self, message: str) -> None:
        self.console.print(f"[dim]· {message}[/dim]")

    async def load(
        self,
        name: str,
        operation: Operation,
        *,
        duration: float,
        max_requests: int,
        n_jobs: int = 1,
        job_ids: Sequence[int] = (),
        concurrency: int | None = None,
        jobset_id: int = 0,
        path: str = "",
    ) -> tuple[Row, LoadResult]:
        """Run one load from all client processes at once and measure the CPU it cost."""
        concurrency = concurrency or self.options.concurrency
        # Every client process needs a connection and, for heartbeats, a job of its own.
        clients = min(self.options.clients, concurrency, len(job_ids) or concurrency)
        connections = [concurrency // clients + (i < concurrency % clients) for i in range(clients)]
        budgets = [max(1, max_requests * n // concurrency) for n in connections]
        # is_alive and the statistics are public and go without a token: no authentication.
        headers = {} if operation in ("is_alive", "statistics") else self.production_headers
        start_at = time.time() + START_DELAY_SECONDS
        specs = [
            LoadSpec(
                base_url=self.server.base_url,
                headers=headers,
                operation=operation,
                connections=connections[i],
                duration=duration,
                max_requests=budgets[i],
                start_at=start_at,
                site=SITE,
                n_jobs=n_jobs,
                job_ids=tuple(job_ids[i::clients]),
                client_index=i,
                jobset_id=jobset_id,
                path=path,
            )
            for i in range(clients)
        ]
        loop = asyncio.get_running_loop()
        pending = [loop.run_in_executor(self.executor, run_load, spec) for spec in specs]
        await asyncio.sleep(max(0.0, start_at - time.time()))
        before, window_start = machine.sample(self.server.process.pid), time.perf_counter()
        result = LoadResult.merge(list(await asyncio.gather(*pending)))
        after, window = machine.sample(self.server.process.pid), time.perf_counter() - window_start
        machine_cores, server_cores = machine.cores_used(before, after, window)
        row = Row(
            name=name,
            requests=result.requests,
            jobs=result.jobs,
            elapsed=result.elapsed,
            errors=result.errors,
            latency_p50_ms=_ms(percentile(result.latencies, 0.50)),
            latency_p95_ms=_ms(percentile(result.latencies, 0.95)),
            ops_per_s=result.requests / result.elapsed if result.elapsed else None,
            jobs_per_s=(
                result.jobs / result.elapsed
                if result.elapsed and operation in ("acquire", "events")
                else None
            ),
            client_cores=result.client_cpu / result.elapsed if result.elapsed else None,
            server_cores=server_cores,
            machine_cores=machine_cores,
        )
        if result.errors:
            row.notes.append(f"{result.errors} errors, first: {result.first_error}")
        return row, result

    async def measure_is_alive(self) -> list[Row]:
        """is_alive at full concurrency (the reference), then on one connection (the bare latency)."""
        duration = self.options.duration
        budget = int(duration * REQUESTS_PER_SECOND_BUDGET)
        # The warm-up starts the client processes outside the measurement.
        await self.load("warm-up", "is_alive", duration=WARMUP_SECONDS, max_requests=budget)
        self.say(f"system/is_alive for {duration:g} s")
        alive, _ = await self.load("system/is_alive", "is_alive", duration=duration, max_requests=budget)
        self.say(f"system/is_alive on 1 connection for {duration:g} s")
        single, _ = await self.load(
            "system/is_alive, 1 connection", "is_alive", duration=duration, max_requests=budget, concurrency=1
        )
        return [alive, single]

    async def submit(self, client: httpx.AsyncClient, n_jobs: int, *, output: bool = False) -> int:
        """Submit a no-input task of ``n_jobs`` one-event jobs; return its jediTaskID.

        With ``output`` the jobs also write a data file and take their event range as arguments,
        as an event generation task does; otherwise they only write their log.
        """
        self.tasks_submitted += 1
        name = f"user.benchuser.{self.run_id}.{self.tasks_submitted:05d}"
        job_parameters: list[dict[str, Any]] = [{"type": "constant", "value": "echo"}]
        if output:
            job_parameters += [
                {"type": "template", "param_type": "number", "value": "--maxEvents=${MAXEVENTS}"},
                {"type": "template", "param_type": "number", "value": "--skipEvents=${SKIPEVENTS}"},
                {
                    "type": "template",
                    "param_type": "output",
                    "dataset": f"{name}_EVNT/",
                    "value": f"--outputFile={name}.$JEDITASKID._${{SN/P}}.EVNT.root",
                },
            ]
        parameters = {
            "taskName": name,
            "vo": "bamboo",
            "prodSourceLabel": "user",
            "site": SITE,
            "transPath": "run",
            "noInput": True,
            "nEvents": n_jobs,
            "nEventsPerJob": 1,
            # The rows measure generation and dispatch: all jobs at once, without a scouting round.
            "skipScout": True,
            "jobParameters": job_parameters,
            "log": {
                "type": "template",
                "param_type": "log",
                "dataset": f"{name}.log/",
                "value": f"{name}.log.$JEDITASKID.${{SN}}.log.tgz",
            },
        }
        body = await _call(client.post("/api/v1/task/submit", json={"task_parameters": parameters}))
        if body.get("success") is not True:
            raise BenchError(f"task/submit was refused: {body}")
        return int(body["data"])

    async def create_jobs(self, client: httpx.AsyncClient, count: int) -> Row:
        """Submit one task of ``count`` jobs and wait until the agents have generated all of them."""
        self.say(f"generating {count:,} activated jobs")
        start = time.perf_counter()
        # One task, not several: the generator does the same work either way (it makes a bounded
        # number of jobs per task per cycle, a cycle's cost grows with its jobs), and fewer tasks
        # keep fewer of them in the generator's queue for the submissions timed later.
        task_id = await self.submit(client, count)
        deadline = start + GENERATION_GRACE_SECONDS + count * GENERATION_SECONDS_PER_JOB
        made = 0
        while made < count and time.perf_counter() < deadline:
            await asyncio.sleep(GENERATION_POLL_SECONDS)
            made = len(await job_ids(client, task_id))
        if made < count:
            raise BenchError(
                f"the agents generated {made:,} of {count:,} jobs within {deadline - start:.0f} s"
            )
        elapsed = time.perf_counter() - start
        return Row(
            name=f"generate {count:,} jobs (agents)", jobs=count, elapsed=elapsed, jobs_per_s=count / elapsed
        )

    async def measure_acquire(
        self, client: httpx.AsyncClient, alive: Row, *, suffix: str = "", min_pool: int = MIN_POOL_JOBS
    ) -> tuple[list[Row], list[int]]:
        """Dispatch with n_jobs=1, then n_jobs=10, each from a queue filled beforehand.

        A queue holds a little more than the load can take (at least ``min_pool`` jobs): a
        single-job call is not expected to beat is_alive, and a call for ten jobs not to beat ten
        single-job calls. ``suffix`` ends the row names.
        """
        rows: list[Row] = []
        dispatched: list[int] = []
        activated = self.queued
        duration = self.options.duration
        expected_jobs_per_s = alive.ops_per_s or 0.0
        for n_jobs in (1, 10):
            wanted = min(
                MAX_POOL_JOBS, max(min_pool, math.ceil(duration * expected_jobs_per_s * POOL_MARGIN))
            )
            if wanted > activated:
                rows.append(await self.create_jobs(client, wanted - activated))
            pool = max(wanted, activated)
            self.say(f"pilot/acquire_jobs n_jobs={n_jobs} for {duration:g} s on {pool:,} jobs")
            row, result = await self.load(
                f"acquire n_jobs={n_jobs}{suffix}",
                "acquire",
                duration=duration,
                # Enough requests to empty the queue, plus the ones that find it empty.
                max_requests=math.ceil(pool / n_jobs) + self.options.concurrency,
                n_jobs=n_jobs,
            )
            activated = pool - result.jobs
            if result.drained:
                row.notes.append(f"drained all {result.jobs:,} jobs after {result.elapsed:.2f} s")
            duplicates = len(result.acquired) - len(set(result.acquired))
            if duplicates:
                row.notes.append(f"{duplicates} jobs handed out twice")
            dispatched.extend(result.acquired)
            rows.append(row)
            expected_jobs_per_s = 10 * (row.ops_per_s or 0.0)
        self.queued = activated
        return rows, dispatched

    async def measure_event_ranges(self, alive: Row) -> Row:
        """``event/acquire_event_ranges`` with n_ranges=10 from one jobset filled beforehand.

        The jobset holds a little more than the load can take at ten ranges per is_alive call,
        written straight into the database (the ES generator is not what is measured here).
        """
        duration = self.options.duration
        wanted = math.ceil(duration * (alive.ops_per_s or 0.0) * EVENT_RANGES_PER_CALL * POOL_MARGIN)
        size = min(MAX_EVENT_RANGES, max(MIN_EVENT_RANGES, wanted))
        self.say(f"filling one jobset with {size:,} event ranges and {EVENT_CONSUMERS} consumers")
        await _fill_jobset(self.server, size)
        self.say(f"event/acquire_event_ranges n_ranges={EVENT_RANGES_PER_CALL} for {duration:g} s")
        row, result = await self.load(
            EVENT_ROW,
            "events",
            duration=duration,
            max_requests=math.ceil(size / EVENT_RANGES_PER_CALL) + self.options.concurrency,
            n_jobs=EVENT_RANGES_PER_CALL,
            job_ids=[EVENT_ID_BASE + 1 + index for index in range(EVENT_CONSUMERS)],
            jobset_id=EVENT_ID_BASE,
        )
        row.notes.append("jobs/s counts event ranges")
        if result.drained:
            row.notes.append(f"drained all {result.jobs:,} ranges after {result.elapsed:.2f} s")
        return row

    async def measure_heartbeats(self, dispatched: list[int], suffix: str = "") -> Row:
        duration = self.options.duration
        name = f"update_job heartbeat{suffix}"
        if not dispatched:
            return Row(name=name, notes=["skipped: no job was dispatched"])
        self.say(f"pilot/update_job heartbeats for {duration:g} s over {len(dispatched):,} dispatched jobs")
        row, _ = await self.load(
            name,
            "heartbeat",
            duration=duration,
            max_requests=int(duration * REQUESTS_PER_SECOND_BUDGET),
            job_ids=dispatched,
        )
        return row

    async def measure_worker_updates(self) -> Row:
        """harvester/update_workers, as many Harvester instances as client processes."""
        duration = self.options.duration
        self.say(f"harvester/update_workers ({WORKERS_PER_CALL} workers per call) for {duration:g} s")
        row, result = await self.load(
            "harvester/update_workers",
            "update_workers",
            duration=duration,
            max_requests=int(duration * REQUESTS_PER_SECOND_BUDGET),
        )
        if result.elapsed:
            row.notes.append(
                f"{WORKERS_PER_CALL} workers per call: {result.jobs / result.elapsed:,.0f} workers/s"
            )
        return row

    async def measure_activation(self, client: httpx.AsyncClient) -> Row:
        """Submit one-job tasks one after another; time each from the answer to its first job."""
        count = self.options.submissions
        self.say(f"submit → first job activated, {count} submissions one at a time")
        latencies: list[float] = []
        submit_times: list[float] = []
        misses = 0
        for _ in range(count):
            sent = time.perf_counter()
            task_id = await self.submit(client, 1)
            answered = time.perf_counter()
            submit_times.append(answered - sent)
            deadline = answered + ACTIVATION_TIMEOUT_SECONDS
            while time.perf_counter() < deadline:
                if await job_ids(client, task_id):
                    latencies.append(time.perf_counter() - answered)
                    misses = 0
                    break
                await asyncio.sleep(ACTIVATION_POLL_SECONDS)
            else:
                misses += 1
                if misses == ACTIVATION_MISSES:
                    break
        submitted = len(submit_times)
        row = Row(
            name="submit → first job activated",
            requests=len(latencies),
            errors=submitted - len(latencies),
            latency_p50_ms=_ms(percentile(latencies, 0.50)),
            latency_p95_ms=_ms(percentile(latencies, 0.95)),
        )
        submit_p50 = _ms(percentile(submit_times, 0.5)) or 0.0
        row.notes.append(
            f"{len(latencies)} of {submitted} activated, polled every "
            f"{ACTIVATION_POLL_SECONDS * 1000:.0f} ms; task/submit itself p50 {submit_p50:.0f} ms"
        )
        if row.errors:
            row.notes.append(
                f"{row.errors} not activated within {ACTIVATION_TIMEOUT_SECONDS:g} s"
                + (f", stopped after {ACTIVATION_MISSES} in a row" if submitted < count else "")
            )
        return row

    async def measure_full_cycle(self, client: httpx.AsyncClient) -> list[Row]:
        """Pilots run whole job cycles while the agents still generate the same task's jobs.

        One task with a data output and a log: once the agents have made the jobs the pilots may
        take (timed: generation with no pilots), each connection becomes a pilot that takes
        ``FULL_CYCLE_JOBS_PER_PILOT`` jobs, reports them running and then finished with an output
        report (``update_jobs_bulk``), and starts again. Jobs count once the server's agents made
        them ``finished``: the rate is over the time from the start of the load until the last
        reported job left ``holding``. Meanwhile the agents make the task's remaining jobs, timed
        until the last: generation while pilots run and the finaliser ends jobs of the same task
        (its dataset rows are the ones both agents update).
        """
        duration = self.options.duration
        size = max(MIN_POOL_JOBS, math.ceil(duration * FULL_CYCLE_AIM_JOBS_PER_S * POOL_MARGIN))
        size = min(MAX_POOL_JOBS, size)
        total = size + FULL_CYCLE_GENERATED_JOBS
        self.say(f"{FULL_CYCLE_ROW}: one task of {total:,} jobs, pilots start once {size:,} are made")
        async with _job_counter(self.server) as counter:
            start = time.perf_counter()
            task_id = await self.submit(client, total, output=True)
            made = 0
            deadline = start + GENERATION_GRACE_SECONDS + size * GENERATION_SECONDS_PER_JOB
            while made < size and time.perf_counter() < deadline:
                await asyncio.sleep(FULL_CYCLE_POLL_SECONDS)
                made = await counter(task_id)
            if made < size:
                raise BenchError(
                    f"the agents generated {made:,} of {size:,} jobs within {deadline - start:.0f} s"
                )
            quiet_elapsed = time.perf_counter() - start
            quiet = Row(
                name=f"generate {made:,} jobs (agents)",
                jobs=made,
                elapsed=quiet_elapsed,
                jobs_per_s=made / quiet_elapsed,
            )
            self.say(f"{FULL_CYCLE_ROW} for {duration:g} s: {self.options.concurrency} pilots")
            load_done = asyncio.Event()
            start = time.perf_counter()
            watcher = asyncio.create_task(_watch_cycle(counter, task_id, total, start, load_done))
            row, result = await self.load(
                FULL_CYCLE_ROW,
                "cycle",
                duration=duration,
                max_requests=math.ceil(total / FULL_CYCLE_JOBS_PER_PILOT) + self.options.concurrency,
                n_jobs=FULL_CYCLE_JOBS_PER_PILOT,
            )
            load_end = time.perf_counter() - start
            load_done.set()
            watch = await watcher
            finished = await counter.in_status("finished")
        reported = result.jobs
        row.requests, row.jobs = result.requests, reported
        row.elapsed = watch.holding_empty_after or load_end
        row.jobs_per_s = reported / row.elapsed if row.elapsed else None
        # A pilot's round is three requests (acquire, running, finished): latency is per round.
        row.ops_per_s = None
        row.notes.append(
            f"{reported:,} jobs reported finished by {len(result.acquired):,} taken in {load_end:.1f} s; "
            f"the last left holding after {row.elapsed:.1f} s; holding peaked at {watch.holding_peak:,}"
        )
        if watch.holding_at_load_end and watch.holding_empty_after and watch.load_end_seen_after:
            # The finaliser's own rate, once the pilots no longer compete with it for the CPU.
            backlog_time = watch.holding_empty_after - watch.load_end_seen_after
            row.notes.append(
                f"the finaliser then ended the last {watch.holding_at_load_end:,} in {backlog_time:.1f} s"
            )
        if result.drained:
            row.notes.append("the pilots drained the queue")
        if finished != reported or watch.holding_empty_after is None:
            row.errors += 1
            row.notes.append(f"{finished:,} of the {reported:,} reported jobs are finished")
        duplicates = len(result.acquired) - len(set(result.acquired))
        if duplicates:
            row.errors += 1
            row.notes.append(f"{duplicates} jobs handed out twice")
        if self.options.database == "postgresql":
            # The issue's aim for the whole cycle names PostgreSQL only.
            row.aim = f"≥ {FULL_CYCLE_AIM_JOBS_PER_S:,} jobs/s"
            row.aim_met = not row.errors and (row.jobs_per_s or 0) >= FULL_CYCLE_AIM_JOBS_PER_S
        remaining = total - made
        generated = Row(
            name=f"generate the last {remaining:,} jobs under the full cycle", jobs=watch.generated - made
        )
        if watch.generated_after is None:
            generated.errors = 1
            generated.notes.append(f"only {watch.generated - made:,} of {remaining:,} jobs generated")
        elif remaining:
            generated.elapsed = watch.generated_after
            generated.jobs_per_s = remaining / watch.generated_after
            if quiet.jobs_per_s:
                generated.notes.append(
                    f"{generated.jobs_per_s / quiet.jobs_per_s:.2f} × the rate with no pilots (row above)"
                )
        return [quiet, row, generated]

    async def measure_large_task(self, client: httpx.AsyncClient) -> Row:
        """One task of many jobs, from the submission until the database holds all of them.

        Last of the rows: its jobs stay activated, and the rows before it size their queues on
        what they expect to dispatch.
        """
        count = self.options.large_task_jobs
        name = large_task_row_name(count)
        self.say(f"{name}: submission until all jobs are activated")
        before, start = machine.sample(self.server.process.pid), time.perf_counter()
        task_id = await self.submit(client, count, output=True)
        first_job_after: float | None = None
        made = 0
        async with _job_counter(self.server) as jobs_of:
            deadline = start + LARGE_TASK_TIMEOUT_SECONDS
            while made < count and time.perf_counter() < deadline:
                await asyncio.sleep(LARGE_TASK_POLL_SECONDS)
                made = await jobs_of(task_id)
                if made and first_job_after is None:
                    first_job_after = time.perf_counter() - start
        elapsed = time.perf_counter() - start
        after = machine.sample(self.server.process.pid)
        machine_cores, server_cores = machine.cores_used(before, after, elapsed)
        row = Row(
            name=name,
            jobs=made,
            elapsed=elapsed,
            jobs_per_s=made / elapsed,
            server_cores=server_cores,
            machine_cores=machine_cores,
        )
        if made < count:
            # The rate is then over the jobs made so far, and the aim counts as missed.
            row.errors = 1
            row.notes.append(f"only {made:,} of {count:,} jobs after {elapsed:.0f} s")
            return row
        listed = await job_ids(client, task_id)
        if len(set(listed)) != count:
            row.errors = 1
            row.notes.append(f"task/get_job_ids lists {len(set(listed)):,} distinct jobs, not {count:,}")
        row.notes.append(
            f"{elapsed:.1f} s in all, first job after {first_job_after or 0:.1f} s (refinement); "
            f"database polled every {LARGE_TASK_POLL_SECONDS:g} s"
        )
        if server_cores is not None:
            # CPU time per job depends less on what else the machine runs than the rate does.
            row.notes.append(f"server CPU {server_cores * elapsed / count * 1e6:,.0f} µs per job")
        return row

    async def measure_archive(self, client: httpx.AsyncClient, alive: Row) -> list[Row]:
        """Dispatch and heartbeats with an empty job archive, with a full one, and with an empty one
        again, in this run.

        Each phase dispatches from a queue of at least the active-job count (topped up by the
        agents); the archive is filled straight in the database, as fast as the database takes
        rows, and emptied again before the last phase. The active tables grow from phase to phase
        (every phase leaves its jobs there), which alone slows later phases a little, so the full
        archive's rows are compared with the mean of the empty-archive phases before and after
        them: the aim is 80 %.
        """
        size = self.options.archive_jobs
        active = QUICK_ARCHIVE_ACTIVE_JOBS if self.options.quick else ARCHIVE_ACTIVE_JOBS
        full_label = f"{size:,}-job archive"
        phases = (("empty archive", 0), (full_label, size), ("empty archive again", 0))
        rows: list[Row] = []
        measured: dict[str, dict[str, Row]] = {}
        try:
            for label, fill in phases:
                if fill:
                    rows.append(await self.fill_archive(fill))
                suffix = f", {label}"
                acquire_rows, dispatched = await self.measure_acquire(
                    client, alive, suffix=suffix, min_pool=active
                )
                phase_rows = [*acquire_rows, await self.measure_heartbeats(dispatched, suffix)]
                rows += phase_rows
                measured[label] = {
                    row.name.removesuffix(suffix): row for row in phase_rows if row.name.endswith(suffix)
                }
                if fill:
                    await _empty_archive(self.server)
        finally:
            await _empty_archive(self.server)
        baselines = [measured.get(label, {}) for label, fill in phases if not fill]
        for name, row in measured.get(full_label, {}).items():
            empty_rows = [phase[name] for phase in baselines if name in phase]
            if not empty_rows or name.startswith("generate"):
                continue
            rate = _rate(row)
            base_rates = [base for base in map(_rate, empty_rows) if base]
            if rate is None or len(base_rates) < len(empty_rows):
                continue
            share = rate / statistics.fmean(base_rates)
            row.aim, row.aim_met = f"≥ {ARCHIVE_AIM:.0%} of the empty archive's rate", share >= ARCHIVE_AIM
            row.notes.append(f"{share:.0%} of the mean rate with an empty archive before and after")
            cost = _server_ms_per_request(row)
            base_costs = [base for base in map(_server_ms_per_request, empty_rows) if base is not None]
            if cost is not None and len(base_costs) == len(empty_rows):
                # On a shared machine the server's CPU share moves the rate; its CPU per request less.
                empty_costs = " and ".join(f"{base:.2f}" for base in base_costs)
                row.notes.append(f"server CPU {cost:.2f} ms per request (empty archive: {empty_costs})")
        return rows

    async def fill_archive(self, size: int) -> Row:
        """Write ``size`` finished jobs, one log file each, into the archive tables directly."""
        self.say(f"filling the job archive with {size:,} jobs (one log file each) in the database")
        start = time.perf_counter()
        await _fill_archive(self.server, size)
        elapsed = time.perf_counter() - start
        return Row(
            name=f"fill archive with {size:,} jobs",
            jobs=size,
            elapsed=elapsed,
            notes=[f"{elapsed:.1f} s ({size / elapsed:,.0f} jobs/s) straight into the database"],
        )

    async def measure_statistics(self) -> list[Row]:
        """Every statistics endpoint on one connection, beside ``--statistics`` archived jobs.

        The jobs are written straight into the database (and the share tree loaded) first; each
        read must count them. The aim is a p95 latency under 50 ms with 1,000,000 archived jobs.
        """
        size = self.options.statistics_jobs
        self.say(f"statistics: writing {size:,} archived and {STATISTICS_ACTIVE_JOBS:,} active jobs")
        start = time.perf_counter()
        with tempfile.NamedTemporaryFile("wb", suffix=".json") as tree:
            tree.write(orjson.dumps(STATISTICS_SHARES))
            tree.flush()
            self.server.admin("share", "load", tree.name)
        await _fill_statistics(self.server, size)
        elapsed = time.perf_counter() - start
        recount = await _recount_statistics(self.server)
        rows = [
            Row(
                name=f"fill {size:,} archived + {STATISTICS_ACTIVE_JOBS:,} active jobs",
                jobs=size + STATISTICS_ACTIVE_JOBS,
                elapsed=elapsed,
                notes=[
                    f"{elapsed:.1f} s straight into the database; {size // STATISTICS_WINDOW_SHARE:,} "
                    "archived in the 12 h window, the rest 1 to 90 days old",
                    f"the statistics agent's recount of them: {recount:.1f} s",
                ],
            )
        ]
        duration = self.options.duration
        for read in STATISTICS_READS:
            self.say(f"statistics/{read} on 1 connection for {duration:g} s")
            database_before = await _database_cpu(self.server)
            row, _ = await self.load(
                f"statistics/{read}",
                "statistics",
                duration=duration,
                max_requests=int(duration * REQUESTS_PER_SECOND_BUDGET),
                concurrency=1,
                path=f"/api/v1/statistics/{read}",
            )
            database_after = await _database_cpu(self.server)
            row.aim = f"p95 < {STATISTICS_AIM_MS:g} ms"
            row.aim_met = (
                None
                if row.latency_p95_ms is None
                else (row.latency_p95_ms < STATISTICS_AIM_MS and not row.errors)
            )
            row.notes.append(f"1 connection, {size:,} archived jobs")
            # On a busy machine the latency mostly waits for a CPU; the CPU time a request costs
            # is what it would take on an idle one (one request at a time).
            server_ms = _server_ms_per_request(row)
            if server_ms is not None:
                cost = f"CPU per request: server {server_ms:.1f} ms"
                if database_after and row.requests:
                    spent = sum(cpu - database_before.get(pid, 0.0) for pid, cpu in database_after.items())
                    cost += f" + PostgreSQL {spent / row.requests * 1000:.1f} ms"
                row.notes.append(cost)
            rows.append(row)
        return rows

    async def run(self) -> list[Row]:
        rows = await self.measure_is_alive()
        alive = rows[0]
        async with httpx.AsyncClient(
            base_url=self.server.base_url, headers=self.user_headers, timeout=30
        ) as client:
            acquire_rows, dispatched = await self.measure_acquire(client, alive)
            rows += acquire_rows
            rows.append(await self.measure_heartbeats(dispatched))
            rows.append(await self.measure_worker_updates())
            rows.append(await self.measure_event_ranges(alive))
            if self.options.archive_jobs:
                rows += await self.measure_archive(client, alive)
            rows.append(await self.measure_activation(client))
            rows += await self.measure_full_cycle(client)
            if self.options.large_task_jobs:
                rows.append(await self.measure_large_task(client))
            if self.options.statistics_jobs:
                # Last: its jobs stay in the active table, at queues no other row uses.
                rows += await self.measure_statistics()
        targets = aims(self.options.database, self.options.large_task_jobs)
        for row in rows:
            if row.ops_per_s is not None and alive.ops_per_s:
                row.ratio_to_is_alive = row.ops_per_s / alive.ops_per_s
            aim = targets.get(row.name)
            if aim is not None:
                row.aim, row.aim_met = aim.text, aim.met(row)
        return rows


async def _call(request: Any) -> dict[str, Any]:
    response = await request
    if response.status_code != 200:
        raise BenchError(
            f"{response.request.url.path} answered HTTP {response.status_code}: {response.text[:300]}"
        )
    return response.json()


@dataclass
class _CycleWatch:
    """What the database showed during a full-cycle load."""

    holding_peak: int = 0
    holding_empty_after: float | None = None
    # The backlog the finaliser still had when the pilots stopped, and when that was seen.
    holding_at_load_end: int | None = None
    load_end_seen_after: float | None = None
    generated: int = 0
    generated_after: float | None = None


async def _watch_cycle(
    counter: JobCounter, task_id: int, expected: int, start: float, load_done: asyncio.Event
) -> _CycleWatch:
    """Poll the backlog in holding and the generated task until both are done (or time is up).

    The backlog counts as worked off when holding is empty after the load ended: every job the
    pilots reported has been finalised by then.
    """
    watch = _CycleWatch()
    deadline = start + FULL_CYCLE_TIMEOUT_SECONDS
    while time.perf_counter() < deadline:
        await asyncio.sleep(FULL_CYCLE_POLL_SECONDS)
        ended = load_done.is_set()
        now = time.perf_counter() - start
        if watch.generated_after is None:
            watch.generated = await counter(task_id)
            if watch.generated >= expected:
                watch.generated_after = now
        if watch.holding_empty_after is None:
            holding = await counter.in_status("holding")
            watch.holding_peak = max(watch.holding_peak, holding)
            if ended and watch.holding_at_load_end is None:
                watch.holding_at_load_end, watch.load_end_seen_after = holding, now
            if ended and not holding:
                watch.holding_empty_after = now
        if watch.generated_after is not None and watch.holding_empty_after is not None:
            break
    return watch


class JobCounter:
    """Read-only counts in the server's database (committed rows), polled by the benchmark.

    Reading the database keeps the polling off the server being measured: listing jobs through the
    API several times a second would load it.
    """

    def __init__(self, fetch: Callable[[str, Sequence[Any]], Awaitable[int]], placeholder: str) -> None:
        self._fetch = fetch
        self._task_query = f'SELECT count(*) FROM jobs WHERE "jediTaskID" = {placeholder}'  # noqa: S608
        self._status_query = f'SELECT count(*) FROM jobs WHERE "jobStatus" = {placeholder}'  # noqa: S608

    async def __call__(self, task_id: int) -> int:
        """How many jobs the task has."""
        return await self._fetch(self._task_query, [task_id])

    async def in_status(self, status: str) -> int:
        """How many jobs have this status (the full cycle is the only row that ends jobs, so
        ``finished`` counts its jobs)."""
        return await self._fetch(self._status_query, [status])


@contextlib.asynccontextmanager
async def _job_counter(server: Server) -> AsyncIterator[JobCounter]:
    """A :class:`JobCounter` on the server's database."""
    if server.database_url:
        connection = await asyncpg.connect(server.database_url.replace("postgresql+asyncpg", "postgresql"))

        async def fetch_pg(query: str, parameters: Sequence[Any]) -> int:
            return await connection.fetchval(query, *parameters)

        try:
            # asyncpg's placeholder; SQLite's is "?".
            yield JobCounter(fetch_pg, "$1")
        finally:
            await connection.close()
        return
    # SQLite in WAL mode: a reader neither blocks the server's writes nor waits for them.
    database = sqlite3.connect(f"file:{server.home / 'bamboo.db'}?mode=ro", uri=True)

    async def fetch_sqlite(query: str, parameters: Sequence[Any]) -> int:
        return database.execute(query, tuple(parameters)).fetchone()[0]

    try:
        yield JobCounter(fetch_sqlite, "?")
    finally:
        database.close()


def _rate(row: Row) -> float | None:
    return row.jobs_per_s if row.jobs_per_s is not None else row.ops_per_s


def _server_ms_per_request(row: Row) -> float | None:
    if row.server_cores is None or not row.requests:
        return None
    return row.server_cores * row.elapsed / row.requests * 1000


# The archived jobs: finished (one in ten failed), a thousand per task, modified a day before the
# run, each with one log file, at the benchmark's queue (SITE); as many columns set as a real
# job's description reads. Constant statements: the id range and the time are parameters.
_PG_ARCHIVE_JOBS = """
INSERT INTO jobs_archive ("PandaID", "jobDefinitionID", "jediTaskID", "jobStatus", "prodSourceLabel",
    "computingSite", "jobName", "attemptNr", "currentPriority", "assignedPriority", "prodUserName",
    "transformation", "jobParameters", "creationTime", "modificationTime", "startTime", "endTime",
    "stateChangeTime", "origin_panda_id")
SELECT g, 1, g / 1000, CASE WHEN g % 10 = 0 THEN 'failed' ELSE 'finished' END, 'user', 'BENCH_PQ',
    'bench.archived.' || g, 1, 1000, 1000, 'benchuser', 'run', 'echo', $3, $3, $3, $3, $3, g
FROM generate_series($1::bigint, $2::bigint) AS g
"""
_PG_ARCHIVE_FILES = """
INSERT INTO job_files_archive ("row_ID", "PandaID", "jediTaskID", "lfn", "type", "status", "dataset",
    "scope", "fsize")
SELECT g, g, g / 1000, 'bench.archived.' || g || '.log.tgz', 'log', 'ready', 'bench.archived.log/',
    'bench', 1000
FROM generate_series($1::bigint, $2::bigint) AS g
"""
_SQLITE_ARCHIVE_JOBS = """
WITH RECURSIVE s(g) AS (SELECT ? UNION ALL SELECT g + 1 FROM s WHERE g < ?)
INSERT INTO jobs_archive ("PandaID", "jobDefinitionID", "jediTaskID", "jobStatus", "prodSourceLabel",
    "computingSite", "jobName", "attemptNr", "currentPriority", "assignedPriority", "prodUserName",
    "transformation", "jobParameters", "creationTime", "modificationTime", "startTime", "endTime",
    "stateChangeTime", "origin_panda_id")
SELECT g, 1, g / 1000, CASE WHEN g % 10 = 0 THEN 'failed' ELSE 'finished' END, 'user', 'BENCH_PQ',
    'bench.archived.' || g, 1, 1000, 1000, 'benchuser', 'run', 'echo', ?3, ?3, ?3, ?3, ?3, g
FROM s
"""
_SQLITE_ARCHIVE_FILES = """
WITH RECURSIVE s(g) AS (SELECT ? UNION ALL SELECT g + 1 FROM s WHERE g < ?)
INSERT INTO job_files_archive ("row_ID", "PandaID", "jediTaskID", "lfn", "type", "status", "dataset",
    "scope", "fsize")
SELECT g, g, g / 1000, 'bench.archived.' || g || '.log.tgz', 'log', 'ready', 'bench.archived.log/',
    'bench', 1000
FROM s
"""


# The jobset of the event row: its task, input dataset, files of 1,000 ranges, running consumers
# (PandaID = base + 1 ...) and ready ranges of one event with attempts left. Ids: task, dataset
# and jobset = EVENT_ID_BASE; files EVENT_ID_BASE + n. Written in PostgreSQL's parameter style;
# SQLite takes the same statements with ?n for $n and a recursive CTE for generate_series.
_EVENT_TASK = """INSERT INTO tasks ("jediTaskID", task_params, "userName", "eventService", status)
    VALUES ($1, '{{}}', 'benchuser', 1, 'running')"""
_EVENT_DATASET = """INSERT INTO task_datasets ("datasetID", "jediTaskID", "datasetName", type,
    "creationTime", "modificationTime", status, "nFiles", "nFilesToBeUsed", "nFilesUsed", "nFilesFinished",
    "nFilesFailed", "nFilesOnHold", "nFilesMissing", "nEvents", "nEventsToBeUsed", "nEventsUsed", serial_nr)
    VALUES ($1, $1, 'bench.events/', 'input', $2, $2, 'ready', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1)"""
_EVENT_FILES = """INSERT INTO task_files ("fileID", "jediTaskID", "datasetID", "creationDate", lfn, "GUID",
    type, status, scope, "PandaID", "attemptNr", "failedAttempt", "nEvents")
SELECT $1 + g, $1, $1, $3, 'bench.EVNT.' || g || '.root', 'guid-' || g, 'input', 'running', 'bench', $1,
    0, 0, 1000
FROM {series}"""
_EVENT_JOBS = """INSERT INTO jobs ("PandaID", "jediTaskID", "jobsetID", "jobStatus", "eventService",
    "prodSourceLabel", "computingSite", "attemptNr", "modificationTime")
SELECT $1 + g, $1, $1, 'running', 1, 'managed', 'BENCH_PQ', 1, $3 FROM {series}"""
_EVENT_RANGES = """INSERT INTO events ("jediTaskID", "datasetID", "PandaID", "jobsetID", "fileID",
    "job_processID", "attemptNr", status, "def_min_eventID", "def_max_eventID", is_jumbo, "modificationTime")
SELECT $1, $1, $1, $1, CAST($1 AS BIGINT) + 1 + g / CAST($3 AS BIGINT), g % CAST($3 AS BIGINT), 10, 'ready',
    g % CAST($3 AS BIGINT), g % CAST($3 AS BIGINT), {false}, $4 FROM {series}"""
_PG_SERIES = "generate_series({first}, $2::bigint) AS g"
_SQLITE_SERIES = "s"
_SQLITE_CTE = "WITH RECURSIVE s(g) AS (SELECT {first} UNION ALL SELECT g + 1 FROM s WHERE g < ?2) "


def _event_statements(postgresql: bool) -> list[str]:
    """The five statements in the dialect's parameter and series style."""
    statements = []
    for template, first in (
        (_EVENT_TASK, None),
        (_EVENT_DATASET, None),
        (_EVENT_FILES, 1),
        (_EVENT_JOBS, 1),
        (_EVENT_RANGES, 0),
    ):
        # The ranges go from 0 to size - 1: their series ends one before $2.
        last_fix = "$2::bigint - 1" if first == 0 else "$2::bigint"
        if postgresql:
            series = _PG_SERIES.format(first=first).replace("$2::bigint", last_fix)
            statement = template.format(series=series, false="false")
        else:
            statement = template.format(series=_SQLITE_SERIES, false="0")
            if first is not None:
                bound = "?2 - 1" if first == 0 else "?2"
                statement = _SQLITE_CTE.format(first=first).replace("?2", bound) + statement
            for number in range(4, 0, -1):
                statement = statement.replace(f"${number}", f"?{number}")
        statements.append(statement)
    return statements


async def _fill_jobset(server: Server, size: int) -> None:
    """Write the event row's jobset of ``size`` ranges (set-based statements)."""
    at = datetime.now(UTC)
    files = math.ceil(size / EVENT_RANGES_PER_FILE)
    base = EVENT_ID_BASE
    if server.database_url:
        task, dataset, file_rows, job_rows, ranges = _event_statements(postgresql=True)
        connection = await asyncpg.connect(server.database_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            await connection.execute(task, base)
            await connection.execute(dataset, base, at)
            await connection.execute(file_rows, base, files, at)
            await connection.execute(job_rows, base, EVENT_CONSUMERS, at)
            await connection.execute(ranges, base, size, EVENT_RANGES_PER_FILE, at)
            await connection.execute("ANALYZE events, jobs, task_files")
        finally:
            await connection.close()
        return
    task, dataset, file_rows, job_rows, ranges = _event_statements(postgresql=False)
    stamp = at.strftime("%Y-%m-%d %H:%M:%S.%f")
    database = sqlite3.connect(server.home / "bamboo.db", timeout=60)
    try:
        with database:
            database.execute(task, (base,))
            database.execute(dataset, (base, stamp))
            database.execute(file_rows, (base, files, stamp))
            database.execute(job_rows, (base, EVENT_CONSUMERS, stamp))
            database.execute(ranges, (base, size, EVENT_RANGES_PER_FILE, stamp))
        database.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        database.close()


# Loads whose jobs/s column means something: jobs (acquire) or event ranges (events) handed out.
_MOVERS = ("acquire", "events")


def _archive_chunks(size: int) -> list[tuple[int, int]]:
    """The id ranges (first, last) the archive is filled in."""
    end = ARCHIVE_ID_BASE + size
    return [(low, min(low + ARCHIVE_CHUNK, end) - 1) for low in range(ARCHIVE_ID_BASE, end, ARCHIVE_CHUNK)]


async def _fill_archive(server: Server, size: int) -> None:
    """Insert ``size`` archived jobs and their files: set-based statements, in chunks."""
    at = datetime.now(UTC) - timedelta(days=1)
    if server.database_url:
        connection = await asyncpg.connect(server.database_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            for low, high in _archive_chunks(size):
                await connection.execute(_PG_ARCHIVE_JOBS, low, high, at)
                await connection.execute(_PG_ARCHIVE_FILES, low, high)
            # Fresh statistics, as autovacuum would give a table this size in production.
            await connection.execute("ANALYZE jobs_archive, job_files_archive")
        finally:
            await connection.close()
        return
    # SQLite: timestamps in the text form the server's driver writes.
    stamp = at.strftime("%Y-%m-%d %H:%M:%S.%f")
    database = sqlite3.connect(server.home / "bamboo.db", timeout=60)
    try:
        for low, high in _archive_chunks(size):
            with database:
                database.execute(_SQLITE_ARCHIVE_JOBS, (low, high, stamp))
                database.execute(_SQLITE_ARCHIVE_FILES, (low, high))
        # No ANALYZE: the server never runs one on SQLite. The fill's write-ahead log is set-up
        # work: checkpoint it now, not during the measured loads.
        database.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        database.close()


async def _empty_archive(server: Server) -> None:
    """Delete the archived jobs the benchmark wrote (and, on PostgreSQL, vacuum their dead rows)."""
    if server.database_url:
        connection = await asyncpg.connect(server.database_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            await connection.execute('DELETE FROM job_files_archive WHERE "row_ID" >= $1', ARCHIVE_ID_BASE)
            await connection.execute('DELETE FROM jobs_archive WHERE "PandaID" >= $1', ARCHIVE_ID_BASE)
            # Now, not by autovacuum during the next measurement.
            await connection.execute("VACUUM job_files_archive, jobs_archive")
        finally:
            await connection.close()
        return
    database = sqlite3.connect(server.home / "bamboo.db", timeout=60)
    try:
        with database:
            database.execute('DELETE FROM job_files_archive WHERE "row_ID" >= ?', (ARCHIVE_ID_BASE,))
            database.execute('DELETE FROM jobs_archive WHERE "PandaID" >= ?', (ARCHIVE_ID_BASE,))
    finally:
        database.close()


async def job_ids(client: httpx.AsyncClient, task_id: int) -> list[int]:
    body = await _call(client.get("/api/v1/task/get_job_ids", params={"task_id": task_id}))
    return body.get("data") or []


def _number(value: float | None, digits: int = 0) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def render_table(rows: list[Row], title: str) -> Table:
    table = Table(title=title, title_justify="left", caption=TRANSPORT, caption_justify="left")
    table.add_column("measurement")
    for heading in ("ops/s", "jobs/s", "× is_alive", "p50 ms", "p95 ms"):
        table.add_column(heading, justify="right")
    table.add_column("CPU cores client/server/machine", justify="right")
    table.add_column("aim")
    table.add_column("notes")
    for row in rows:
        cpu = "/".join(
            _number(value, 2) or "-" for value in (row.client_cores, row.server_cores, row.machine_cores)
        )
        mark = {True: "[green]met[/green] ", False: "[red]missed[/red] ", None: ""}[row.aim_met]
        table.add_row(
            row.name,
            _number(row.ops_per_s),
            _number(row.jobs_per_s),
            _number(row.ratio_to_is_alive, 2),
            _number(row.latency_p50_ms, 1),
            _number(row.latency_p95_ms, 1),
            cpu if row.server_cores is not None else "",
            f"{mark}{row.aim}" if row.aim else "",
            "; ".join(row.notes),
        )
    return table


def parse_options(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--workers", type=int, default=1, help="bamboo serve --workers (default 1)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement (default 5)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument(
        "--clients", type=int, default=2, help="load generator processes sharing the concurrency (default 2)"
    )
    parser.add_argument(
        "--submissions", type=int, default=20, help="tasks timed from submission to activation (default 20)"
    )
    parser.add_argument(
        "--large-task",
        type=int,
        default=None,
        metavar="JOBS",
        help=f"jobs of the large task (default {LARGE_TASK_JOBS:,}, quick {QUICK_LARGE_TASK_JOBS:,}, 0 none)",
    )
    parser.add_argument(
        "--archive",
        type=int,
        default=None,
        metavar="JOBS",
        help=f"archived jobs beside the active ones (default {ARCHIVE_JOBS:,}, quick {QUICK_ARCHIVE_JOBS:,}, "
        "0 none)",
    )
    parser.add_argument(
        "--statistics",
        type=int,
        default=0,
        metavar="JOBS",
        help=f"archived jobs beside {STATISTICS_ACTIVE_JOBS:,} active ones for the statistics rows "
        "(default 0: rows left out; the aim is stated for 1,000,000)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 s loads, small job pools")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.concurrency < 1 or args.clients < 1 or args.submissions < 1:
        parser.error("--workers, --concurrency, --clients and --submissions must be at least 1")
    if args.large_task is not None and args.large_task < 0:
        parser.error("--large-task must not be negative")
    if args.archive is not None and not 0 <= args.archive <= 100_000_000:
        parser.error("--archive must be between 0 and 100,000,000")
    if not 0 <= args.statistics <= 100_000_000:
        parser.error("--statistics must be between 0 and 100,000,000")
    if not 0 < args.duration <= 600:
        parser.error("--duration must be more than 0 and at most 600 seconds")
    quick = args.quick
    large_task = args.large_task
    if large_task is None:
        large_task = QUICK_LARGE_TASK_JOBS if quick else LARGE_TASK_JOBS
    archive_jobs = args.archive
    if archive_jobs is None:
        archive_jobs = QUICK_ARCHIVE_JOBS if quick else ARCHIVE_JOBS
    return Options(
        database=args.database,
        workers=args.workers,
        duration=1.0 if quick else args.duration,
        concurrency=args.concurrency,
        clients=min(args.clients, args.concurrency),
        submissions=min(args.submissions, 5) if quick else args.submissions,
        quick=quick,
        large_task_jobs=large_task,
        archive_jobs=archive_jobs,
        statistics_jobs=args.statistics,
    )


def benchmark(options: Options, console: Console) -> tuple[list[Row], dict[str, Any]]:
    """Start a server on a fresh database, measure it, stop it and drop the database."""
    environment: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bamboo-bench-") as scratch:
        home = Path(scratch) / "home"
        database_url = None
        if options.database == "postgresql":
            database_url, environment["postgresql_version"] = asyncio.run(create_postgres_database())
        try:
            if database_url:
                run_admin("db", "upgrade", "--home", str(home), "--database-url", database_url)
            server = start_server(home, database_url, options.workers)
            try:
                bench = Bench(server, options, _executor(options), console)
                try:
                    bench.issue_tokens()
                    server.admin("queue", "add", SITE, "--type", "unified")
                    rows = asyncio.run(bench.run())
                finally:
                    bench.executor.shutdown(cancel_futures=True)
            except BenchError:
                console.print("[red]server log (last lines):[/red]\n" + server.log_tail())
                raise
            finally:
                environment["server_exit_code"] = server.stop()
        finally:
            if database_url:
                asyncio.run(drop_postgres_database(database_url))
    return rows, environment


def _executor(options: Options) -> ProcessPoolExecutor:
    # spawn, not fork: the children must not inherit this process's event loop or threads.
    return ProcessPoolExecutor(max_workers=options.clients, mp_context=multiprocessing.get_context("spawn"))


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(argv)
    # Redirected output (a file, the README) gets the whole table instead of an 80-column squeeze.
    console = Console(width=None if sys.stdout.isatty() else TABLE_WIDTH)
    started = datetime.now(UTC)
    plural = "s" if options.workers > 1 else ""
    title = (
        f"Bamboo on {options.database}, {options.workers} worker{plural}: {options.concurrency} connections "
        f"from {options.clients} client process{'es' if options.clients > 1 else ''}, "
        f"{options.duration:g} s per load, {machine.cpu_count()} CPUs"
    )
    console.print(f"{title}\n{TRANSPORT}")
    try:
        rows, environment = benchmark(options, console)
    except BenchError as exc:
        console.print(f"[red]benchmark failed:[/red] {exc}")
        sys.exit(1)
    console.print(render_table(rows, title))
    report = {
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "git_commit": machine.git_commit(),
        "options": asdict(options),
        "transport": TRANSPORT,
        "machine": machine.machine_info(),
        **environment,
        "rows": [asdict(row) for row in rows],
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    console.print(f"results written to {path}")


# The statistics rows' jobs (i = 0, 1, ... in PandaID order, as the archiver writes them: the
# newest last): 200 queues in 10 clouds, four resource types, five processing types, labels
# managed 12/20, user 6/20, panda and ptest 1/20 each, the share matching the label, and final
# statuses finished 7/10, failed, cancelled and closed 1/10 each. $4 is the number of jobs older
# than the window; ages are in seconds before $3.
_STATISTICS_COLUMNS = """("PandaID", "jediTaskID", "jobStatus", "prodSourceLabel", "computingSite", "cloud",
    "resource_type", "processingType", "gshare", "modificationTime")"""
_STATISTICS_VALUES = """
    $1 + i, ($1 + i) / 1000, {status},
    CASE WHEN i % 20 < 12 THEN 'managed' WHEN i % 20 < 18 THEN 'user' WHEN i % 20 = 18 THEN 'panda'
        ELSE 'ptest' END,
    'BENCH_STATS_' || (i % 200), 'CLOUD' || (i % 200 / 20),
    CASE i / 7 % 4 WHEN 0 THEN 'SCORE' WHEN 1 THEN 'MCORE' WHEN 2 THEN 'SCORE_HIMEM' ELSE 'MCORE_HIMEM' END,
    CASE i / 3 % 5 WHEN 0 THEN 'simul' WHEN 1 THEN 'evgen' WHEN 2 THEN 'reprocessing' WHEN 3 THEN 'pile'
        ELSE 'merge' END,
    CASE WHEN i % 20 < 12 THEN 'Bench Production' WHEN i % 20 < 19 THEN 'Bench Analysis'
        ELSE 'Bench Other' END,
    {time}"""
_ARCHIVED_STATUS = """CASE i % 10 WHEN 0 THEN 'failed' WHEN 1 THEN 'cancelled' WHEN 2 THEN 'closed'
    ELSE 'finished' END"""
_ACTIVE_STATUS = """CASE i % 20 WHEN 0 THEN 'finished' WHEN 1 THEN 'failed' WHEN 2 THEN 'merging'
    WHEN 3 THEN 'assigned' WHEN 4 THEN 'defined' WHEN 5 THEN 'starting' WHEN 6 THEN 'transferring'
    WHEN 7 THEN 'sent' ELSE CASE WHEN i % 2 = 0 THEN 'running' ELSE 'activated' END END"""
# Archived: the first $4 over 89 days before the last day, the rest over the last 11.5 hours.
_ARCHIVED_AGE = """CASE WHEN i < $4 THEN 86400 + (($4 - i) * 7689600 / $4)
    ELSE 60 + (($2 - i) * 41400 / ($2 - $4 + 1)) END"""
# Active jobs: changed in the last ten minutes (no watchdog touches them during the reads).
_ACTIVE_AGE = "i % 600"
_PG_STATISTICS = """INSERT INTO {table} {columns}
SELECT {values} FROM generate_series(0, $2::bigint - 1) AS i"""
_SQLITE_STATISTICS = """WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < ?2 - 1)
INSERT INTO {table} {columns}
SELECT {values} FROM s"""


def _statistics_statement(postgresql: bool, archived: bool) -> str:
    age = _ARCHIVED_AGE if archived else _ACTIVE_AGE
    if postgresql:
        time_of = f"$3::timestamptz - make_interval(secs => {age})"
        template = _PG_STATISTICS
    else:
        # The text form the server's driver writes and compares.
        time_of = f"strftime('%Y-%m-%d %H:%M:%f', $3, '-' || ({age}) || ' seconds')"
        template = _SQLITE_STATISTICS
    values = _STATISTICS_VALUES.format(status=_ARCHIVED_STATUS if archived else _ACTIVE_STATUS, time=time_of)
    statement = template.format(
        table="jobs_archive" if archived else "jobs", columns=_STATISTICS_COLUMNS, values=values
    )
    if not postgresql:
        for number in range(4, 0, -1):
            statement = statement.replace(f"${number}", f"?{number}")
    return statement


async def _database_cpu(server: Server) -> dict[int, float]:
    """CPU seconds used so far by each PostgreSQL backend serving the benchmark's database (the
    server is on this machine); empty on SQLite, whose work is in the server's own process."""
    if not server.database_url:
        return {}
    connection = await asyncpg.connect(server.database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await connection.close()
    return machine.processes_cpu_seconds([row["pid"] for row in rows])


async def _recount_statistics(server: Server) -> float:
    """Have the server's statistics agent recount its totals, and wait for it; returns the seconds.

    The jobs were written behind the server's back, with modification times its agent's refreshes
    have passed already: they count from the agent's next recount (docs/architecture.md, "Job
    statistics"), which forgetting its windows brings about at its next refresh.
    """
    start = time.perf_counter()
    if server.database_url:
        connection = await asyncpg.connect(server.database_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            await connection.execute("DELETE FROM job_stats_windows")
            while not await connection.fetchval("SELECT count(*) FROM job_stats_windows"):
                if time.perf_counter() - start > STATISTICS_RECOUNT_SECONDS:
                    raise BenchError(
                        f"the statistics agent did not recount within {STATISTICS_RECOUNT_SECONDS} s"
                    )
                await asyncio.sleep(0.5)
        finally:
            await connection.close()
        return time.perf_counter() - start
    database = sqlite3.connect(server.home / "bamboo.db", timeout=60)
    try:
        with database:
            database.execute("DELETE FROM job_stats_windows")
        while not database.execute("SELECT count(*) FROM job_stats_windows").fetchone()[0]:
            if time.perf_counter() - start > STATISTICS_RECOUNT_SECONDS:
                raise BenchError(
                    f"the statistics agent did not recount within {STATISTICS_RECOUNT_SECONDS} s"
                )
            await asyncio.sleep(0.5)
    finally:
        database.close()
    return time.perf_counter() - start


async def _fill_statistics(server: Server, size: int) -> None:
    """Write the statistics rows' archived and active jobs (set-based statements)."""
    at = datetime.now(UTC)
    older = size - size // STATISTICS_WINDOW_SHARE
    if server.database_url:
        connection = await asyncpg.connect(server.database_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            await connection.execute(
                _statistics_statement(True, archived=True), STATISTICS_ID_BASE, size, at, older
            )
            await connection.execute(
                _statistics_statement(True, archived=False),
                STATISTICS_ACTIVE_ID_BASE,
                STATISTICS_ACTIVE_JOBS,
                at,
            )
            # As autovacuum would leave an insert-only table: statistics and the visibility map.
            await connection.execute("VACUUM ANALYZE jobs_archive, jobs")
        finally:
            await connection.close()
        return
    stamp = at.strftime("%Y-%m-%d %H:%M:%S.%f")
    database = sqlite3.connect(server.home / "bamboo.db", timeout=60)
    try:
        with database:
            database.execute(
                _statistics_statement(False, archived=True), (STATISTICS_ID_BASE, size, stamp, older)
            )
            database.execute(
                _statistics_statement(False, archived=False),
                (STATISTICS_ACTIVE_ID_BASE, STATISTICS_ACTIVE_JOBS, stamp),
            )
        database.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        database.close()
