"""The Harvester instance and worker endpoints of api-v1.md §2.5 through the API, on both databases:
heartbeat, update_workers (with its job effects through the finaliser), service metrics, dialogs,
worker statistics, the current worker id, and who may write for a harvester_id."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from bamboo.db import archive as archive_db
from bamboo.db import harvester as harvester_db
from bamboo.db import workers as workers_db
from bamboo.db.schema import harvester_workers, worker_jobs
from tests.api.conftest import ApiServer
from tests.api.test_pilot_endpoints import ROBOT, row, take, taken, two_jobs
from tests.api.test_pilot_endpoints import post as pilot_post
from tests.api.test_task_flow import envelope, world
from tests.conftest import FixedClock

__all__ = ["world"]

T0 = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
HID = "CERN_central_A"
OK = {"success": True, "message": "", "data": None}
SECURE_REQUIRED = {"success": False, "message": "SSL secure connection is required", "data": None}
NOT_OWNER = (
    "Permission denied: harvester_id {} is used by another user; "
    "only its owner or a production role may act for it"
)
OWNER = "test user"


async def call(
    api: ApiServer,
    name: str,
    *,
    as_user: str | None = ROBOT[0],
    role: str | None = ROBOT[1],
    method: str = "POST",
    https: bool = True,
    **params: Any,
) -> dict:
    headers = api.token_headers(as_user, role=role) if as_user else None
    async with api.client(headers=headers, https=https) as client:
        if method == "GET":
            response = await client.get(f"/api/v1/harvester/{name}", params=params)
        else:
            response = await client.post(f"/api/v1/harvester/{name}", json=params)
    return envelope(response)


def fixed(api: ApiServer, moment: datetime = T0) -> FixedClock:
    clock = FixedClock(moment)
    api.state.clock = clock
    return clock


def failed(message: str) -> dict:
    return {"success": False, "message": message, "data": None}


def worker(worker_id: int, **values: Any) -> dict:
    """A worker as Harvester's communicator sends it."""
    return {
        "workerID": worker_id,
        "batchID": f"batch.{worker_id}",
        "queueName": "TEST_PQ",
        "status": "submitted",
        "computingSite": "TEST_PQ",
        "nCore": 8,
        "nodeID": None,
        "submitTime": "datetime/2026-11-30 11:59:00.250000",
        "startTime": None,
        "endTime": None,
        "jobType": "managed",
        "resourceType": "MCORE",
        "nativeExitCode": None,
        "nativeStatus": None,
        "diagMessage": "",
        "nJobs": 1,
        "computingElement": "ce01.example.org",
        "syncLevel": 0,
        "submissionHost": "sub01",
        "harvesterHost": "harv01",
        "errorCode": 0,
        "minRamCount": 16000,
        "pandaid_list": [],
        "stdOut": "https://logs/out",
        "stdErr": "https://logs/err",
        "batchLog": "https://logs/log",
        "jdl": "https://logs/jdl",
        **values,
    }


async def update(api: ApiServer, *workers: dict, harvester_id: str = HID, **identity: Any) -> dict:
    return await call(api, "update_workers", harvester_id=harvester_id, workers=list(workers), **identity)


async def stored_worker(api: ApiServer, worker_id: int, harvester_id: str = HID) -> dict[str, Any] | None:
    async with api.state.db.transaction(write=False) as conn:
        return await workers_db.get(conn, harvester_id, worker_id)


async def relations(api: ApiServer, worker_id: int) -> dict[int, datetime]:
    async with api.state.db.transaction(write=False) as conn:
        query = sa.select(worker_jobs.c.PandaID, worker_jobs.c.lastUpdate).where(
            worker_jobs.c.harvesterID == HID, worker_jobs.c.workerID == worker_id
        )
        return {panda_id: moment for panda_id, moment in (await conn.execute(query)).all()}


