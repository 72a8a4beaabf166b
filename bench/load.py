"""The load generator: client processes, each an asyncio loop of keep-alive connections in a closed loop.

Every connection sends its next request as soon as the previous answer arrived, so the measured rate
is what the server sustains at that many requests in flight. Each connection is its own
``httpx.AsyncClient`` limited to one keep-alive connection: one shared client with a pool sized to
the concurrency costs more client CPU per request the more connections it holds (httpcore's pool
looks at every connection for every request), which would make the client the bottleneck.

A load stops by itself at its deadline, after its request budget, when the server says there is no
work left ("drained"), or after too many errors. Each client process reports its own CPU time, so a
saturated client shows in the results.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import ssl
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import orjson
import uvloop

Operation = Literal["is_alive", "acquire", "heartbeat", "cycle", "update_workers", "events", "statistics"]
NO_JOBS = "No jobs in PanDA"
# harvester/update_workers loads send this many workers per call.
WORKERS_PER_CALL = 100
REQUEST_TIMEOUT_SECONDS = 30.0
MAX_ERRORS = 100


@dataclass(frozen=True)
class LoadSpec:
    """What one client process does (it must pickle: it crosses into a worker process)."""

    base_url: str
    headers: dict[str, str]
    operation: Operation
    connections: int
    duration: float
    max_requests: int
    start_at: float
    """Wall-clock time (time.time()) at which every client process begins, so their loads overlap."""
    site: str = ""
    n_jobs: int = 1
    job_ids: tuple[int, ...] = ()
    """Heartbeat targets of this client process (event loads: its consumer jobs)."""
    client_index: int = 0
    """Which client process this is (each reports as a Harvester instance of its own)."""
    jobset_id: int = 0
    """The jobset the consumers of an event load belong to."""
    path: str = ""
    """What a statistics load GETs: the endpoint's path and query string."""


@dataclass
class LoadResult:
    """What a load achieved; ``requests`` counts only answered, successful ones."""

    requests: int = 0
    jobs: int = 0
    errors: int = 0
    elapsed: float = 0.0
    drained: bool = False
    client_cpu: float = 0.0
    latencies: list[float] = field(default_factory=list)
    acquired: list[int] = field(default_factory=list)
    first_error: str | None = None

    @staticmethod
    def merge(parts: list[LoadResult]) -> LoadResult:
        """One result for client processes that ran side by side."""
        merged = LoadResult()
        for part in parts:
            merged.requests += part.requests
            merged.jobs += part.jobs
            merged.errors += part.errors
            merged.elapsed = max(merged.elapsed, part.elapsed)
            merged.drained |= part.drained
            merged.client_cpu += part.client_cpu
            merged.latencies.extend(part.latencies)
            merged.acquired.extend(part.acquired)
            merged.first_error = merged.first_error or part.first_error
        return merged


class _Drained(Exception):
    """The server has no more jobs for this load."""


class _BadAnswer(Exception):
    """The server answered, but not with what the operation expects."""


