"""The pilot/* endpoints of api-v1.md §2.3 through the API, on both databases: every acquire_jobs
rule, update_job's field mapping, the worker status and the worker-node catalog."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from bamboo.api.registry import Access
from bamboo.api.v1 import registry
from bamboo.db import jobs as jobs_db
from bamboo.db import workers as workers_db
from bamboo.db.schema import harvester_workers, jobs, worker_node_gpus, worker_node_queues, worker_nodes
from bamboo.logic import dispatch, queues
from bamboo.logic import pilot as pilot_logic
from tests.api.conftest import ApiServer
from tests.api.test_task_flow import envelope, submit, world
from tests.conftest import FixedClock
from tests.tasks import NO_INPUT_TASK

__all__ = ["world"]

OWNER = "test user"
ROBOT = ("Harvester Robot", "production")
NO_JOBS = {"success": False, "message": "No jobs in PanDA", "data": None}
NO_ROLE = {
    "success": False,
    "message": "no production/pilot role in VOMS FQANs or non pilot owner",
    "data": None,
}
SECURE_REQUIRED = {"success": False, "message": "SSL secure connection is required", "data": None}
PRODUCTION_REQUIRED = {"success": False, "message": "production or pilot role required", "data": None}
T0 = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


async def post(
    api: ApiServer, name: str, as_user: str | None = ROBOT[0], role: str | None = ROBOT[1], **params
):
    headers = api.token_headers(as_user, role=role) if as_user else None
    async with api.client(headers=headers) as client:
        return envelope(await client.post(f"/api/v1/pilot/{name}", json=params))


async def take(api: ApiServer, **params) -> dict:
    """acquire_jobs at TEST_PQ as the production robot (user jobs unless told otherwise)."""
    return await post(api, "acquire_jobs", **{"site_name": "TEST_PQ", "prod_source_label": "user", **params})


def taken(body: dict) -> list[int]:
    if body == NO_JOBS:
        return []
    assert body["success"] is True and body["data"]["StatusCode"] == 0, body
    return [job["PandaID"] for job in body["data"]["jobs"]]


async def two_jobs(world, user: str = OWNER, **task: Any) -> tuple[ApiServer, list[int]]:
    api, runner = world
    task_id = await submit(api, {**NO_INPUT_TASK, **task}, user=user)
    await runner.drain()
    async with api.state.db.transaction(write=False) as conn:
        ids = await jobs_db.ids_of_task(conn, task_id)
    assert len(ids) == 2
    return api, ids


async def set_job(api: ApiServer, panda_id: int, **values: Any) -> None:
    async with api.state.db.transaction() as conn:
        await jobs_db.update(conn, panda_id, **values)


async def row(api: ApiServer, panda_id: int) -> dict:
    async with api.state.db.transaction(write=False) as conn:
        return (await jobs_db.get_many(conn, [panda_id]))[panda_id]


# --- acquire_jobs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value", "request_fits", "request_too_small"),
    [
        ("minRamCount", 4000, {"memory": 4000}, {"memory": 2000}),
        ("maxDiskCount", 5000, {"disk_space": 6000}, {"disk_space": 100}),
        ("maxWalltime", 7200, {"remaining_time": "7200"}, {"remaining_time": 3600}),
    ],
)
async def test_resource_limits_filter_and_zero_or_negative_means_any(
    world, column: str, value: int, request_fits: dict, request_too_small: dict
) -> None:
    api, (big, small) = await two_jobs(world)
    await set_job(api, big, **{column: value})
    assert taken(await take(api, **request_too_small, n_jobs=5)) == [small]
    (name,) = request_fits
    assert taken(await take(api, **{name: -1})) == [big]  # negative: no constraint
    await set_job(api, big, jobStatus="activated")
    assert taken(await take(api, **request_fits)) == [big]


async def test_resource_type_task_and_background_filters(world) -> None:
    api, (first, second) = await two_jobs(world)
    task_id = (await row(api, first))["jediTaskID"]
    await set_job(api, first, resource_type="MCORE")
    assert taken(await take(api, resource_type="MCORE", n_jobs=5)) == [first]
    assert taken(await take(api, task_id=task_id + 1)) == []
    assert taken(await take(api, background=True)) == []
    await set_job(api, second, jobExecutionID=1)
    assert taken(await take(api, background=True, task_id=task_id)) == [second]


async def test_each_job_is_marked_sent_to_the_node(world) -> None:
    api, (first, _) = await two_jobs(world)
    api.state.clock = FixedClock(T0)
    body = await take(api, node="wn07.example.org", computing_element="ce01", scheduler_id="sched")
    assert taken(body) == [first]
    job = await row(api, first)
    assert (job["jobStatus"], job["modificationHost"], job["computingElement"]) == (
        "sent",
        "wn07.example.org",
        "ce01",
    )
    assert (job["startTime"], job["stateChangeTime"], job["schedulerID"]) == (T0, T0, "sched")


async def test_a_job_in_debug_mode_is_dispatched_with_debug(world) -> None:
    api, (first, second) = await two_jobs(world)
    async with api.client(headers=api.token_headers(*ROBOT)) as client:
        request = {"job_id": first, "mode": True}
        answer = envelope(await client.post("/api/v1/job/set_debug_mode", json=request))
    assert answer == {"success": True, "message": "Succeeded", "data": None}
    dispatched = {job["PandaID"]: job for job in (await take(api, n_jobs=2))["data"]["jobs"]}
    assert dispatched[first]["debug"] == "True"
    assert "debug" not in dispatched[second]


@pytest.mark.parametrize(
    ("request_label", "computing_element", "given"),
    [
        ("user", None, {"user", "panda", "install"}),
        (None, None, {"managed", "test", "prod_test", "install"}),
        ("managed", None, {"managed", "test", "prod_test", "install"}),
        ("unified", None, {"managed", "test", "prod_test", "install", "user", "panda"}),
        ("test", "ce01", {"prod_test", "install", "test", "gangarobot"}),
        ("test", None, {"test"}),
        ("ptest", None, {"ptest"}),
    ],
)
async def test_label_classes(
    world, request_label: str | None, computing_element: str | None, given: set
) -> None:
    api, runner = world
    # Ten jobs: one per label, and a HammerCloud (gangarobot) job of a label no request class takes.
    labels = ["user", "panda", "install", "managed", "test", "prod_test", "ptest", "rc_test", "rc_alrb"]
    ids: list[int] = []
    for index in range(5):
        task_id = await submit(api, {**NO_INPUT_TASK, "taskName": f"user.testuser.labels{index}/"})
        await runner.drain()
        async with api.state.db.transaction(write=False) as conn:
            ids.extend(await jobs_db.ids_of_task(conn, task_id))
    by_label = dict(zip(labels, ids, strict=False))
    for label, panda_id in by_label.items():
        await set_job(api, panda_id, prodSourceLabel=label, processingType="run")
    by_label["gangarobot"] = ids[-1]
    await set_job(api, ids[-1], prodSourceLabel="rc_test2", processingType="gangarobot")
    params: dict[str, Any] = {"n_jobs": 50, "prod_source_label": request_label}
    if computing_element:
        params["computing_element"] = computing_element
    got = set(taken(await take(api, **params)))
    assert got == {by_label[label] for label in given}


async def test_a_test_queue_serves_test_jobs_to_user_managed_and_unified_requests(world) -> None:
    api, (user_job, test_job) = await two_jobs(world)
    await set_job(api, test_job, prodSourceLabel="test")
    async with api.state.db.transaction() as conn:
        await queues.update(conn, api.state.clock, "TEST_PQ", {"status": "test"})
    for label in ("user", "managed", "unified"):
        await set_job(api, test_job, jobStatus="activated")
        assert taken(await take(api, prod_source_label=label, n_jobs=5)) == [test_job]
    assert (await row(api, user_job))["jobStatus"] == "activated"


@pytest.mark.parametrize("status", ["online", "brokeroff", "paused"])
async def test_other_queue_statuses_still_serve_their_jobs(world, status: str) -> None:
    api, (first, second) = await two_jobs(world)
    async with api.state.db.transaction() as conn:
        await queues.update(conn, api.state.clock, "TEST_PQ", {"status": status})
    assert taken(await take(api, n_jobs=5)) == [first, second]


async def test_users_get_only_their_own_jobs(world) -> None:
    api, mine = await two_jobs(world, user=OWNER)
    _, theirs = await two_jobs(world, user="Other Person", taskName="user.other.t/")
    # Without production role prod_user_id is the caller, whatever is asked.
    body = await take(api, n_jobs=10, prod_user_id="Other Person", as_user=OWNER, role=None)
    assert taken(body) == mine
    # Production may pick one user's jobs by DN.
    body = await take(api, n_jobs=10, prod_user_id="/DC=org/DC=example/CN=Other Person")
    assert taken(body) == theirs


async def test_n_sent_counts_production_jobs_already_sent(world) -> None:
    api, (first, second) = await two_jobs(world)
    for panda_id in (first, second):
        await set_job(api, panda_id, prodSourceLabel="managed")
    first_body = await take(api, prod_source_label="managed")
    second_body = await take(api, prod_source_label=None)
    assert [job["nSent"] for job in first_body["data"]["jobs"]] == [0]
    assert [job["nSent"] for job in second_body["data"]["jobs"]] == [1]
    async with api.state.db.transaction(write=False) as conn:
        assert await jobs_db.count_sent(conn, "TEST_PQ", dispatch.N_SENT_LABELS, 5) == 2
        assert await jobs_db.count_sent(conn, "TEST_PQ", dispatch.N_SENT_LABELS, 1) == 1  # the cap
    # Analysis requests are not told.
    _, (user_job, _) = await two_jobs(world, taskName="user.testuser.n_sent/")
    assert [job["nSent"] for job in (await take(api))["data"]["jobs"]] == [0]
    assert (await row(api, user_job))["jobStatus"] == "sent"


async def test_worker_job_relation(world) -> None:
    api, (first, second) = await two_jobs(world)
    body = await take(api, harvester_id="CERN_central_A", worker_id=4711, n_jobs=1)
    assert taken(body) == [first]
    # harvester_id defaults to scheduler_id.
    body = await take(api, scheduler_id="harvester-CERN_central_B", worker_id=12)
    assert taken(body) == [second]
    async with api.state.db.transaction(write=False) as conn:
        assert await workers_db.jobs_of_worker(conn, "CERN_central_A", 4711) == [first]
        assert await workers_db.jobs_of_worker(conn, "harvester-CERN_central_B", 12) == [second]
        # The relation is all that acquire records: worker rows are Harvester's to report.
        assert (await conn.execute(sa.select(sa.func.count()).select_from(harvester_workers))).scalar() == 0
    too_long = await take(api, harvester_id="h" * 51, worker_id=1)
    assert too_long == {
        "success": False,
        "message": "harvester_id must be at most 50 characters",
        "data": None,
    }


async def test_acquire_answers_for_nothing_wrong_callers_and_bad_parameters(world) -> None:
    api, _ = world
    assert await take(api) == NO_JOBS
    assert await take(api, site_name="NO_SUCH_QUEUE") == NO_JOBS
    assert await take(api, prod_source_label="managed", as_user=OWNER, role=None) == NO_ROLE
    assert await take(api, as_user=None, role=None) == SECURE_REQUIRED
    bad_proxy_key = await take(api, get_proxy_key=True)
    assert bad_proxy_key == {
        "success": False,
        "message": "Type error: 'get_proxy_key' must be of type str | NoneType, got bool.",
        "data": None,
    }
    bad_count = await take(api, n_jobs="many")
    assert bad_count["success"] is False and "'n_jobs'" in bad_count["message"]
    missing = await post(api, "acquire_jobs", prod_source_label="user")
    assert missing == {
        "success": False,
        "message": "Argument error: missing a required argument: 'site_name'",
        "data": None,
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("3600", 3600), (7200.9, 7200), ("x", None), (True, None), ("nan", None), (-5, -5)],
)
def test_remaining_time_as_sent(value: Any, expected: int | None) -> None:
    assert dispatch.seconds(value) == expected


# --- update_job -----------------------------------------------------------------------------------

FULL_REPORT: dict[str, Any] = {
    "job_status": "running",
    "job_sub_status": "s" * 100,
    "start_time": "2026-11-30 11:00:00",
    "end_time": "2026-11-30 11:30:00",
    "pilot_timing": "1|2|3|4|5",
    "site_name": "TEST_PQ",
    "node": "n" * 200,
    "scheduler_id": "harvester-x",
    "pilot_id": "p" * 300,
    "batch_id": "b" * 100,
    "trans_exit_code": 0,
    "pilot_error_code": -1150,
    "pilot_error_diag": "d" * 600,
    "exe_error_code": 65,
    "exe_error_diag": "e" * 600,
    "n_events": 250,
    "n_input_files": 3,
    "cpu_consumption_time": 3000,
    "cpu_consumption_unit": "s",
    "cpu_conversion_factor": 1.25,
    "core_count": 8,
    "mean_core_count": 6,
    "max_rss": 2048,
    "max_vmem": 4096.7,
    "max_swap": 0,
    "max_pss": 1024,
    "avg_rss": 1500.6,
    "avg_vmem": 3000,
    "avg_swap": 1,
    "avg_pss": 900,
    "tot_rchar": 10 * 1024,
    "tot_wchar": 2048.0,
    "tot_rbytes": 10**18,
    "tot_wbytes": 1023,
    "rate_rchar": 4096,
    "rate_wchar": 1024,
    "rate_rbytes": 512,
    "rate_wbytes": 3072,
    "cpu_architecture_level": "x86-64-v3-and-much-more",
    "grid": "GRID",
    "source_site": "SRC",
    "destination_site": "DST",
    "job_metrics": "nEvents=250 leak=123.7 chi2=0.75 " + "x" * 600,
    "meta_data": '{"files": {"output": []}}',
    "pilot_log": "pilot started\npilot ended\x07",
    "stdout": "payload says hello",
}


async def test_update_job_stores_every_field_with_its_unit_and_length(world) -> None:
    api, (panda_id, _) = await two_jobs(world)
    assert taken(await take(api)) == [panda_id]
    answer = await post(api, "update_job", job_id=panda_id, **FULL_REPORT)
    assert answer == {"success": True, "message": "", "data": {"StatusCode": 0, "command": "NULL"}}
    job = await row(api, panda_id)
    expected = {
        "jobStatus": "running",
        "jobSubStatus": "s" * 80,
        "startTime": datetime(2026, 11, 30, 11, tzinfo=UTC),
        "endTime": datetime(2026, 11, 30, 11, 30, tzinfo=UTC),
        "pilotTiming": "1|2|3|4|5",
        "modificationHost": "n" * 128,
        "schedulerID": "harvester-x",
        "pilotID": "p" * 200,
        "batchID": "b" * 80,
        "transExitCode": "0",
        "pilotErrorCode": 1150,
        "pilotErrorDiag": "d" * 500,
        "exeErrorCode": 65,
        "exeErrorDiag": "e" * 500,
        "nEvents": 250,
        "nInputFiles": 3,
        "cpuConsumptionTime": 3000,
        "cpuConsumptionUnit": "s",
        "cpuConversion": 1.25,
        "actualCoreCount": 8,
        "meanCoreCount": 6,
        "maxRSS": 2048,
        "maxVMEM": 4096,
        "maxSWAP": 0,
        "maxPSS": 1024,
        "avgRSS": 1500,
        "avgVMEM": 3000,
        "avgSWAP": 1,
        "avgPSS": 900,
        "totRCHAR": 10,
        "totWCHAR": 2,
        "totRBYTES": 10**10 - 1,
        "totWBYTES": 0,
        "rateRCHAR": 4,
        "rateWCHAR": 1,
        "rateRBYTES": 0,
        "rateWBYTES": 3,
        "cpu_architecture_level": "x86-64-v3-and-much-m",
        "grid": "GRID",
        "sourceSite": "SRC",
        "destinationSite": "DST",
        "jobMetrics": FULL_REPORT["job_metrics"][:500],
        "memory_leak": 123,
        "memory_leak_x2": 0.75,
        "metadata": FULL_REPORT["meta_data"],
        "pilot_log": FULL_REPORT["pilot_log"],
        "stdout": FULL_REPORT["stdout"],
    }
    assert {column: job[column] for column in expected} == expected
    # The metadata is part of the job record; the pilot log and stdout come with the offline script.
    async with api.client(headers=api.token_headers(OWNER)) as client:
        (record,) = envelope(await client.post("/api/v1/job/get_description", json={"job_ids": [panda_id]}))[
            "data"
        ]
        script = await offline_script(client, panda_id)
    assert record["metadata"] == FULL_REPORT["meta_data"] and record["memory_leak"] == 123
    assert "# --- pilot log of the last attempt ---\n# pilot started\n# pilot ended\n" in script
    assert "# --- payload stdout of the last attempt ---\n# payload says hello\n" in script


async def offline_script(client, panda_id: int) -> str:
    """The offline script, which the endpoint answers as a bare JSON string."""
    response = await client.get("/api/v1/job/generate_offline_execution_script", params={"job_id": panda_id})
    return orjson.loads(response.content)


async def test_bulk_reports_store_the_same_columns(world) -> None:
    api, (first, second) = await two_jobs(world)
    assert taken(await take(api, n_jobs=2)) == [first, second]
    await post(api, "update_job", job_id=first, **FULL_REPORT)
    bulk = await post(api, "update_jobs_bulk", job_list=[{"job_id": second, **FULL_REPORT}], harvester_id="h")
    assert bulk == {
        "success": True,
        "message": "",
        "data": [{"success": True, "message": "", "data": {"StatusCode": 0, "command": "NULL"}}],
    }
    one, other = await row(api, first), await row(api, second)
    reported = [column for column, _ in pilot_logic.FIELD_MAP.values()] + ["memory_leak", "memory_leak_x2"]
    assert all(one[column] is not None for column in reported)
    assert {c: one[c] for c in reported} == {c: other[c] for c in reported}


async def test_pilot_log_and_stdout_keep_their_end(world) -> None:
    api, (panda_id, _) = await two_jobs(world)
    taken(await take(api))
    log = "a" * 10 + "b" * pilot_logic.MAX_PILOT_LOG_CHARS
    answer = await post(api, "update_job", job_id=panda_id, job_status="running", pilot_log=log, stdout=log)
    assert answer["data"] == {"StatusCode": 0, "command": "NULL"}
    job = await row(api, panda_id)
    assert job["pilot_log"] == job["stdout"] == "b" * pilot_logic.MAX_PILOT_LOG_CHARS
    async with api.client() as client:
        script = await offline_script(client, panda_id)
    assert "# --- pilot log of the last attempt (end only) ---" in script
    assert len(script) < 3 * 20_000 + 5_000


async def test_oversized_metadata_is_refused_and_nothing_stored(world) -> None:
    api, (panda_id, _) = await two_jobs(world)
    taken(await take(api))
    before = await row(api, panda_id)
    meta = '{"x": "' + "m" * pilot_logic.MAX_METADATA_CHARS + '"}'
    answer = await post(api, "update_job", job_id=panda_id, job_status="running", node="wn9", meta_data=meta)
    assert answer == {
        "success": True,
        "message": "Failed to add meta_data",
        "data": {"StatusCode": 30, "ErrorDiag": "Failed to add meta_data"},
    }
    assert await row(api, panda_id) == before


async def test_a_report_from_another_batch_job_is_told_to_stop(world) -> None:
    api, (first, second) = await two_jobs(world)
    taken(await take(api, n_jobs=2))
    first_report = {"job_id": first, "job_status": "running", "batch_id": "slurm.abc"}
    assert (await post(api, "update_job", **first_report))["data"]["command"] == "NULL"
    other = await post(
        api, "update_job", **{**first_report, "batch_id": "condor.xyz", "job_status": "holding"}
    )
    assert other["data"] == {"StatusCode": 0, "command": "tobekilled"}
    job = await row(api, first)
    assert (job["jobStatus"], job["batchID"], job["supErrorCode"]) == ("running", "slurm.abc", 1)
    assert job["supErrorDiag"] == "update from batch job condor.xyz while the job runs in slurm.abc"
    # Numeric batch IDs may change (a requeued batch job): not a conflict.
    numeric = {"job_id": second, "job_status": "running", "batch_id": "1234"}
    assert (await post(api, "update_job", **numeric))["data"]["command"] == "NULL"
    assert (await post(api, "update_job", **{**numeric, "batch_id": "1240"}))["data"]["command"] == "NULL"
    assert (await row(api, second))["batchID"] == "1240"
    # A job already final is told so, whoever asks, and keeps no trace of the stray report.
    await set_job(api, second, jobStatus="finished")
    late = await post(api, "update_job", **{**numeric, "batch_id": "slurm.other"})
    assert late["data"] == {"StatusCode": 0, "command": "alreadydone"}
    assert (await row(api, second))["supErrorCode"] is None


async def test_update_job_wrong_caller_and_bad_parameters(world) -> None:
    api, (panda_id, _) = await two_jobs(world)
    taken(await take(api))
    user = await post(api, "update_job", as_user=OWNER, role=None, job_id=panda_id, job_status="running")
    assert user == PRODUCTION_REQUIRED
    anonymous = await post(api, "update_job", as_user=None, role=None, job_id=panda_id, job_status="running")
    assert anonymous == SECURE_REQUIRED
    bad = await post(api, "update_job", job_id=panda_id, job_status="running", core_count="eight")
    assert bad == {
        "success": False,
        "message": "Type error: 'core_count' must be of type int | NoneType, got str.",
        "data": None,
    }
    unknown = await post(api, "update_job", job_id=987654321, job_status="running")
    assert unknown == {"success": True, "message": "", "data": {"StatusCode": 0, "command": "tobekilled"}}
    # A value that does not convert is skipped, as upstream: the rest of the report is stored.
    kept = await post(
        api, "update_job", job_id=panda_id, job_status="running", start_time="yesterday", node="wn5"
    )
    assert kept["data"] == {"StatusCode": 0, "command": "NULL"}
    assert (await row(api, panda_id))["modificationHost"] == "wn5"


# --- update_worker_status -------------------------------------------------------------------------


async def add_worker(api: ApiServer, harvester_id: str, worker_id: int) -> None:
    async with api.state.db.transaction() as conn:
        await conn.execute(
            sa.insert(harvester_workers).values(
                harvesterID=harvester_id, workerID=worker_id, status="running", lastUpdate=T0
            )
        )


async def test_update_worker_status(world) -> None:
    api, _ = world
    await add_worker(api, "CERN_central_A", 42)
    clock = FixedClock(T0 + timedelta(minutes=5))
    api.state.clock = clock
    ok = {"success": True, "message": "", "data": None}
    started = {"worker_id": 42, "harvester_id": "CERN_central_A", "status": "started", "node_id": "wn3"}
    assert await post(api, "update_worker_status", **started) == ok
    clock.set(T0 + timedelta(hours=2))
    assert await post(api, "update_worker_status", **{**started, "status": "finished", "node_id": None}) == ok
    async with api.state.db.transaction(write=False) as conn:
        worker = await workers_db.get(conn, "CERN_central_A", 42)
    assert worker is not None
    assert (worker["pilotStatus"], worker["nodeID"]) == ("finished", "wn3")
    assert (worker["pilotStartTime"], worker["pilotEndTime"]) == (
        T0 + timedelta(minutes=5),
        T0 + timedelta(hours=2),
    )
    assert (worker["status"], worker["lastUpdate"]) == ("running", T0)
    # An unknown worker is no error; form-style string ids work too (the parameters are untyped).
    assert (
        await post(api, "update_worker_status", worker_id="7", harvester_id="nobody", status="started") == ok
    )


async def test_update_worker_status_refusals(world) -> None:
    api, _ = world
    base = {"worker_id": 1, "harvester_id": "h", "status": "started"}
    assert await post(api, "update_worker_status", **{**base, "status": "running"}) == {
        "success": False,
        "message": "Invalid worker state. The worker state has to be in ('started', 'finished')",
        "data": None,
    }
    assert await post(api, "update_worker_status", **{**base, "worker_id": "w1"}) == {
        "success": False,
        "message": "Failed to update worker status: worker_id must be an integer",
        "data": None,
    }
    huge = await post(api, "update_worker_status", **{**base, "worker_id": str(2**64)})
    assert huge["message"] == "Failed to update worker status: worker_id must be a 64-bit integer"
    assert await post(api, "update_worker_status", as_user=OWNER, role=None, **base) == PRODUCTION_REQUIRED
    missing = await post(api, "update_worker_status", worker_id=1, status="started")
    assert missing["message"] == "Argument error: missing a required argument: 'harvester_id'"


# --- update_worker_node / update_worker_node_gpu --------------------------------------------------

NODE = {
    "site": "CERN",
    "host_name": "slot1_3@wn042.cern.ch",
    "cpu_model": "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz",
    "panda_queue": "TEST_PQ",
    "n_logical_cpus": 80,
    "n_sockets": 2,
    "cores_per_socket": 20,
    "threads_per_core": 2,
    "cpu_architecture": "x86_64",
    "cpu_architecture_level": "x86-64-v4",
    "clock_speed": 2500.0,
    "total_memory": 384000,
    "total_local_disk": 1800,
}


async def catalog(api: ApiServer, table: sa.Table) -> list[dict]:
    async with api.state.db.transaction(write=False) as conn:
        return [dict(r) for r in (await conn.execute(sa.select(table))).mappings()]


async def test_worker_node_catalog_upserts(world) -> None:
    api, _ = world
    clock = FixedClock(T0)
    api.state.clock = clock
    inserted = {"success": True, "message": "Inserted new worker node.", "data": None}
    assert await post(api, "update_worker_node", **NODE) == inserted
    clock.set(T0 + timedelta(days=1))
    assert (
        await post(api, "update_worker_node", **{**NODE, "panda_queue": "OTHER_PQ", "total_memory": 1})
        == inserted
    )
    (node,) = await catalog(api, worker_nodes)
    assert node == {
        **{key: value for key, value in NODE.items() if key != "panda_queue"},
        "host_name": "wn042.cern.ch",
        "cpu_model_normalized": "Intel Xeon Gold 6248",
        "first_seen": T0,
        "last_seen": T0 + timedelta(days=1),
    }
    node_queues = sorted((r["panda_queue"], r["last_seen"]) for r in await catalog(api, worker_node_queues))
    assert node_queues == [("OTHER_PQ", T0 + timedelta(days=1)), ("TEST_PQ", T0)]


async def test_worker_node_gpu_catalog_upserts(world) -> None:
    api, _ = world
    clock = FixedClock(T0)
    api.state.clock = clock
    gpu = {"site": "CERN", "host_name": "wn042.cern.ch", "vendor": "NVIDIA", "model": "A100", "count": 4}
    full = {**gpu, "vram": 40960, "architecture": "Ampere", "framework": "CUDA", "framework_version": "12.2"}
    assert await post(api, "update_worker_node_gpu", **full, driver_version="535") == {
        "success": True,
        "message": "Inserted new worker node GPU.",
        "data": None,
    }
    clock.set(T0 + timedelta(hours=1))
    again = {**gpu, "count": 2, "framework": "CUDA", "framework_version": "12.4", "architecture": "ignored"}
    assert await post(api, "update_worker_node_gpu", **again) == {
        "success": True,
        "message": "Updated existing worker node GPU.",
        "data": None,
    }
    (row_,) = await catalog(api, worker_node_gpus)
    assert row_ == {
        **full,
        "count": 2,
        "framework_version": "12.4",
        "driver_version": "535",
        "first_seen": T0,
        "last_seen": T0 + timedelta(hours=1),
    }


async def test_concurrent_reports_of_one_node_leave_one_row(world) -> None:
    api, _ = world
    gpu = {"site": "CERN", "host_name": "wn042.cern.ch", "vendor": "NVIDIA", "model": "A100", "count": 4}
    nodes = [post(api, "update_worker_node", **NODE) for _ in range(8)]
    gpus = [post(api, "update_worker_node_gpu", **gpu) for _ in range(8)]
    answers = await asyncio.gather(*nodes, *gpus)
    assert {answer["message"] for answer in answers[:8]} == {"Inserted new worker node."}
    assert sorted(answer["message"] for answer in answers[8:]) == [
        "Inserted new worker node GPU.",
        *["Updated existing worker node GPU."] * 7,
    ]
    assert len(await catalog(api, worker_nodes)) == 1
    assert len(await catalog(api, worker_node_gpus)) == 1
    assert len(await catalog(api, worker_node_queues)) == 1


async def test_worker_node_refusals(world) -> None:
    api, _ = world
    long_site = await post(api, "update_worker_node", **{**NODE, "site": "s" * 129})
    assert long_site == {
        "success": False,
        "message": "Worker node update failed with InvalidInput "
        "site must be at most 128 printable characters",
        "data": None,
    }
    negative = await post(api, "update_worker_node", **{**NODE, "n_sockets": -2})
    assert negative["message"] == (
        "Worker node update failed with InvalidInput n_sockets must be between 0 and 2147483647"
    )
    only_slot = await post(api, "update_worker_node", **{**NODE, "host_name": "slot1@"})
    assert only_slot["message"] == "Worker node update failed with InvalidInput host_name must name a host"
    missing = await post(api, "update_worker_node", site="CERN", host_name="wn1")
    assert missing["message"] == "Argument error: missing a required argument: 'cpu_model'"
    assert await post(api, "update_worker_node", as_user=OWNER, role=None, **NODE) == PRODUCTION_REQUIRED
    gpu = {"site": "CERN", "host_name": "wn1", "vendor": "NVIDIA", "model": "A100", "count": -1}
    assert await post(api, "update_worker_node_gpu", **gpu) == {
        "success": False,
        "message": "count must be between 0 and 2147483647",
        "data": None,
    }
    bad_type = await post(api, "update_worker_node_gpu", **{**gpu, "count": "four"})
    assert bad_type["message"] == "Type error: 'count' must be of type int, got str."
    assert await post(api, "update_worker_node_gpu", as_user=None, role=None, **gpu) == SECURE_REQUIRED
    assert await catalog(api, worker_nodes) == [] and await catalog(api, worker_node_gpus) == []


# --- registry -------------------------------------------------------------------------------------


def test_all_seven_pilot_endpoints_with_their_access() -> None:
    expected = {
        "acquire_jobs": ("POST", Access.SECURE),
        "get_job_status": ("GET", Access.SECURE),
        "update_job": ("POST", Access.PRODUCTION),
        "update_jobs_bulk": ("POST", Access.PRODUCTION),
        "update_worker_status": ("POST", Access.PRODUCTION),
        "update_worker_node": ("POST", Access.PRODUCTION),
        "update_worker_node_gpu": ("POST", Access.PRODUCTION),
    }
    found = {
        endpoint.function: (endpoint.method, endpoint.access)
        for endpoint in registry
        if endpoint.module == "pilot"
    }
    assert found == expected


async def test_filters_leave_the_jobs_they_do_not_hand_out_untouched(world) -> None:
    """The filters select; they never change a job they do not hand out."""
    api, (first, second) = await two_jobs(world)
    await set_job(api, first, minRamCount=10**6)
    before = await row(api, first)
    taken(await take(api, memory=10, n_jobs=5))
    after = await row(api, first)
    assert before == after
    async with api.state.db.transaction(write=False) as conn:
        status = (await conn.execute(sa.select(jobs.c.jobStatus).where(jobs.c.PandaID == second))).scalar()
    assert status == "sent"


# --- get_job_status, update_jobs_bulk: callers and parameters --------------------------------------


async def test_get_job_status_answers(world) -> None:
    api, (first, _) = await two_jobs(world)
    taken(await take(api))
    async with api.client(headers=api.token_headers(OWNER)) as client:
        found = envelope(await client.get("/api/v1/pilot/get_job_status", params={"job_ids": [first, 5]}))
        bad = envelope(await client.get("/api/v1/pilot/get_job_status", params={"job_ids": "first"}))
    assert found == {
        "success": True,
        "message": "",
        "data": [
            {"job_id": first, "status": "sent", "attempt_number": 1},
            {"job_id": 5, "status": "not found", "attempt_number": 0},
        ],
    }
    assert bad["success"] is False and "'job_ids'" in bad["message"]
    async with api.client() as client:
        anonymous = envelope(await client.get("/api/v1/pilot/get_job_status", params={"job_ids": [first]}))
    assert anonymous == SECURE_REQUIRED


async def test_update_jobs_bulk_callers_and_parameters(world) -> None:
    api, (first, _) = await two_jobs(world)
    taken(await take(api))
    entry = {"job_id": first, "job_status": "running"}
    as_user = await post(api, "update_jobs_bulk", as_user=OWNER, role=None, job_list=[entry])
    assert as_user == PRODUCTION_REQUIRED
    not_a_list = await post(api, "update_jobs_bulk", job_list={"job_id": first})
    assert not_a_list == {
        "success": False,
        "message": "Type error: 'job_list' must be of type list, got dict.",
        "data": None,
    }
    mixed = await post(
        api, "update_jobs_bulk", job_list=[entry, {"job_id": first, "job_status": "running", "n_events": "x"}]
    )
    assert mixed["data"] == [
        {"success": True, "message": "", "data": {"StatusCode": 0, "command": "NULL"}},
        {
            "success": False,
            "message": "Type error: 'n_events' must be of type int | NoneType, got str.",
            "data": None,
        },
    ]