async def instance(api: ApiServer, harvester_id: str = HID) -> dict[str, Any] | None:
    async with api.state.db.transaction(write=False) as conn:
        return await harvester_db.get_instance(conn, harvester_id)


# --- heartbeat ----------------------------------------------------------------------------------


async def test_heartbeat_first_contact_stores_the_instance(api: ApiServer) -> None:
    fixed(api)
    data = {
        "startTime": "datetime/2026-11-30 10:00:00.500000",
        "sw_version": "0.5.12",
        "commit_stamp": "c" * 150,
        "description": "test instance",
        "extra": {"anything": [1, 2]},
        "commands": [
            {"command": "SET_N_WORKERS_JOBTYPE", "computingSite": "TEST_PQ", "resourceType": "SCORE"},
            {"command": "SET_N_WORKERS_JOBTYPE", "computingSite": "TEST_PQ", "resourceType": "MCORE"},
        ],
    }
    assert await call(api, "heartbeat", harvester_id=HID, data=data) == OK
    stored = await instance(api)
    assert stored is not None
    assert (stored["owner"], stored["hostName"], stored["lastUpdate"]) == ("Harvester Robot", "127.0.0.1", T0)
    assert stored["startTime"] == datetime(2026, 11, 30, 10, 0, 0, 500000, tzinfo=UTC)
    assert (stored["sw_version"], stored["commit_stamp"], stored["description"]) == (
        "0.5.12",
        "c" * 100,
        "test instance",
    )
    assert stored["data"] == data
    async with api.state.db.transaction(write=False) as conn:
        locks = await harvester_db.command_locks(conn, HID)
    assert [(lock["command"], lock["computingSite"], lock["resourceType"]) for lock in locks] == [
        ("SET_N_WORKERS_JOBTYPE", "TEST_PQ", "MCORE"),
        ("SET_N_WORKERS_JOBTYPE", "TEST_PQ", "SCORE"),
    ]
    assert all(lock["lastUpdate"] == T0 and lock["lockedBy"] is None for lock in locks)
    # Later heartbeats refresh the time, keep columns data does not name, and the locks.
    fixed(api, T0 + timedelta(minutes=5))
    assert await call(api, "heartbeat", harvester_id=HID, data={"sw_version": "0.5.13", **data}) == OK
    assert await call(api, "heartbeat", harvester_id=HID) == OK
    assert await call(api, "heartbeat", harvester_id=HID, data=None) == OK
    stored = await instance(api)
    assert stored is not None
    assert (stored["lastUpdate"], stored["sw_version"], stored["data"]) == (
        T0 + timedelta(minutes=5),
        "0.5.12",
        {},
    )
    async with api.state.db.transaction(write=False) as conn:
        assert len(await harvester_db.command_locks(conn, HID)) == 2


async def test_heartbeat_with_empty_or_no_data_on_first_contact(api: ApiServer) -> None:
    assert await call(api, "heartbeat", harvester_id="first_empty", data={}) == OK
    assert await call(api, "heartbeat", harvester_id="first_none") == OK
    assert (await instance(api, "first_none")) is not None


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"data": []}, "Type error: 'data' must be of type dict, got list."),
        ({"data": "x"}, "Type error: 'data' must be of type dict, got str."),
        ({"harvester_id": "h" * 51}, "Value error: harvester_id must be at most 50 characters"),
        ({"harvester_id": ""}, "Type error: harvester_id must be a non-empty string"),
        (
            {"data": {"startTime": "2026-13-01 00:00:00"}},
            "Value error: data['startTime'] must be a time as 'datetime/YYYY-MM-DD HH:MM:SS.ffffff', "
            "got '2026-13-01 00:00:00'",
        ),
        ({"data": {"sw_version": ["1"]}}, "Type error: data['sw_version'] must be a string, got list"),
        ({"data": {"commands": "x"}}, "Type error: data['commands'] must be a list"),
        (
            {"data": {"commands": [{"command": "A", "computingSite": "B"}]}},
            "Type error: data['commands'][0]['resourceType'] must be a non-empty string",
        ),
        ({"data": {"big": "x" * 70_000}}, "Value error: data is larger than 65,536 bytes as JSON"),
    ],
)
async def test_heartbeat_refusals(api: ApiServer, params: dict, message: str) -> None:
    assert await call(api, "heartbeat", **{"harvester_id": HID, **params}) == failed(message)
    assert await instance(api, params.get("harvester_id", HID)) is None


