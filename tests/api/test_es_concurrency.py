"""An event-service task of 10,000 ranges consumed by 50 concurrent consumers, on both databases.

Each consumer is a pilot-like client: it takes a job, takes ranges ten at a time, reports them in a
random update version (0, 1 with zip files, 2), fails some, and ends its job when no range is left.
Some consumers die half-way: their ranges stay handed out until the resource side reports the job
failed. The agents run meanwhile. The test checks what the event service promises: no range is in
two consumers' hands at once, a range is accepted finished once, failed ranges go to another
consumer until their attempts are spent, merge jobs are made, and the task ends with counters
equal to a recount.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import orjson
import sqlalchemy as sa

from bamboo.db.schema import events, jobs, task_datasets, task_files
from bamboo.logic.catalog import CatalogFile
from tests.api.conftest import ApiServer
from tests.api.test_task_flow import envelope, output_report, submit, task_status, world
from tests.tasks import input_task

__all__ = ["world"]

DATASET = "user.testuser.es.load.v1"
N_FILES = 20
EVENTS_PER_FILE = 500
N_CONSUMERS = 50
FAILURE_RATE = 0.05
DYING_CONSUMERS = 5
SEED = 20261207
DEADLINE_SECONDS = 600
ROBOT = ("Harvester Robot", "production")


# A range of a jobset: (jobsetID, fileID, job_processID). A file retried after its jobset failed
# gets a new jobset with ranges of its own.
RangeKey = tuple[int, int, int]


class Ledger:
    """What the consumers saw: who holds which range now, and how often each was accepted finished."""

    def __init__(self) -> None:
        self.holder: dict[RangeKey, int] = {}
        self.finished: Counter[RangeKey] = Counter()
        self.merge_jobs: set[int] = set()
        self.consumer_jobs: set[int] = set()

    def take(self, job: dict[str, Any], ranges: list[dict[str, Any]]) -> None:
        panda_id = job["PandaID"]
        for item in ranges:
            key = _range_key(job, item["eventRangeID"])
            assert key not in self.holder, (
                f"range {key} handed to {panda_id} while {self.holder[key]} holds it"
            )
            self.holder[key] = panda_id

    def release(self, panda_id: int, keys: list[RangeKey]) -> None:
        for key in keys:
            if self.holder.get(key) == panda_id:
                del self.holder[key]


def _range_key(job: dict[str, Any], range_id: str) -> RangeKey:
    _, _, file_id, process_id, _ = range_id.split("-")
    return job["jobsetID"], int(file_id), int(process_id)


async def _post(api: ApiServer, client: Any, path: str, **params: Any) -> dict[str, Any]:
    return envelope(await client.post(f"/api/v1/{path}", json=params))


async def _report(api: ApiServer, client: Any, job: dict[str, Any], status: str, **extra: Any) -> None:
    update = {"job_id": job["PandaID"], "job_status": status, "attempt_nr": job["attemptNr"], **extra}
    body = await _post(api, client, "pilot/update_jobs_bulk", job_list=[update], harvester_id="es-load")
    assert body["success"] is True, body


def _updates(ranges: list[dict[str, Any]], rng: random.Random) -> tuple[int, Any, list[dict[str, Any]]]:
    """The reports of one batch of ranges in a random update version: the version, the
    ``event_ranges`` parameter, and the reports it carries."""
    reports = []
    for item in ranges:
        status = "failed" if rng.random() < FAILURE_RATE else "finished"
        report: dict[str, Any] = {"eventRangeID": item["eventRangeID"], "eventStatus": status}
        if status == "failed":
            report |= {"errorCode": 1220, "errorDiag": "payload crashed on this range"}
        else:
            report |= {"coreCount": 1, "cpuConsumptionTime": 3.5}
        reports.append(report)
    version = rng.choice((0, 1, 2))
    if version == 0:
        return 0, orjson.dumps(reports).decode(), reports
    chunk: dict[str, Any] = {"eventRanges": reports}
    if version == 1:
        first = ranges[0]["eventRangeID"]
        chunk["zipFile"] = {
            "lfn": f"EventService_premerge_{first}.zip",
            "objstoreID": 1,
            "fsize": 4096,
            "adler32": "0badcafe",
            "numEvents": len(reports),
            "pathConvention": 1000,
        }
    # Harvester sends JSON text, panda-client a list.
    return version, [chunk] if rng.random() < 0.5 else orjson.dumps([chunk]).decode(), reports


async def _consume(
    api: ApiServer, job: dict[str, Any], rng: random.Random, ledger: Ledger, dies: bool
) -> None:
    ledger.consumer_jobs.add(job["PandaID"])
    async with api.client(headers=api.token_headers(*ROBOT[:1], role=ROBOT[1])) as client:
        await _report(api, client, job, "running")
        held: list[RangeKey] = []
        batches = 0
        while True:
            body = await _post(
                api,
                client,
                "event/acquire_event_ranges",
                job_id=job["PandaID"],
                jobset_id=job["jobsetID"],
                task_id=job["taskID"],
                n_ranges=10,
            )
            if not body["success"]:
                # Closed by a sibling that found the jobset empty, or killed: the pilot stops.
                ledger.release(job["PandaID"], held)
                return
            ranges = body["data"]["eventRanges"]
            assert body["data"]["StatusCode"] == 0
            if not ranges:
                break
            ledger.take(job, ranges)
            held.extend(_range_key(job, item["eventRangeID"]) for item in ranges)
            batches += 1
            if dies and batches == 3:
                # The pilot dies with ranges in hand; the resource side reports the job failed.
                ledger.release(job["PandaID"], held)
                await _report(
                    api, client, job, "failed", pilot_error_code=1008, pilot_error_diag="worker died"
                )
                return
            version, payload, sent = _updates(ranges, rng)
            body = await _post(
                api, client, "event/update_event_ranges", event_ranges=payload, version=version
            )
            assert body["success"] is True, body
            returns = body["data"]["Returns"]
            assert len(returns) == len(ranges), body
            for report, accepted in zip(sent, returns, strict=True):
                assert accepted is True, (report, body)
                key = _range_key(job, report["eventRangeID"])
                if report["eventStatus"] == "finished":
                    ledger.finished[key] += 1
                ledger.release(job["PandaID"], [key])
                held.remove(key)
            if job["PandaID"] in body["data"]["Commands"]:
                break
        ledger.release(job["PandaID"], held)
        await _report(api, client, job, "finished", job_output_report=output_report(job))


async def _merge(api: ApiServer, job: dict[str, Any], ledger: Ledger) -> None:
    ledger.merge_jobs.add(job["PandaID"])
    async with api.client(headers=api.token_headers(*ROBOT[:1], role=ROBOT[1])) as client:
        await _report(api, client, job, "running")
        await _report(api, client, job, "finished", job_output_report=output_report(job))


async def _pilot(api: ApiServer, index: int, ledger: Ledger, done: asyncio.Event) -> None:
    rng = random.Random(SEED + index)
    async with api.client(headers=api.token_headers(*ROBOT[:1], role=ROBOT[1])) as client:
        while not done.is_set():
            body = await _post(
                api,
                client,
                "pilot/acquire_jobs",
                site_name="TEST_PQ",
                node=f"wn{index:02d}",
                prod_source_label="user",
                n_jobs=1,
            )
            if not body["success"]:
                await asyncio.sleep(0.05)
                continue
            (job,) = body["data"]["jobs"]
            if job.get("eventServiceMerge") == "True":
                await _merge(api, job, ledger)
            else:
                assert job.get("eventService") == "True", job
                await _consume(api, job, rng, ledger, dies=index < DYING_CONSUMERS and job["attemptNr"] == 1)


async def _agents(runner: Any, done: asyncio.Event) -> None:
    while not done.is_set():
        await runner.drain()
        await asyncio.sleep(0.02)


def _counted_as(row: dict[str, Any]) -> str:
    exhausted = (row["maxAttempt"] is not None and row["attemptNr"] >= row["maxAttempt"]) or (
        row["maxFailure"] is not None and row["failedAttempt"] >= row["maxFailure"]
    )
    return (
        "failed" if row["status"] == "failed" or (row["status"] == "ready" and exhausted) else row["status"]
    )


async def _rows(api: ApiServer, query: sa.Select) -> list[dict[str, Any]]:
    async with api.state.db.transaction() as conn:
        return [dict(row) for row in (await conn.execute(query)).mappings()]


async def test_fifty_consumers_drain_ten_thousand_ranges(world) -> None:
    api, runner = world
    files = [
        CatalogFile(lfn=f"evt.{i:03d}.root", fsize=10_000 + i, n_events=EVENTS_PER_FILE, guid=f"guid-{i:03d}")
        for i in range(N_FILES)
    ]
    async with api.state.db.transaction() as conn:
        await api.state.dm.register_files(conn, api.state.clock, DATASET, files)
    params = input_task(DATASET, "user.testuser.es.load.v1", n_files_per_job=2)
    params.update(
        eventService=1, nEventsPerWorker=1, nEsConsumers=N_CONSUMERS // (N_FILES // 2), maxAttemptES=3
    )
    task_id = await submit(api, params)
    await runner.drain()
    ranges = await _rows(api, sa.select(events.c.row_ID).where(events.c.jediTaskID == task_id))
    assert len(ranges) == N_FILES * EVENTS_PER_FILE

    ledger = Ledger()
    done = asyncio.Event()
    agents = asyncio.create_task(_agents(runner, done))
    pilots = [asyncio.create_task(_pilot(api, i, ledger, done)) for i in range(N_CONSUMERS)]
    started = time.monotonic()
    try:
        while await task_status(api, task_id) not in ("done", "finished", "failed"):
            assert time.monotonic() - started < DEADLINE_SECONDS, "the task did not end in time"
            for pilot in pilots:
                if pilot.done() and pilot.exception() is not None:
                    raise pilot.exception()
            await asyncio.sleep(0.2)
    finally:
        done.set()
        await asyncio.gather(*pilots, agents)
    await runner.drain()

    final = await _rows(api, sa.select(events).where(events.c.jediTaskID == task_id))
    statuses = Counter(row["status"] for row in final)
    # Ranges end merged; those of a jobset that failed (its file then retried in a new jobset)
    # end failed (out of attempts), discarded (done) or cancelled (never done).
    assert set(statuses) <= {"merged", "failed", "fatal", "discarded", "cancelled"}, statuses
    assert ledger.merge_jobs, "no ES merge job was made"
    merged = {
        (row["jobsetID"], row["fileID"], row["job_processID"]) for row in final if row["status"] == "merged"
    }
    # Every merged range was accepted finished exactly once.
    assert {key: ledger.finished[key] for key in merged} == dict.fromkeys(merged, 1)
    failed_jobsets = {row["jobsetID"] for row in final if row["status"] != "merged"}
    assert not failed_jobsets & {key[0] for key in merged}, "a jobset both merged and failed"
    # A range that failed for good used all its attempts.
    assert all(row["attemptNr"] == 0 for row in final if row["status"] == "failed")
    inputs = await _rows(
        api, sa.select(task_files).where(task_files.c.jediTaskID == task_id, task_files.c.type == "input")
    )
    finished_files = {row["fileID"] for row in inputs if row["status"] == "finished"}
    # A file is finished exactly when one jobset merged all of its ranges.
    merged_by_file = Counter(key[1] for key in merged)
    assert finished_files == {f for f, n in merged_by_file.items() if n == EVENTS_PER_FILE}
    assert sum(merged_by_file.values()) == EVENTS_PER_FILE * len(finished_files)
    assert await task_status(api, task_id) == ("done" if len(finished_files) == N_FILES else "finished")

    # The dataset counters equal a recount of the file rows (a master row out of attempts stays
    # ready and counts failed, as for ordinary jobs).
    datasets = await _rows(api, sa.select(task_datasets).where(task_datasets.c.jediTaskID == task_id))
    for dataset in datasets:
        rows = await _rows(api, sa.select(task_files).where(task_files.c.datasetID == dataset["datasetID"]))
        recount = Counter(_counted_as(row) for row in rows)
        assert dataset["nFilesFinished"] == recount["finished"], (dataset, recount)
        assert dataset["nFilesFailed"] == recount["failed"], (dataset, recount)
    # A consumer's nEvents is the events of the ranges it finished (one event per range here):
    # merged, or discarded when their jobset failed.
    consumers = await _rows(api, sa.select(jobs).where(jobs.c.PandaID.in_(ledger.consumer_jobs)))
    finished_by = Counter(row["PandaID"] for row in final if row["status"] in ("merged", "discarded"))
    assert {job["PandaID"]: job["nEvents"] or 0 for job in consumers} == {
        job["PandaID"]: finished_by[job["PandaID"]] for job in consumers
    }
