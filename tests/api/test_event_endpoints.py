"""The event/* endpoints of api-v1.md §2.4 through the API, on both databases: hand-out, reports,
counts and statuses, with exact answers, refusals and the range life a report may cause.

The jobs and ranges are written directly (the generator of ES jobs is another part): one task,
one input dataset of two files, one jobset of consumer jobs, ranges of two events.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bamboo.db import events as events_db
from bamboo.db.schema import events, job_files, jobs, task_datasets, task_files, tasks
from tests.api.conftest import ApiServer
from tests.api.test_task_flow import envelope
from tests.conftest import FixedClock

T0 = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
TASK = 10_000_777
JOBSET = 7_000_001
OWNER = "Test User"  # the user name of a token issued to "test user"
ROBOT = ("Harvester Robot", "production")
PRODUCTION_REQUIRED = {"success": False, "message": "production or pilot role required", "data": None}


@dataclass
class Jobset:
    task_id: int
    jobset_id: int
    dataset_id: int
    files: list[int]
    consumers: list[int]


async def make_jobset(
    conn,
    now: datetime,
    *,
    task_id: int = TASK,
    jobset_id: int = JOBSET,
    consumers: dict[int, str] | None = None,
    n_files: int = 2,
    events_per_file: int = 4,
    per_range: int = 2,
    attempts: int = 3,
    event_service: int = 1,
) -> Jobset:
    """A task with one input dataset, a jobset of consumers (PandaID -> status) and its ranges."""
    consumers = consumers if consumers is not None else {jobset_id + 1: "running"}
    known = (await conn.execute(sa.select(tasks.c.jediTaskID).where(tasks.c.jediTaskID == task_id))).first()
    if known is None:
        await conn.execute(
            sa.insert(tasks).values(
                jediTaskID=task_id, task_params="{}", userName=OWNER, eventService=1, status="running"
            )
        )
    dataset_id = (
        await conn.execute(
            sa.insert(task_datasets).values(
                jediTaskID=task_id,
                datasetName=f"data.{jobset_id}/",
                type="input",
                creationTime=now,
                modificationTime=now,
                status="ready",
            )
        )
    ).inserted_primary_key[0]
    files = []
    for index in range(n_files):
        result = await conn.execute(
            sa.insert(task_files).values(
                jediTaskID=task_id,
                datasetID=dataset_id,
                creationDate=now,
                lfn=f"EVNT.{jobset_id}._{index:05d}.pool.root",
                GUID=f"guid-{jobset_id}-{index}",
                scope="mc26",
                type="input",
                status="running",
                nEvents=events_per_file,
                PandaID=jobset_id,
            )
        )
        files.append(result.inserted_primary_key[0])
    job_rows = [
        {
            "PandaID": panda_id,
            "jediTaskID": task_id,
            "jobsetID": jobset_id,
            "jobStatus": status,
            "eventService": event_service,
            "prodUserName": OWNER,
            "prodSourceLabel": "managed",
            "computingSite": "TEST_PQ",
            "attemptNr": 1,
            "modificationTime": now,
        }
        for panda_id, status in consumers.items()
    ]
    if job_rows:
        await conn.execute(sa.insert(jobs), job_rows)
    await events_db.insert_ranges(
        conn,
        [
            {
                "jediTaskID": task_id,
                "datasetID": dataset_id,
                "PandaID": jobset_id,
                "jobsetID": jobset_id,
                "fileID": file_id,
                "job_processID": first,
                "attemptNr": attempts,
                "status": "ready",
                "def_min_eventID": first,
                "def_max_eventID": min(first + per_range, events_per_file) - 1,
                "is_jumbo": False,
                "modificationTime": now,
            }
            for file_id in files
            for first in range(0, events_per_file, per_range)
        ],
    )
    return Jobset(task_id, jobset_id, dataset_id, files, list(consumers))


async def call(
    api: ApiServer, name: str, method: str = "POST", as_user=ROBOT[0], role=ROBOT[1], **params: Any
) -> dict:
    headers = api.token_headers(as_user, role=role) if as_user else None
    async with api.client(headers=headers) as client:
        if method == "GET":
            return envelope(await client.get(f"/api/v1/event/{name}", params=params))
        return envelope(await client.post(f"/api/v1/event/{name}", json=params))


async def acquire(api: ApiServer, job_id: int, jobset_id: int = JOBSET, **params: Any) -> dict:
    return await call(api, "acquire_event_ranges", job_id=job_id, jobset_id=jobset_id, **params)


def ranges_of(body: dict) -> list[str]:
    assert body["success"] is True and body["data"]["StatusCode"] == 0, body
    return [item["eventRangeID"] for item in body["data"]["eventRanges"]]


async def update(api: ApiServer, reports: Any, version: int = 0, as_json: bool = True) -> dict:
    payload = json.dumps(reports) if as_json else reports
    return await call(api, "update_event_ranges", event_ranges=payload, version=version)


async def event_rows(api: ApiServer) -> list[dict]:
    async with api.state.db.transaction(write=False) as conn:
        query = sa.select(events).order_by(events.c.fileID, events.c.job_processID)
        return [dict(row) for row in (await conn.execute(query)).mappings()]


async def job_row(api: ApiServer, panda_id: int) -> dict:
    async with api.state.db.transaction(write=False) as conn:
        return dict((await conn.execute(sa.select(jobs).where(jobs.c.PandaID == panda_id))).mappings().one())


@pytest.fixture
async def es(api: ApiServer) -> tuple[ApiServer, Jobset]:
    api.state.clock = FixedClock(T0)
    async with api.state.db.transaction() as conn:
        jobset = await make_jobset(conn, T0, consumers={JOBSET + 1: "running", JOBSET + 2: "running"})
    return api, jobset


# --- acquire_event_ranges ------------------------------------------------------------------------


async def test_acquire_hands_ranges_in_file_order_with_their_file(es) -> None:
    api, js = es
    consumer = js.consumers[0]
    f1, f2 = js.files
    body = await acquire(api, consumer, task_id=TASK, n_ranges=3)
    assert body == {
        "success": True,
        "message": "",
        "data": {
            "StatusCode": 0,
            "eventRanges": [
                {
                    "eventRangeID": f"{TASK}-{consumer}-{f1}-0-3",
                    "startEvent": 0,
                    "lastEvent": 1,
                    "LFN": f"EVNT.{JOBSET}._00000.pool.root",
                    "GUID": f"guid-{JOBSET}-0",
                    "scope": "mc26",
                },
                {
                    "eventRangeID": f"{TASK}-{consumer}-{f1}-2-3",
                    "startEvent": 2,
                    "lastEvent": 3,
                    "LFN": f"EVNT.{JOBSET}._00000.pool.root",
                    "GUID": f"guid-{JOBSET}-0",
                    "scope": "mc26",
                },
                {
                    "eventRangeID": f"{TASK}-{consumer}-{f2}-0-3",
                    "startEvent": 0,
                    "lastEvent": 1,
                    "LFN": f"EVNT.{JOBSET}._00001.pool.root",
                    "GUID": f"guid-{JOBSET}-1",
                    "scope": "mc26",
                },
            ],
        },
    }
    rows = await event_rows(api)
    assert [(r["status"], r["PandaID"], r["modificationTime"]) for r in rows] == [
        ("sent", consumer, T0),
        ("sent", consumer, T0),
        ("sent", consumer, T0),
        ("ready", JOBSET, T0),
    ]
    # The other consumer gets the last one, then nothing.
    other = js.consumers[1]
    assert ranges_of(await acquire(api, other, n_ranges=10)) == [f"{TASK}-{other}-{f2}-2-3"]
    assert ranges_of(await acquire(api, other)) == []


async def test_scattered_takes_one_range_of_each_file_first(es) -> None:
    api, js = es
    consumer = js.consumers[0]
    f1, f2 = js.files
    got = ranges_of(await acquire(api, consumer, n_ranges=2, scattered=True))
    assert got == [f"{TASK}-{consumer}-{f1}-0-3", f"{TASK}-{consumer}-{f2}-0-3"]


async def test_segment_id_restricts_the_dataset(es) -> None:
    api, js = es
    consumer = js.consumers[0]
    assert ranges_of(await acquire(api, consumer, segment_id=js.dataset_id + 1000)) == []
    assert len(ranges_of(await acquire(api, consumer, segment_id=js.dataset_id))) == 4


async def test_ranges_without_attempts_left_are_not_handed_out(es) -> None:
    api, js = es
    async with api.state.db.transaction() as conn:
        await conn.execute(sa.update(events).where(events.c.fileID == js.files[0]).values(attemptNr=0))
    got = ranges_of(await acquire(api, js.consumers[0]))
    assert [identifier.split("-")[2] for identifier in got] == [str(js.files[1])] * 2


async def test_jumbo_jobs_take_from_every_jobset_of_the_task(api: ApiServer) -> None:
    api.state.clock = FixedClock(T0)
    async with api.state.db.transaction() as conn:
        await make_jobset(conn, T0, consumers={})
        second = await make_jobset(conn, T0, jobset_id=JOBSET + 100, consumers={})
        await make_jobset(
            conn, T0, jobset_id=JOBSET + 200, consumers={JOBSET + 201: "running"}, event_service=4
        )
    jumbo = JOBSET + 201
    got = ranges_of(await acquire(api, jumbo, jobset_id=JOBSET + 200, n_ranges=100))
    assert len(got) == 12
    assert {identifier.split("-")[1] for identifier in got} == {str(jumbo)}
    rows = await event_rows(api)
    assert all(row["is_jumbo"] and row["status"] == "sent" for row in rows)
    assert {row["jobsetID"] for row in rows} == {JOBSET, second.jobset_id, JOBSET + 200}
    count = await call(
        api, "get_available_event_range_count", "GET", job_id=jumbo, jobset_id=JOBSET + 200, task_id=TASK
    )
    assert count == {"success": True, "message": "", "data": 0}


async def test_n_ranges_is_bounded(es) -> None:
    api, js = es
    body = await acquire(api, js.consumers[0], n_ranges=0)
    assert body == {"success": False, "message": "n_ranges must be at least 1, got 0", "data": None}
    assert len(ranges_of(await acquire(api, js.consumers[0], n_ranges=10**9))) == 4


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"job_id": 123}, "job 123 not found among active jobs"),
        ({"jobset_id": JOBSET + 5}, f"job {JOBSET + 1} belongs to jobset {JOBSET}, not {JOBSET + 5}"),
        ({"task_id": TASK + 1}, f"job {JOBSET + 1} belongs to task {TASK}, not {TASK + 1}"),
    ],
)
async def test_acquire_refuses_unknown_and_mismatched_jobs(es, params: dict, message: str) -> None:
    api, _ = es
    arguments = {"job_id": JOBSET + 1, "jobset_id": JOBSET, **params}
    body = await call(api, "acquire_event_ranges", **arguments)
    assert body == {"success": False, "message": message, "data": None}
    assert {row["status"] for row in await event_rows(api)} == {"ready"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"jobStatus": "activated"}, "is activated: only sent, starting or running jobs take ranges"),
        ({"jobStatus": "finished"}, "is finished: only sent, starting or running jobs take ranges"),
        ({"commandToPilot": "tobekilled"}, "is to be killed: no event ranges for it"),
        ({"eventService": 0}, "is not an event service consumer"),
    ],
)
async def test_acquire_refuses_jobs_that_may_not_take_ranges(es, values: dict, message: str) -> None:
    api, js = es
    async with api.state.db.transaction() as conn:
        await conn.execute(sa.update(jobs).where(jobs.c.PandaID == js.consumers[0]).values(**values))
    body = await acquire(api, js.consumers[0])
    assert body == {"success": False, "message": f"job {js.consumers[0]} {message}", "data": None}


async def test_event_writes_need_the_production_role(es) -> None:
    api, js = es
    for name, params in (
        ("acquire_event_ranges", {"job_id": js.consumers[0], "jobset_id": JOBSET}),
        ("update_event_ranges", {"event_ranges": "[]"}),
        ("update_single_event_range", {"event_range_id": "1-2-3-4-5", "event_range_status": "finished"}),
    ):
        assert await call(api, name, as_user="test user", role=None, **params) == PRODUCTION_REQUIRED
    body = await call(
        api,
        "get_available_event_range_count",
        "GET",
        as_user=OWNER,
        role=None,
        job_id=js.consumers[0],
        jobset_id=JOBSET,
        task_id=TASK,
    )
    assert body == PRODUCTION_REQUIRED
    items = json.dumps([{"task_id": TASK, "panda_id": js.consumers[0]}])
    body = await call(api, "get_event_range_statuses", "GET", as_user=None, job_task_ids=items)
    assert body == {"success": False, "message": "SSL secure connection is required", "data": None}
    assert {row["status"] for row in await event_rows(api)} == {"ready"}


async def test_an_empty_jobset_closes_its_unused_consumers(api: ApiServer) -> None:
    api.state.clock = FixedClock(T0)
    caller, queued, sent_unused, sent_busy, started = (JOBSET + n for n in range(1, 6))
    statuses = {
        caller: "running",
        queued: "activated",
        sent_unused: "sent",
        sent_busy: "sent",
        started: "starting",
    }
    async with api.state.db.transaction() as conn:
        await make_jobset(conn, T0, consumers=statuses, n_files=1, events_per_file=2)
    assert len(ranges_of(await acquire(api, sent_busy))) == 1
    assert ranges_of(await acquire(api, caller)) == []
    for panda_id, status in ((queued, "closed"), (sent_unused, "closed")):
        job = await job_row(api, panda_id)
        assert (job["jobStatus"], job["commandToPilot"], job["taskBufferErrorCode"]) == (
            status,
            "tobekilled",
            100,
        )
        assert job["taskBufferErrorDiag"] == "killed since task is (almost) done"
    for panda_id, status in ((caller, "running"), (sent_busy, "sent"), (started, "starting")):
        assert (await job_row(api, panda_id))["jobStatus"] == status


async def test_a_jobset_with_ranges_left_closes_nobody(es) -> None:
    api, js = es
    async with api.state.db.transaction() as conn:
        await conn.execute(
            sa.update(jobs).where(jobs.c.PandaID == js.consumers[1]).values(jobStatus="activated")
        )
    assert len(ranges_of(await acquire(api, js.consumers[0], segment_id=js.dataset_id + 1))) == 0
    assert len(ranges_of(await acquire(api, js.consumers[0], n_ranges=1))) == 1
    assert (await job_row(api, js.consumers[1]))["jobStatus"] == "activated"


# --- update_event_ranges -------------------------------------------------------------------------


async def test_update_writes_final_statuses_and_counts_the_events(es) -> None:
    api, js = es
    consumer = js.consumers[0]
    a, b, c, d = ranges_of(await acquire(api, consumer))
    api.state.clock = FixedClock(T0.replace(hour=13))
    body = await update(
        api,
        [
            {
                "eventRangeID": a,
                "eventStatus": "finished",
                "coreCount": 8,
                "cpuConsumptionTime": 12.5,
                "objstoreID": 7,
            },
            {
                "eventRangeID": b,
                "eventStatus": "failed",
                "errorCode": "1234",
                "errorDiag": "x" * 600,
                "coreCount": "²",  # not a number: dropped, the report still counts
                "objstoreID": 2**70,
            },
            {"eventRangeID": c, "eventStatus": "fatal", "pathConvention": 2},
            {"eventRangeID": d, "eventStatus": "running"},
            {"eventRangeID": d, "eventStatus": "transferring"},
        ],
    )
    assert body == {
        "success": True,
        "message": "",
        "data": {"StatusCode": 0, "Returns": [True, True, True, None, None], "Commands": {}},
    }
    rows = await event_rows(api)
    assert [(r["status"], r["attemptNr"]) for r in rows] == [
        ("finished", 3),
        ("failed", 3),
        ("failed", 1),
        ("running", 3),
    ]
    first, second, third, _ = rows
    assert (first["core_count"], first["cpu_consumption_time"], first["objstore_ID"]) == (8, 12.5, 7)
    assert (second["error_code"], second["error_diag"]) == (1234, "x" * 500)
    assert (second["core_count"], second["objstore_ID"]) == (None, None)
    assert third["path_convention"] == 2
    assert first["modificationTime"] == T0.replace(hour=13)
    assert (await job_row(api, consumer))["nEvents"] == 2


async def test_update_accepts_a_list_and_refuses_what_it_cannot_apply(es) -> None:
    api, js = es
    consumer, other = js.consumers
    (a,) = ranges_of(await acquire(api, consumer, n_ranges=1))
    (b,) = ranges_of(await acquire(api, other, n_ranges=1))
    task, _, file_id, process_id, attempt = a.split("-")
    reports = [
        {"eventRangeID": a, "eventStatus": "finished"},
        {"eventRangeID": a, "eventStatus": "failed"},  # already final
        {"eventRangeID": f"{task}-{other}-{file_id}-{process_id}-{attempt}", "eventStatus": "finished"},
        {"eventRangeID": f"{task}-{consumer}-{file_id}-{process_id}-2", "eventStatus": "finished"},
        {
            "eventRangeID": f"{int(task) + 1}-{other}-{file_id}-{process_id}-{attempt}",
            "eventStatus": "finished",
        },
        {"eventRangeID": f"{task}-999-{file_id}-{process_id}-{attempt}", "eventStatus": "finished"},
        {"eventRangeID": "1-2-3-4", "eventStatus": "finished"},
        {"eventRangeID": "a-b-c-d-e", "eventStatus": "finished"},
        {"eventRangeID": b, "eventStatus": "done"},
        "not an object",
    ]
    body = await update(api, reports, as_json=False)
    assert body["data"]["Returns"] == [True] + [False] * 9
    assert [row["status"] for row in await event_rows(api)] == ["finished", "sent", "ready", "ready"]


@pytest.mark.parametrize(
    ("event_ranges", "version", "message"),
    [
        ("[", 0, "event_ranges is not valid JSON: "),
        ('{"a": 1}', 0, "event_ranges must be a list (or the JSON text of one)"),
        ("[]", 3, "version must be 0, 1 or 2, got 3"),
        ("[" * 100_000, 0, "event_ranges is not valid JSON: nested too deeply"),
        (
            '[{"eventRangeID": "1-2-3-4-5"}]',
            1,
            "version 1: each item must be an object with an eventRanges list",
        ),
        (
            json.dumps([{"eventRangeID": "1-2-3-4-5", "eventStatus": "finished"}] * 10_001),
            0,
            "too many event",
        ),
    ],
)
async def test_update_refuses_bad_calls(es, event_ranges: str, version: int, message: str) -> None:
    api, _ = es
    body = await call(api, "update_event_ranges", event_ranges=event_ranges, version=version)
    assert body["success"] is False and body["message"].startswith(message), body


async def test_version_1_registers_the_zip_file(es) -> None:
    api, js = es
    consumer = js.consumers[0]
    a, b, c, _ = ranges_of(await acquire(api, consumer))
    zip_file = {"lfn": "zip.001.tar", "objstoreID": 42, "fsize": 1000, "adler32": "0a1b2c3d", "numEvents": 4}
    chunks = [
        {
            "zipFile": zip_file,
            "eventRanges": [
                {"eventRangeID": a, "eventStatus": "finished"},
                {"eventRangeID": b, "eventStatus": "finished"},
            ],
        },
        {"eventRanges": [{"eventRangeID": c, "eventStatus": "failed"}]},
        {"zipFile": {"fsize": 1}, "eventRanges": [{"eventRangeID": c, "eventStatus": "finished"}]},
    ]
    body = await update(api, chunks, version=1)
    assert body["data"]["Returns"] == [True, True, True, False]
    async with api.state.db.transaction(write=False) as conn:
        (zipped,) = (
            await conn.execute(sa.select(job_files).where(job_files.c.type == "zipoutput"))
        ).mappings()
    assert (zipped["PandaID"], zipped["lfn"], zipped["fsize"], zipped["checksum"]) == (
        consumer,
        "zip.001.tar",
        1000,
        "ad:0a1b2c3d",
    )
    rows = await event_rows(api)
    assert [(r["zipRow_ID"], r["objstore_ID"]) for r in rows[:3]] == [
        (zipped["row_ID"], 42),
        (zipped["row_ID"], 42),
        (None, None),
    ]


async def test_version_2_updates_ready_ranges_of_activated_jobs(es) -> None:
    api, js = es
    consumer = js.consumers[0]
    async with api.state.db.transaction() as conn:
        await conn.execute(sa.update(jobs).where(jobs.c.PandaID == consumer).values(jobStatus="activated"))
        await conn.execute(sa.update(events).where(events.c.fileID == js.files[0]).values(PandaID=consumer))
    ready = f"{TASK}-{consumer}-{js.files[0]}-0-3"
    report = [{"eventRanges": [{"eventRangeID": ready, "eventStatus": "finished"}]}]
    assert (await update(api, report, version=1))["data"]["Returns"] == [False]
    assert (await update(api, report, version=2))["data"]["Returns"] == [True]


async def test_commands_tell_killed_and_idle_consumers_to_stop(es) -> None:
    api, js = es
    consumer, other = js.consumers
    a, b = ranges_of(await acquire(api, consumer, n_ranges=2))
    (c,) = ranges_of(await acquire(api, other, n_ranges=1))
    # Ranges left in the jobset: nobody is told anything; a killed job is told to stop.
    body = await update(
        api, [{"eventRangeID": a, "eventStatus": "finished"}, {"eventRangeID": c, "eventStatus": "running"}]
    )
    assert body["data"]["Commands"] == {}
    async with api.state.db.transaction() as conn:
        await conn.execute(sa.update(jobs).where(jobs.c.PandaID == other).values(commandToPilot="tobekilled"))
    body = await update(api, [{"eventRangeID": c, "eventStatus": "running"}])
    assert body["data"]["Commands"] == {str(other): "tobekilled"}
    # The jobset runs dry: the consumer with nothing open left gets softkill, not one still working.
    (d,) = ranges_of(await acquire(api, consumer, n_ranges=5))
    body = await update(
        api, [{"eventRangeID": b, "eventStatus": "finished"}, {"eventRangeID": d, "eventStatus": "running"}]
    )
    assert body["data"]["Commands"] == {}
    body = await update(api, [{"eventRangeID": d, "eventStatus": "finished"}])
    assert body["data"]["Commands"] == {str(consumer): "softkill"}


# --- update_single_event_range -------------------------------------------------------------------


async def test_update_single_event_range(es) -> None:
    api, js = es
    consumer = js.consumers[0]
    a, b, *_ = ranges_of(await acquire(api, consumer))
    body = await call(api, "update_single_event_range", event_range_id=a, event_range_status="running")
    assert body == {"success": True, "message": "", "data": {"Command": json.dumps({str(consumer): None})}}
    body = await call(
        api,
        "update_single_event_range",
        event_range_id=a,
        event_range_status="finished",
        core_count=4,
        cpu_consumption_time=3,
        object_store_id="17",
    )
    assert body["success"] is True
    row = (await event_rows(api))[0]
    assert (row["status"], row["core_count"], row["cpu_consumption_time"], row["objstore_ID"]) == (
        "finished",
        4,
        3.0,
        17,
    )
    body = await call(api, "update_single_event_range", event_range_id=a, event_range_status="finished")
    assert body == {
        "success": False,
        "message": f"event range not updated: event range {a} is not held open by job {consumer}",
        "data": None,
    }
    body = await call(api, "update_single_event_range", event_range_id="x", event_range_status="finished")
    assert body == {
        "success": False,
        "message": "event range not updated: bad eventRangeID 'x'",
        "data": None,
    }
    body = await call(api, "update_single_event_range", event_range_id=b, event_range_status="bogus")
    assert body == {
        "success": False,
        "message": "event range not updated: bad eventStatus 'bogus'",
        "data": None,
    }


# --- counts and statuses -------------------------------------------------------------------------


async def test_available_count(es) -> None:
    api, js = es
    params = {"job_id": js.consumers[0], "jobset_id": JOBSET, "task_id": TASK}
    assert (await call(api, "get_available_event_range_count", "GET", **params))["data"] == 4
    ranges_of(await acquire(api, js.consumers[0], n_ranges=3))
    assert (await call(api, "get_available_event_range_count", "GET", **params))["data"] == 1
    body = await call(api, "get_available_event_range_count", "GET", **{**params, "job_id": 5})
    assert body == {"success": False, "message": "job 5 not found among active jobs", "data": None}
    body = await call(api, "get_available_event_range_count", "GET", **{**params, "jobset_id": 5})
    assert body == {
        "success": False,
        "message": f"job {js.consumers[0]} belongs to jobset {JOBSET}, not 5",
        "data": None,
    }


async def test_range_statuses(es) -> None:
    api, js = es
    consumer, other = js.consumers
    a, b = ranges_of(await acquire(api, consumer, n_ranges=2))
    await update(api, [{"eventRangeID": b, "eventStatus": "failed", "errorCode": 9, "errorDiag": "boom"}])
    expected = {
        str(consumer): {
            a: {"status": "sent", "error": None, "dialog": None},
            b: {"status": "failed", "error": 9, "dialog": "boom"},
        },
        str(other): {},
    }
    items = [{"task_id": TASK, "panda_id": consumer}, {"task_id": TASK, "job_id": other}]
    body = await call(api, "get_event_range_statuses", "GET", job_task_ids=json.dumps(items))
    assert body == {"success": True, "message": "", "data": expected}
    # panda-client repeats the parameter, each value str() of a dict; the owner may read it.
    repeated = [str({"task_id": TASK, "panda_id": consumer}), str({"task_id": TASK, "panda_id": other})]
    body = await call(
        api, "get_event_range_statuses", "GET", as_user="test user", role=None, job_task_ids=repeated
    )
    assert body == {"success": True, "message": "", "data": expected}
    # Wrong task: nothing; another user: refused.
    body = await call(
        api,
        "get_event_range_statuses",
        "GET",
        job_task_ids=json.dumps([{"task_id": 1, "panda_id": consumer}]),
    )
    assert body["data"] == {str(consumer): {}}
    body = await call(
        api,
        "get_event_range_statuses",
        "GET",
        as_user="Someone Else",
        role=None,
        job_task_ids=json.dumps(items),
    )
    assert body == {
        "success": False,
        "message": f"job {consumer} is not yours: reading its ranges needs the production role",
        "data": None,
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nonsense", "job_task_ids: not valid JSON"),
        ("__import__('os')", "job_task_ids: not valid JSON"),
        ("{'task_id': 'x'}", "job_task_ids: a Python literal must be a dict of integers"),
        ('[{"task_id": 1}]', "job_task_ids: task_id and panda_id must be integers"),
        ("[1]", "job_task_ids: each item must be an object {task_id, panda_id}"),
        ("[" * 5_000, "job_task_ids: not valid JSON"),
        (json.dumps([{"task_id": 1, "panda_id": 2}] * 1001), "job_task_ids: at most 1000 items"),
    ],
)
async def test_range_statuses_refuse_bad_ids(es, value: str, message: str) -> None:
    api, _ = es
    body = await call(api, "get_event_range_statuses", "GET", job_task_ids=value)
    assert body == {"success": False, "message": message, "data": None}


# --- a range never leaves a final status -----------------------------------------------------------

FINAL_FOR_UPDATES = {"finished", "failed"}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, 3),
            st.sampled_from(["running", "transferring", "finished", "failed", "fatal", "bogus"]),
            st.sampled_from([0, 1, 2]),
        ),
        min_size=1,
        max_size=12,
    )
)
async def test_random_reports_never_move_a_range_out_of_a_final_status(es, steps) -> None:
    api, js = es
    async with api.state.db.transaction() as conn:
        await conn.execute(
            sa.update(events).values(status="ready", PandaID=JOBSET, attemptNr=3, error_code=None)
        )
    consumer = js.consumers[0]
    identifiers = ranges_of(await acquire(api, consumer))
    before = await event_rows(api)  # in file and event order, as the ranges were handed out
    for index, status, version in steps:
        report = {"eventRangeID": identifiers[index], "eventStatus": status}
        payload = [report] if version == 0 else [{"eventRanges": [report]}]
        (returned,) = (await update(api, payload, version=version))["data"]["Returns"]
        after = await event_rows(api)
        for position, (old, new) in enumerate(zip(before, after, strict=True)):
            if position != index or old["status"] in FINAL_FOR_UPDATES or status == "bogus":
                assert new == old, (status, old, new)
                if position == index:
                    assert returned is False
            elif status in ("running", "transferring"):
                assert returned is None and new["status"] == "running"
            else:
                assert returned is True
                assert new["status"] == ("finished" if status == "finished" else "failed")
                assert new["attemptNr"] == (1 if status == "fatal" else old["attemptNr"])
        before = after