async def test_secure_calls_only(api: ApiServer) -> None:
    for name, method in [
        ("heartbeat", "POST"),
        ("update_workers", "POST"),
        ("update_service_metrics", "POST"),
        ("add_dialogs", "POST"),
        ("report_worker_statistics", "POST"),
        ("get_worker_statistics", "GET"),
        ("get_current_worker_id", "GET"),
    ]:
        assert await call(api, name, method=method, as_user=None, harvester_id=HID) == SECURE_REQUIRED
        assert await call(api, name, method=method, https=False, harvester_id=HID) == SECURE_REQUIRED
    assert await instance(api) is None


async def test_a_harvester_id_belongs_to_its_first_user(api: ApiServer) -> None:
    alice = {"as_user": "Alice Smith", "role": None}
    bob = {"as_user": "Bob Jones", "role": None}
    assert await call(api, "heartbeat", harvester_id=HID, data={"description": "mine"}, **alice) == OK
    refused = failed(NOT_OWNER.format(HID))
    assert await call(api, "heartbeat", harvester_id=HID, data={"description": "theirs"}, **bob) == refused
    assert await update(api, worker(1), **bob) == refused
    assert await call(api, "update_service_metrics", harvester_id=HID, metrics=[], **bob) == refused
    assert await call(api, "add_dialogs", harvester_id=HID, dialogs=[], **bob) == refused
    stats = {"harvester_id": HID, "panda_queue": "TEST_PQ", "statistics": "{}"}
    assert await call(api, "report_worker_statistics", **stats, **bob) == refused
    assert await call(api, "get_current_worker_id", method="GET", harvester_id=HID, **bob) == refused
    # The owner and a production caller may; the owner stays the first user.
    assert (await update(api, worker(1), **alice))["success"] is True
    assert await call(api, "heartbeat", harvester_id=HID, data={"description": "robot"}) == OK
    stored = await instance(api)
    assert stored is not None
    assert (stored["owner"], stored["description"]) == ("Alice Smith", "robot")
    # Any write claims a new id, not only a heartbeat.
    assert (await update(api, worker(1), harvester_id="bobs", **bob))["success"] is True
    assert await update(api, worker(1), harvester_id="bobs", **alice) == failed(NOT_OWNER.format("bobs"))


# --- update_workers -----------------------------------------------------------------------------