def _envelope(response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 200:
        raise _BadAnswer(f"HTTP {response.status_code}: {response.text[:200]}")
    return response.json()


def _operation(spec: LoadSpec, result: LoadResult) -> Callable[[httpx.AsyncClient], Awaitable[int]]:
    """The request of this load, as a coroutine function returning how many jobs it moved."""
    if spec.operation == "is_alive":

        async def is_alive(client: httpx.AsyncClient) -> int:
            body = _envelope(await client.get("/api/v1/system/is_alive"))
            if body.get("success") is not True:
                raise _BadAnswer(str(body)[:200])
            return 0

        return is_alive

    if spec.operation == "acquire":

        async def acquire(client: httpx.AsyncClient) -> int:
            return len(await _take(client, spec, result))

        return acquire

    if spec.operation == "cycle":
        return _job_cycle(spec, result)

    if spec.operation == "update_workers":
        return _worker_updates(spec)
    if spec.operation == "events":
        return _event_ranges(spec)
    if spec.operation == "statistics":
        return _statistics(spec)

    # Connections take the jobs in turn, so two heartbeats for one job are in flight together only
    # when there are fewer jobs than connections.
    targets = itertools.cycle(spec.job_ids)

    async def heartbeat(client: httpx.AsyncClient) -> int:
        update = {"job_id": next(targets), "job_status": "running"}
        body = _envelope(await client.post("/api/v1/pilot/update_job", json=update))
        if body.get("success") is not True or body["data"].get("StatusCode") != 0:
            raise _BadAnswer(str(body)[:200])
        return 0

    return heartbeat


async def _take(client: httpx.AsyncClient, spec: LoadSpec, result: LoadResult) -> list[dict[str, Any]]:
    """One ``acquire_jobs`` call for ``spec.n_jobs`` jobs, recording the PandaIDs handed out."""
    request = {"site_name": spec.site, "prod_source_label": "user", "n_jobs": spec.n_jobs, "node": "bench"}
    body = _envelope(await client.post("/api/v1/pilot/acquire_jobs", json=request))
    if body.get("success") is not True:
        if body.get("message") == NO_JOBS:
            raise _Drained
        raise _BadAnswer(str(body)[:200])
    jobs: list[dict[str, Any]] = body["data"]["jobs"]
    result.acquired.extend(job["PandaID"] for job in jobs)
    return jobs


def _event_ranges(spec: LoadSpec) -> Callable[[httpx.AsyncClient], Awaitable[int]]:
    """``event/acquire_event_ranges`` for ``spec.n_jobs`` ranges, the consumers taking turns;
    returns how many ranges were handed out. An empty answer means the jobset ran dry."""
    consumers = itertools.cycle(spec.job_ids)

    async def take(client: httpx.AsyncClient) -> int:
        request = {"job_id": next(consumers), "jobset_id": spec.jobset_id, "n_ranges": spec.n_jobs}
        body = _envelope(await client.post("/api/v1/event/acquire_event_ranges", json=request))
        if body.get("success") is not True or body["data"].get("StatusCode") != 0:
            raise _BadAnswer(str(body)[:200])
        ranges = body["data"]["eventRanges"]
        if not ranges:
            raise _Drained
        return len(ranges)

    return take


def _statistics(spec: LoadSpec) -> Callable[[httpx.AsyncClient], Awaitable[int]]:
    """One public ``statistics/*`` GET; an answer without counts means the jobs were not seen."""

    async def read(client: httpx.AsyncClient) -> int:
        body = _envelope(await client.get(spec.path))
        if body.get("success") is not True or not body.get("data"):
            raise _BadAnswer(str(body)[:200])
        return 0

    return read


def _job_cycle(spec: LoadSpec, result: LoadResult) -> Callable[[httpx.AsyncClient], Awaitable[int]]:
    """A pilot's whole round, Harvester-style: take ``n_jobs`` jobs, report them running, then
    finished with an output report naming every output (one ``update_jobs_bulk`` per report).

    Returns how many jobs were reported finished; ``requests`` then counts rounds, not requests.
    """

    async def bulk(client: httpx.AsyncClient, reports: list[dict[str, Any]]) -> None:
        body = _envelope(await client.post("/api/v1/pilot/update_jobs_bulk", json={"job_list": reports}))
        answers = body.get("data") if body.get("success") is True else None
        if not isinstance(answers, list) or len(answers) != len(reports):
            raise _BadAnswer(str(body)[:200])
        for answer in answers:
            if answer.get("success") is not True or answer["data"].get("StatusCode") != 0:
                raise _BadAnswer(str(answer)[:200])

    async def cycle(client: httpx.AsyncClient) -> int:
        jobs = await _take(client, spec, result)
        if not jobs:
            return 0
        await bulk(
            client,
            [
                {"job_id": job["PandaID"], "job_status": "running", "attempt_nr": job["attemptNr"]}
                for job in jobs
            ],
        )
        await bulk(
            client,
            [
                {
                    "job_id": job["PandaID"],
                    "job_status": "finished",
                    "attempt_nr": job["attemptNr"],
                    "job_output_report": output_report(job),
                }
                for job in jobs
            ],
        )
        return len(jobs)

    return cycle


def _worker_updates(spec: LoadSpec) -> Callable[[httpx.AsyncClient], Awaitable[int]]:
    """Harvester's propagator: ``WORKERS_PER_CALL`` running workers per call, each with one job.

    Every connection reports its own block of workers again and again (after the first call, every
    row is an update and every worker-job relation is refreshed), so two calls in flight never
    write the same rows. Returns the workers reported.
    """
    harvester_id = f"bench-harvester-{spec.client_index}"
    blocks: dict[int, int] = {}

    async def update_workers(client: httpx.AsyncClient) -> int:
        block = blocks.setdefault(id(client), len(blocks))
        first = block * WORKERS_PER_CALL + 1
        workers = [
            {
                "workerID": worker_id,
                "batchID": f"{worker_id}.0",
                "queueName": spec.site,
                "computingSite": spec.site,
                "status": "running",
                "nCore": 8,
                "nodeID": f"wn{worker_id % 50:03d}.example.org",
                "submitTime": "datetime/2026-01-01 00:00:00.000000",
                "startTime": "datetime/2026-01-01 00:05:00.000000",
                "endTime": None,
                "resourceType": "MCORE",
                "jobType": "managed",
                "nJobs": 1,
                "computingElement": "ce01.example.org",
                "submissionHost": "bench-submit",
                "harvesterHost": "bench-harvester",
                "errorCode": 0,
                "diagMessage": "",
                "syncLevel": 0,
                "minRamCount": 16000,
                "pandaid_list": [10**12 + worker_id],
            }
            for worker_id in range(first, first + WORKERS_PER_CALL)
        ]
        body = _envelope(
            await client.post(
                "/api/v1/harvester/update_workers", json={"harvester_id": harvester_id, "workers": workers}
            )
        )
        if body.get("success") is not True or body.get("data") != [True] * WORKERS_PER_CALL:
            raise _BadAnswer(str(body)[:200])
        return WORKERS_PER_CALL

    return update_workers


def output_report(job: dict[str, Any]) -> str:
    """The ``job_output_report`` of a job that wrote all its outputs (log included)."""
    names = [name for name in job.get("outFiles", "").split(",") if name and name != "NULL"]
    return orjson.dumps(
        {
            name: {"guid": str(uuid.uuid4()), "fsize": 1024 + index, "adler32": f"{index:08x}"}
            for index, name in enumerate(names)
        }
    ).decode()


async def _drive(spec: LoadSpec) -> LoadResult:
    result = LoadResult()
    operation = _operation(spec, result)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    # Only plain HTTP is spoken, but every client builds a TLS context unless given one: sharing one
    # saves about 30 ms of CPU per connection at start.
    tls = ssl.create_default_context()
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=spec.base_url,
                    headers=spec.headers,
                    limits=limits,
                    timeout=REQUEST_TIMEOUT_SECONDS,
                    verify=tls,
                )
            )
            for _ in range(spec.connections)
        ]
        await asyncio.sleep(max(0.0, spec.start_at - time.time()))
        cpu_start = time.process_time()
        start = time.perf_counter()
        deadline = start + spec.duration
        started = 0
        stop = False

        async def connection(client: httpx.AsyncClient) -> None:
            nonlocal started, stop
            while not stop and started < spec.max_requests and time.perf_counter() < deadline:
                started += 1
                sent = time.perf_counter()
                try:
                    # Awaited first, added after: `result.jobs += await ...` would read the total
                    # before the await and lose the other connections' additions meanwhile.
                    moved = await operation(client)
                except _Drained:
                    result.drained = stop = True
                except (httpx.HTTPError, _BadAnswer, ValueError, KeyError, TypeError) as exc:
                    result.errors += 1
                    result.first_error = result.first_error or f"{type(exc).__name__}: {exc}"
                    stop = stop or result.errors >= MAX_ERRORS
                else:
                    result.jobs += moved
                    result.requests += 1
                    result.latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(connection(client) for client in clients))
        result.elapsed = time.perf_counter() - start
        result.client_cpu = time.process_time() - cpu_start
    return result


def run_load(spec: LoadSpec) -> LoadResult:
    """Entry point of a client process (uvloop keeps the client's own cost per request low)."""
    # httpcore tries `import sniffio` for every request; where sniffio is not installed (anyio no
    # longer needs it) each failed import searches sys.path again, a quarter of the client's CPU
    # per request. Recording the absence once makes the import fail at once, with the same outcome.
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]
    return uvloop.run(_drive(spec))