async def test_update_workers_stores_each_worker(api: ApiServer) -> None:
    fixed(api)
    first = worker(1, diagMessage="d" * 600, unknownKey="ignored", batchID=12345)
    assert await update(api, first, worker(2, nodeID="wn1")) == {
        "success": True,
        "message": "",
        "data": [True, True],
    }
    stored = await stored_worker(api, 1)
    assert stored is not None
    expected = {
        "harvesterID": HID,
        "workerID": 1,
        "batchID": "12345",
        "queueName": "TEST_PQ",
        "status": "submitted",
        "computingSite": "TEST_PQ",
        "nCore": 8,
        "nodeID": None,
        "submitTime": datetime(2026, 11, 30, 11, 59, 0, 250000, tzinfo=UTC),
        "startTime": None,
        "endTime": None,
        "stdOut": "https://logs/out",
        "stdErr": "https://logs/err",
        "batchLog": "https://logs/log",
        "jdl": "https://logs/jdl",
        "resourceType": "MCORE",
        "nativeExitCode": None,
        "nativeStatus": None,
        "diagMessage": "d" * 500,
        "nJobs": 1,
        "computingElement": "ce01.example.org",
        "submissionHost": "sub01",
        "harvesterHost": "harv01",
        "errorCode": 0,
        "jobType": "managed",
        "minRamCount": 16000,
        "pilotStatus": None,
        "pilotStartTime": None,
        "pilotEndTime": None,
        "lastUpdate": T0,
    }
    assert stored == expected
    # An update sets what it names; keys it leaves out keep their value.
    fixed(api, T0 + timedelta(minutes=1))
    running = {
        "workerID": 1,
        "status": "running",
        "startTime": "datetime/2026-11-30 12:00:30",
        "nodeID": "wn7",
    }
    assert (await update(api, running))["data"] == [True]
    stored = await stored_worker(api, 1)
    assert stored == {
        **expected,
        "status": "running",
        "startTime": datetime(2026, 11, 30, 12, 0, 30, tzinfo=UTC),
        "nodeID": "wn7",
        "lastUpdate": T0 + timedelta(minutes=1),
    }
    assert (await stored_worker(api, 2) or {})["nodeID"] == "wn1"


@pytest.mark.parametrize(
    ("workers", "message"),
    [
        ([worker(1), "x"], "Type error: workers[1] must be an object"),
        ([{"status": "running"}], "Value error: workers[0] has no workerID"),
        ([worker("1")], "Type error: workers[0]['workerID'] must be an integer, got str"),
        ([worker(True)], "Type error: workers[0]['workerID'] must be an integer, got bool"),
        ([worker(2**63)], "Value error: workers[0]['workerID'] is out of range"),
        ([worker(1, nCore="8")], "Type error: workers[0]['nCore'] must be an integer, got str"),
        ([worker(1, nCore=2**31)], "Value error: workers[0]['nCore'] is out of range"),
        ([worker(1, jdl={"a": 1})], "Type error: workers[0]['jdl'] must be a string, got dict"),
        (
            [worker(1, endTime="datetime/yesterday")],
            "Value error: workers[0]['endTime'] must be a time as 'datetime/YYYY-MM-DD HH:MM:SS.ffffff', "
            "got 'datetime/yesterday'",
        ),
        (
            [worker(1, status="dancing")],
            "Value error: workers[0]['status'] must be one of cancelled, failed, finished, idle, missed, "
            "pending, ready, running, submitted, to_submit, got 'dancing'",
        ),
        ([worker(1, pandaid_list=5)], "Type error: workers[0]['pandaid_list'] must be a list of PandaIDs"),
        (
            [worker(1, pandaid_list=["5"])],
            "Type error: workers[0]['pandaid_list'] must be a list of PandaIDs",
        ),
        (
            [worker(1, pandaid_list=list(range(1001)))],
            "Value error: workers[0]['pandaid_list'] holds more than 1,000 jobs",
        ),
        ([worker(1, syncLevel="1")], "Type error: workers[0]['syncLevel'] must be an integer, got str"),
        ([worker(i) for i in range(1001)], "Value error: workers holds more than 1,000 workers"),
        (
            [worker(i, pandaid_list=list(range(1000))) for i in range(21)],
            "Value error: the pandaid_list entries of one call exceed 20,000",
        ),
    ],
)
async def test_update_workers_refuses_the_whole_call(api: ApiServer, workers: list, message: str) -> None:
    assert await update(api, *workers) == failed(message)
    async with api.state.db.transaction(write=False) as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(harvester_workers))).scalar() == 0
    assert await instance(api) is None


async def test_update_workers_parameter_types(api: ApiServer) -> None:
    body = await call(api, "update_workers", harvester_id=HID, workers={"workerID": 1})
    assert body == failed("Type error: 'workers' must be of type list, got dict.")
    assert await call(api, "update_workers", harvester_id=HID) == failed(
        "Argument error: missing a required argument: 'workers'"
    )
    assert await call(api, "update_workers", method="GET", harvester_id=HID) == failed(
        "expecting POST, received GET"
    )


async def test_a_final_status_is_kept_for_three_hours(api: ApiServer) -> None:
    clock = fixed(api)
    await update(api, worker(1, status="running"))
    await update(api, worker(1, status="failed", diagMessage="killed by batch"))
    clock.set(T0 + timedelta(hours=2, minutes=59))
    assert (await update(api, worker(1, status="running", diagMessage="late")))["data"] == [True]
    stored = await stored_worker(api, 1)
    assert stored is not None
    # The status stays, the rest of the report is taken, and the row counts as updated now.
    assert (stored["status"], stored["diagMessage"]) == ("failed", "late")
    clock.set(T0 + timedelta(hours=5, minutes=58))
    await update(api, worker(1, status="finished"))
    assert (await stored_worker(api, 1) or {})["status"] == "failed"
    # Three hours after the last update the final status may change.
    clock.set(T0 + timedelta(hours=9))
    await update(api, worker(1, status="finished"))
    assert (await stored_worker(api, 1) or {})["status"] == "finished"


async def test_a_running_worker_does_not_go_back_to_submitted(api: ApiServer) -> None:
    fixed(api)
    await update(api, worker(1, status="running"), worker(2, status="idle"), worker(3, status="submitted"))
    await update(
        api, worker(1, status="submitted"), worker(2, status="to_submit"), worker(3, status="running")
    )
    statuses = [(await stored_worker(api, worker_id) or {})["status"] for worker_id in (1, 2, 3)]
    assert statuses == ["running", "idle", "running"]


async def test_pandaid_list_maintains_the_worker_job_relation(api: ApiServer) -> None:
    clock = fixed(api)
    await update(api, worker(1, pandaid_list=[11, 12, 12]), worker(2, pandaid_list=[21]))
    assert await relations(api, 1) == {11: T0, 12: T0}
    clock.set(T0 + timedelta(minutes=10))
    await update(api, worker(1, pandaid_list=[12, 13]))
    assert await relations(api, 1) == {12: T0 + timedelta(minutes=10), 13: T0 + timedelta(minutes=10)}
    # No pandaid_list: the relation stays as it is; an empty one clears it.
    await update(api, {"workerID": 2, "status": "running"})
    assert await relations(api, 2) == {21: T0}
    await update(api, worker(2, pandaid_list=[]))
    assert await relations(api, 2) == {}


async def running_in_worker(world, worker_id: int = 1, user: str = OWNER) -> tuple[ApiServer, Any, int, int]:
    """Two jobs of a task; the first dispatched to a Harvester worker and reported running."""
    api, (first, second) = await two_jobs(world, user=user)
    _, runner = world
    assert taken(await take(api, harvester_id=HID, worker_id=worker_id)) == [first]
    assert (await pilot_post(api, "update_job", job_id=first, job_status="running"))["success"] is True
    return api, runner, first, second


async def test_a_failed_worker_fails_its_running_job_through_the_finaliser(world) -> None:
    api, runner, first, _ = await running_in_worker(world)
    ended = worker(1, status="failed", syncLevel=1, diagMessage="node crashed", pandaid_list=[first])
    assert (await update(api, ended))["data"] == [True]
    job = await row(api, first)
    assert (job["jobStatus"], job["reported_status"], job["taskBufferErrorCode"]) == (
        "holding",
        "failed",
        300,
    )
    assert job["commandToPilot"] == "tobekilled"
    await runner.drain()
    job = await row(api, first)
    assert (job["jobStatus"], job["taskBufferErrorCode"]) == ("failed", 300)
    assert job["taskBufferErrorDiag"] == "The worker was failed while the job was running : node crashed"
    # The inputs went back to the task, which made a new job (attempt 2) for them.
    retry = taken(await take(api, n_jobs=5))
    assert len(retry) == 2 and first not in retry
    assert max([(await row(api, panda_id))["attemptNr"] for panda_id in retry]) == 2


@pytest.mark.parametrize(
    ("values", "effect"),
    [
        ({"status": "failed", "syncLevel": 0}, False),
        ({"status": "running", "syncLevel": 1}, False),
        ({"status": "cancelled", "syncLevel": 1}, True),
        ({"status": "missed", "syncLevel": 1}, True),
        ({"status": "finished", "syncLevel": 1}, True),
    ],
)
async def test_only_final_workers_with_sync_level_one_end_their_jobs(
    world, values: dict, effect: bool
) -> None:
    api, _, first, _ = await running_in_worker(world)
    await update(api, worker(1, pandaid_list=[first], **values))
    job = await row(api, first)
    assert job["jobStatus"] == ("holding" if effect else "running")
    if effect:
        assert job["taskBufferErrorDiag"] == f"The worker was {values['status']} while the job was running : "


async def test_worker_error_code_goes_to_the_jobs_supervisor_error(world) -> None:
    api, _, first, second = await running_in_worker(world)
    # The second job ended and was archived; the worker's error reaches it there too.
    async with api.state.db.transaction() as conn:
        await archive_db.copy_to_archive(conn, [second])
        await archive_db.delete_active(conn, [second])
    reported = worker(
        1, status="running", errorCode=1234, diagMessage="x" * 300, pandaid_list=[first, second]
    )
    await update(api, reported)
    job = await row(api, first)
    assert (job["jobStatus"], job["supErrorCode"], job["supErrorDiag"]) == ("running", 1234, "x" * 250)
    async with api.state.db.transaction(write=False) as conn:
        archived = (await archive_db.get_many_incl_archive(conn, [second]))[second]
    assert (archived["supErrorCode"], archived["supErrorDiag"]) == (1234, "x" * 250)


async def test_job_effects_only_for_jobs_the_caller_may_kill(world) -> None:
    api, _, first, _ = await running_in_worker(world)
    ended = worker(1, status="failed", syncLevel=1, errorCode=7, pandaid_list=[first])
    # Another user's own instance: the worker is stored, the other user's job untouched.
    assert (await update(api, ended, harvester_id="private", as_user="Other Person", role=None))["success"]
    job = await row(api, first)
    assert (job["jobStatus"], job["supErrorCode"]) == ("running", None)
    # The job's owner, without production role, may.
    assert (await update(api, ended, harvester_id="mine", as_user=OWNER, role=None))["success"]
    job = await row(api, first)
    assert (job["jobStatus"], job["supErrorCode"], job["taskBufferErrorCode"]) == ("holding", 7, 300)


async def test_a_final_status_kept_decides_the_job_effect(world) -> None:
    api, _, first, _ = await running_in_worker(world)
    fixed(api)
    await update(api, worker(1, status="cancelled", pandaid_list=[first]))
    assert (await row(api, first))["jobStatus"] == "running"
    await update(api, worker(1, status="running", syncLevel=1, pandaid_list=[first]))
    job = await row(api, first)
    assert job["taskBufferErrorDiag"] == "The worker was cancelled while the job was running : "


# --- service metrics and dialogs ----------------------------------------------------------------


async def test_update_service_metrics(api: ApiServer) -> None:
    metrics = [
        ["2026-11-30 12:00:00.123456", "harv01", '{"cpu_pc": 12.5, "memory_pc": 40}'],
        ["2026-11-30 12:10:00.000000", "harv01", {"cert_lifetime": {"a": 100}}],
    ]
    body = await call(api, "update_service_metrics", harvester_id=HID, metrics=metrics)
    assert body == {"success": True, "message": "", "data": [True]}
    async with api.state.db.transaction(write=False) as conn:
        rows = await harvester_db.metrics_of(conn, HID)
    assert [(r["creation_time"], r["harvester_host"], r["metrics"]) for r in rows] == [
        (datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC), "harv01", '{"cpu_pc": 12.5, "memory_pc": 40}'),
        (datetime(2026, 11, 30, 12, 10, tzinfo=UTC), "harv01", '{"cert_lifetime":{"a":100}}'),
    ]


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ([["2026-11-30 12:00:00", "h"]], "Type error: metrics[0] must be [creation_time, host, metrics]"),
        (
            [["noon", "h", "{}"]],
            "Value error: metrics[0][0] must be a time as 'datetime/YYYY-MM-DD HH:MM:SS.ffffff', got 'noon'",
        ),
        ([[None, "h", "{}"]], "Value error: metrics[0][0] must be the creation time"),
        (
            [["2026-11-30 12:00:00", "h" * 129, "{}"]],
            "Value error: metrics[0][1] must be at most 128 characters",
        ),
        ([["2026-11-30 12:00:00", "h", 5]], "Type error: metrics[0][2] must be the metrics as JSON text"),
        (
            [["2026-11-30 12:00:00", "h", "x" * 70_000]],
            "Value error: metrics[0][2] is longer than 65,536 characters",
        ),
        ([["2026-11-30 12:00:00", "h", "{}"]] * 1001, "Value error: metrics holds more than 1,000 entries"),
    ],
)
async def test_update_service_metrics_refusals(api: ApiServer, metrics: list, message: str) -> None:
    assert await call(api, "update_service_metrics", harvester_id=HID, metrics=metrics) == failed(message)


async def test_add_dialogs_replaces_by_diag_id(api: ApiServer) -> None:
    dialog = {
        "diagID": 5,
        "moduleName": "submitter",
        "identifier": "w1",
        "creationTime": "2026-11-30 12:00:00.500000",
        "messageLevel": "ERROR",
        "diagMessage": "m" * 600,
    }
    assert await call(api, "add_dialogs", harvester_id=HID, dialogs=[dialog, {**dialog, "diagID": 6}]) == OK
    replaced = {**dialog, "diagMessage": "again", "messageLevel": "WARNING", "creationTime": None}
    assert await call(api, "add_dialogs", harvester_id=HID, dialogs=[replaced]) == OK
    async with api.state.db.transaction(write=False) as conn:
        rows = await harvester_db.dialogs_of(conn, HID)
    assert rows == [
        {**replaced, "harvester_id": HID},
        {
            **dialog,
            "diagID": 6,
            "harvester_id": HID,
            "creationTime": datetime(2026, 11, 30, 12, 0, 0, 500000, tzinfo=UTC),
            "diagMessage": "m" * 500,
        },
    ]


@pytest.mark.parametrize(
    ("dialogs", "message"),
    [
        ([5], "Type error: dialogs[0] must be an object"),
        ([{"diagID": "5"}], "Type error: dialogs[0]['diagID'] must be a 64-bit integer"),
        (
            [{"diagID": 1, "messageLevel": []}],
            "Type error: dialogs[0]['messageLevel'] must be a string, got list",
        ),
        (
            [{"diagID": 1, "creationTime": "2026-11-30T12:00:00"}],
            "Value error: dialogs[0]['creationTime'] must be a time as "
            "'datetime/YYYY-MM-DD HH:MM:SS.ffffff', got '2026-11-30T12:00:00'",
        ),
        ([{"diagID": i} for i in range(1001)], "Value error: dialogs holds more than 1,000 entries"),
    ],
)
async def test_add_dialogs_refusals(api: ApiServer, dialogs: list, message: str) -> None:
    assert await call(api, "add_dialogs", harvester_id=HID, dialogs=dialogs) == failed(message)


# --- worker statistics --------------------------------------------------------------------------


async def test_worker_statistics_round_trip(api: ApiServer) -> None:
    clock = fixed(api)
    statistics = (
        '{"managed": {"SCORE": {"running": 5, "submitted": 2}, "Undefined": {"running": 1}},'
        ' "user": {"MCORE": {"idle": 0}}}'
    )
    report = {"harvester_id": HID, "panda_queue": "TEST_PQ", "statistics": statistics}
    assert await call(api, "report_worker_statistics", **report) == {
        "success": True,
        "message": "OK",
        "data": None,
    }
    other = {
        "harvester_id": "other_h",
        "panda_queue": "TEST_PQ",
        "statistics": '{"managed": {"SCORE": {"running": 1}}}',
    }
    assert (await call(api, "report_worker_statistics", **other))["success"] is True
    expected = {
        "TEST_PQ": {
            HID: {"managed": {"SCORE": {"running": 5, "submitted": 2}}, "user": {"MCORE": {"idle": 0}}},
            "other_h": {"managed": {"SCORE": {"running": 1}}},
        }
    }
    got = await call(api, "get_worker_statistics", method="GET", as_user="Any One", role=None)
    assert got == {"success": True, "message": "", "data": expected}
    # A new report replaces all rows of (instance, queue).
    clock.set(T0 + timedelta(hours=1))
    report["statistics"] = '{"managed": {"SCORE": {"finished": 3}}}'
    assert (await call(api, "report_worker_statistics", **report))["success"] is True
    expected["TEST_PQ"][HID] = {"managed": {"SCORE": {"finished": 3}}}
    assert (await call(api, "get_worker_statistics", method="GET"))["data"] == expected
    # Only the reports of the last four hours count.
    clock.set(T0 + timedelta(hours=4, minutes=30))
    assert (await call(api, "get_worker_statistics", method="GET"))["data"] == {
        "TEST_PQ": {HID: {"managed": {"SCORE": {"finished": 3}}}}
    }
    clock.set(T0 + timedelta(hours=5, minutes=1))
    assert (await call(api, "get_worker_statistics", method="GET"))["data"] == {}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"statistics": "{not json"}, "Value error: statistics is not valid JSON: "),
        (
            {"statistics": "[1]"},
            "Type error: statistics must be JSON {jobType: {resourceType: {status: number of workers}}}",
        ),
        ({"statistics": '{"managed": {"SCORE": {"running": -1}}}'}, "Type error: statistics must be JSON"),
        ({"statistics": '{"managed": {"SCORE": {"running": true}}}'}, "Type error: statistics must be JSON"),
        ({"statistics": '{"managed": {"SCORE": 5}}'}, "Type error: statistics must be JSON"),
        (
            {"statistics": '{"managed": {"' + "R" * 57 + '": {"running": 1}}}'},
            "Value error: statistics resourceType must be at most 56 characters",
        ),
        ({"statistics": {"managed": {}}}, "Type error: 'statistics' must be of type str, got dict."),
        ({"panda_queue": "q" * 129}, "Value error: panda_queue must be at most 128 characters"),
    ],
)
async def test_report_worker_statistics_refusals(api: ApiServer, params: dict, message: str) -> None:
    report = {"harvester_id": HID, "panda_queue": "TEST_PQ", "statistics": "{}", **params}
    body = await call(api, "report_worker_statistics", **report)
    assert body["success"] is False and body["data"] is None
    assert body["message"].startswith(message)


# --- get_current_worker_id ----------------------------------------------------------------------


async def test_get_current_worker_id(api: ApiServer) -> None:
    ask = {"method": "GET", "harvester_id": HID}
    assert await call(api, "get_current_worker_id", **ask) == {"success": True, "message": "", "data": 0}
    await update(api, worker(17), worker(3))
    await update(api, worker(5), harvester_id="other_h")
    assert await call(api, "get_current_worker_id", **ask) == {"success": True, "message": "", "data": 17}
    body = await call(api, "get_current_worker_id", method="POST", harvester_id=HID)
    assert body == failed("expecting GET, received POST")
