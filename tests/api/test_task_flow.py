"""A task's whole life through the API and the agents, in process, on both databases."""

from __future__ import annotations

import orjson
import pytest

from bamboo.agents.runner import AgentContext, AgentRunner
from bamboo.logic import queues
from bamboo.logic.catalog import CatalogFile
from tests.api.conftest import ApiServer
from tests.tasks import NO_INPUT_TASK, input_task


def envelope(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
async def world(api: ApiServer) -> tuple[ApiServer, AgentRunner]:
    async with api.state.db.transaction() as conn:
        await queues.put(conn, api.state.clock, {"name": "TEST_PQ", "type": "unified", "corecount": 1})
    runner = AgentRunner(AgentContext(api.state.db, api.state.clock, api.state.dm))
    return api, runner


async def submit(api: ApiServer, params: dict, user: str = "test user") -> int:
    async with api.client(headers=api.token_headers(user)) as client:
        body = envelope(
            await client.post("/api/v1/task/submit", json={"task_parameters": params, "parent_tid": None})
        )
    assert body["success"] is True, body
    assert body["message"] == f"succeeded. new jediTaskID={body['data']}"
    return body["data"]


async def acquire(api: ApiServer, n_jobs: int = 1, site: str = "TEST_PQ") -> list[dict]:
    async with api.client(headers=api.token_headers("Harvester Robot", role="production")) as client:
        body = envelope(
            await client.post(
                "/api/v1/pilot/acquire_jobs",
                json={
                    "site_name": site,
                    "node": "wn01",
                    "prod_source_label": "user",
                    "computing_element": "wn01",
                    "n_jobs": n_jobs,
                    "scheduler_id": "harvester-test",
                },
            )
        )
    if not body["success"]:
        assert body == {"success": False, "message": "No jobs in PanDA", "data": None}
        return []
    assert body["data"]["StatusCode"] == 0
    return body["data"]["jobs"]


async def report(api: ApiServer, updates: list[dict]) -> list[dict]:
    async with api.client(headers=api.token_headers("Harvester Robot", role="production")) as client:
        body = envelope(
            await client.post(
                "/api/v1/pilot/update_jobs_bulk", json={"job_list": updates, "harvester_id": "test"}
            )
        )
    assert body["success"] is True, body
    return body["data"]


def output_report(job: dict) -> str:
    return orjson.dumps(
        {
            lfn: {"guid": f"guid-{lfn}", "fsize": 1234, "adler32": "0a1b2c3d"}
            for lfn in job["outFiles"].split(",")
        }
    ).decode()


async def run_job(api: ApiServer, job: dict, final: str = "finished") -> None:
    replies = await report(
        api,
        [
            {
                "job_id": job["PandaID"],
                "job_status": "running",
                "attempt_nr": job["attemptNr"],
                "site_name": "TEST_PQ",
            }
        ],
    )
    assert replies == [{"success": True, "message": "", "data": {"StatusCode": 0, "command": "NULL"}}]
    update = {"job_id": job["PandaID"], "job_status": final, "attempt_nr": job["attemptNr"]}
    if final == "finished":
        update["job_output_report"] = output_report(job)
    replies = await report(api, [update])
    assert replies[0]["data"] == {"StatusCode": 0, "command": "NULL"}


async def task_status(api: ApiServer, task_id: int) -> str:
    async with api.client(headers=api.token_headers("test user")) as client:
        return envelope(await client.get("/api/v1/task/get_status", params={"task_id": task_id}))["data"]


async def test_no_input_task_runs_to_done(world) -> None:
    api, runner = world
    task_id = await submit(api, NO_INPUT_TASK)
    assert task_id >= 10_000_000
    assert await task_status(api, task_id) == "registered"
    await runner.drain()
    assert await task_status(api, task_id) == "running"
    async with api.client(headers=api.token_headers("test user")) as client:
        job_ids = envelope(await client.get("/api/v1/task/get_job_ids", params={"task_id": task_id}))["data"]
    assert len(job_ids) == 2
    first = (await acquire(api))[0]
    assert first["PandaID"] == job_ids[0]
    assert first["taskID"] == task_id and first["attemptNr"] == 1 and first["coreCount"] == 1
    assert first["resource_type"] == "SCORE"
    assert first["inFiles"] == ""
    assert first["logFile"] == f"user.testuser.e2e.0001.log.{task_id}.000001.log.tgz"
    assert first["outFiles"] == first["logFile"]
    assert first["scopeLog"] == "user.testuser"
    assert first["realDatasets"] == "user.testuser.e2e.0001.log/"
    assert first["jobPars"] == '-p "echo hello" --maxEvents=2 --skipEvents=0'
    second = (await acquire(api))[0]
    assert second["jobPars"] == '-p "echo hello" --maxEvents=2 --skipEvents=2'
    assert await acquire(api) == []
    await run_job(api, first)
    await run_job(api, second)
    async with api.client(headers=api.token_headers("test user")) as client:
        statuses = envelope(await client.get("/api/v1/job/get_status", params={"job_ids": job_ids}))["data"]
    assert statuses == [{"status": "holding", "command": None}] * 2
    await runner.drain()
    assert await task_status(api, task_id) == "done"
    async with api.client(headers=api.token_headers("test user")) as client:
        described = envelope(
            await client.post("/api/v1/job/get_description", json={"job_ids": [job_ids[0], 999999999]})
        )
        detailed = envelope(
            await client.get(
                "/api/v1/task/get_tasks_detailed_info_since",
                params={"filters": orjson.dumps({"jediTaskID": str(task_id)}).decode(), "n_tasks": 500},
            )
        )
    record = described["data"][0]
    assert described["data"][1] is None
    assert record["jobStatus"] == "finished" and record["jediTaskID"] == task_id
    assert set(record["modificationTime"]) == {"__datetime__"}
    log_file = next(f for f in record["Files"] if f["type"] == "log")
    assert log_file["GUID"] == f"guid-{first['logFile']}" and log_file["fsize"] == 1234
    (task,) = detailed["data"]
    assert task["jediTaskID"] == task_id and task["userName"] == "Test User"
    assert (
        task["status"],
        task["superStatus"],
        task["nFiles"],
        task["nFilesFinished"],
        task["pctFinished"],
    ) == (
        "done",
        "done",
        2,
        2,
        100,
    )


async def test_input_task_with_a_retry_then_a_chained_task(world) -> None:
    api, runner = world
    files = [CatalogFile(lfn=f"data.{i:02d}.root", fsize=1000 + i, n_events=100) for i in range(10)]
    async with api.state.db.transaction() as conn:
        await api.state.dm.register_files(conn, api.state.clock, "user.testuser.input.v1", files)
    task_id = await submit(api, input_task("user.testuser.input.v1", "user.testuser.ana.v1"))
    await runner.drain()
    jobs = await acquire(api, n_jobs=10)
    assert [job["inFiles"].split(",") for job in jobs] == [
        [f"data.{i:02d}.root" for i in chunk] for chunk in ([0, 1, 2], [3, 4, 5], [6, 7, 8], [9])
    ]
    assert jobs[0]["jobPars"] == (
        f"-i \"['data.00.root', 'data.01.root', 'data.02.root']\" "
        f"--outputFile=user.testuser.ana.v1.{task_id}._000001.out.root"
    )
    assert jobs[0]["fsize"] == "1000,1001,1002"
    assert jobs[1]["outFiles"].split(",")[0] == f"user.testuser.ana.v1.{task_id}._000002.out.root"
    for job in jobs[:3]:
        await run_job(api, job)
    await run_job(api, jobs[3], final="failed")
    await runner.drain()
    assert await task_status(api, task_id) == "running"
    (retry,) = await acquire(api, n_jobs=10)
    assert retry["inFiles"] == "data.09.root"
    assert retry["attemptNr"] == 2
    assert retry["PandaID"] not in [job["PandaID"] for job in jobs]
    # A new job means new output names: serial numbers are never reused.
    assert retry["outFiles"].split(",")[0] == f"user.testuser.ana.v1.{task_id}._000005.out.root"
    await run_job(api, retry)
    await runner.drain()
    assert await task_status(api, task_id) == "done"

    child = input_task("user.testuser.ana.v1_out/", "user.testuser.skim.v1", n_files_per_job=2)
    child_id = await submit(api, {**child, "parent_tid": task_id})
    await runner.drain()
    child_jobs = await acquire(api, n_jobs=10)
    assert sorted(lfn for job in child_jobs for lfn in job["inFiles"].split(",")) == sorted(
        f"user.testuser.ana.v1.{task_id}._{serial:06d}.out.root" for serial in (1, 2, 3, 5)
    )
    assert len(child_jobs) == 2
    for job in child_jobs:
        await run_job(api, job)
    await runner.drain()
    assert await task_status(api, child_id) == "done"


async def test_task_without_eligible_queue_waits_and_starts_when_one_appears(world) -> None:
    api, runner = world
    task_id = await submit(api, {**NO_INPUT_TASK, "site": "NEW_PQ"})
    await runner.drain()
    async with api.client(headers=api.token_headers("test user")) as client:
        info = envelope(await client.get("/api/v1/task/get_detailed_info", params={"task_id": task_id}))[
            "data"
        ]
    assert info["status"] == "pending"
    assert "TEST_PQ not in site=NEW_PQ" in info["errorDialog"]
    async with api.state.db.transaction() as conn:
        await queues.put(conn, api.state.clock, {"name": "NEW_PQ", "type": "analysis"})
    await runner.drain()
    assert await task_status(api, task_id) == "running"
    assert len(await acquire(api, n_jobs=5, site="NEW_PQ")) == 2


async def test_submission_errors_name_the_key(world) -> None:
    api, _ = world
    async with api.client(headers=api.token_headers("test user")) as client:
        body = envelope(
            await client.post(
                "/api/v1/task/submit", json={"task_parameters": {**NO_INPUT_TASK, "nEventsPerJob": -1}}
            )
        )
        missing = envelope(await client.post("/api/v1/task/submit", json={"task_parameters": {"vo": "x"}}))
    assert body["success"] is False and body["data"] == 4 and "nEventsPerJob" in body["message"]
    assert missing["success"] is False and "taskName" in missing["message"]


async def test_user_cannot_report_for_pilots(world) -> None:
    api, _ = world
    async with api.client(headers=api.token_headers("test user")) as client:
        body = envelope(
            await client.post("/api/v1/pilot/update_job", json={"job_id": 1, "job_status": "running"})
        )
        acquire_body = envelope(
            await client.post(
                "/api/v1/pilot/acquire_jobs", json={"site_name": "TEST_PQ", "prod_source_label": "managed"}
            )
        )
    assert body == {"success": False, "message": "production or pilot role required", "data": None}
    assert acquire_body["message"] == "no production/pilot role in VOMS FQANs or non pilot owner"


async def test_update_job_answers(world) -> None:
    api, runner = world
    await submit(api, NO_INPUT_TASK)
    await runner.drain()
    job = (await acquire(api))[0]
    async with api.client(headers=api.token_headers("Harvester Robot", role="production")) as client:
        invalid = envelope(
            await client.post(
                "/api/v1/pilot/update_job", json={"job_id": job["PandaID"], "job_status": "dancing"}
            )
        )
        stale = envelope(
            await client.post(
                "/api/v1/pilot/update_job",
                json={"job_id": job["PandaID"], "job_status": "running", "attempt_nr": job["attemptNr"] + 5},
            )
        )
        unknown = envelope(
            await client.post("/api/v1/pilot/update_job", json={"job_id": 999999999, "job_status": "running"})
        )
        bulk = envelope(
            await client.post(
                "/api/v1/pilot/update_jobs_bulk",
                json={"job_list": [{"job_id": job["PandaID"], "job_status": "running", "bogus": 1}]},
            )
        )
        missing = envelope(
            await client.post("/api/v1/pilot/update_jobs_bulk", json={"job_list": [{"job_id": 1}]})
        )
        status = envelope(
            await client.get("/api/v1/pilot/get_job_status", params={"job_ids": [job["PandaID"], 999999999]})
        )
    assert invalid == {"success": False, "message": "Invalid job status: dancing", "data": {"StatusCode": 50}}
    assert stale["data"] == {"StatusCode": 0, "command": "tobekilled"}
    assert unknown["data"] == {"StatusCode": 0, "command": "tobekilled"}
    assert bulk["data"] == [
        {
            "success": False,
            "message": "Argument error: got an unexpected keyword argument 'bogus'",
            "data": None,
        }
    ]
    assert missing == {"success": False, "message": "failed with KeyError 'job_status'", "data": []}
    assert status["data"] == [
        {"job_id": job["PandaID"], "status": "sent", "attempt_number": job["attemptNr"]},
        {"job_id": 999999999, "status": "not found", "attempt_number": 0},
    ]


async def test_a_task_too_large_to_refine_breaks_with_the_reason(world) -> None:
    api, runner = world
    task_id = await submit(api, {**NO_INPUT_TASK, "nEvents": 10**9, "nEventsPerJob": 1})
    await runner.drain()
    async with api.client(headers=api.token_headers("test user")) as client:
        info = envelope(await client.get("/api/v1/task/get_detailed_info", params={"task_id": task_id}))[
            "data"
        ]
    assert info["status"] == "broken"
    assert "more than 100000 input rows" in info["errorDialog"]


async def test_missing_parent_breaks_the_child(world) -> None:
    api, runner = world
    task_id = await submit(api, {**NO_INPUT_TASK, "parent_tid": 1})
    await runner.drain()
    async with api.client(headers=api.token_headers("test user")) as client:
        info = envelope(await client.get("/api/v1/task/get_detailed_info", params={"task_id": task_id}))[
            "data"
        ]
    assert (info["status"], info["errorDialog"]) == ("broken", "parent task 1 not found")


async def test_a_task_that_trips_a_bug_does_not_block_the_others(world, monkeypatch) -> None:
    from bamboo.logic import refiner

    api, runner = world
    original = refiner.refine

    def fragile(params):
        if params["taskName"] == "user.testuser.bug/":
            raise KeyError("boom")
        return original(params)

    monkeypatch.setattr(refiner, "refine", fragile)
    bad = await submit(api, {**NO_INPUT_TASK, "taskName": "user.testuser.bug/"})
    good = await submit(api, NO_INPUT_TASK)
    await runner.drain()
    assert await task_status(api, bad) == "broken"
    assert await task_status(api, good) == "running"


async def test_new_tasks_get_jobs_while_many_older_ones_run(world) -> None:
    api, runner = world
    older = [await submit(api, {**NO_INPUT_TASK, "taskName": f"user.testuser.old{i}/"}) for i in range(12)]
    await runner.drain()
    assert {await task_status(api, task_id) for task_id in older} == {"running"}
    newest = await submit(api, {**NO_INPUT_TASK, "taskName": "user.testuser.new/"})
    await runner.drain()
    assert await task_status(api, newest) == "running"


async def test_a_test_queue_hands_out_test_jobs_only(world) -> None:
    api, runner = world
    await submit(api, NO_INPUT_TASK)
    await runner.drain()
    async with api.state.db.transaction() as conn:
        await queues.update(conn, api.state.clock, "TEST_PQ", {"status": "test"})
    assert await acquire(api) == []


async def test_a_huge_task_does_not_starve_a_small_one(world) -> None:
    from bamboo.logic import generator

    api, runner = world
    huge = await submit(
        api, {**NO_INPUT_TASK, "taskName": "user.testuser.huge/", "nEvents": 5000, "nEventsPerJob": 1}
    )
    await runner.run_once("refiner")
    await runner.run_once("generator")
    small = await submit(api, {**NO_INPUT_TASK, "taskName": "user.testuser.small/"})
    await runner.run_once("refiner")
    made = await runner.run_once("generator")
    assert made <= generator.JOBS_PER_CYCLE
    assert await task_status(api, small) == "running"
    async with api.client(headers=api.token_headers("test user")) as client:
        huge_jobs = envelope(await client.get("/api/v1/task/get_job_ids", params={"task_id": huge}))["data"]
    assert len(huge_jobs) < 5000


async def test_update_job_stores_what_the_pilot_measured(world) -> None:
    api, runner = world
    await submit(api, NO_INPUT_TASK)
    await runner.drain()
    job = (await acquire(api))[0]
    report = {
        "job_id": job["PandaID"],
        "job_status": "running",
        "node": "wn42",
        "max_rss": 2048,
        "tot_rchar": 4096,
        "pilot_error_code": -1099,
        "start_time": "2026-11-28 10:00:00",
        "cpu_conversion_factor": 1,
    }
    async with api.client(headers=api.token_headers("Harvester Robot", role="production")) as client:
        answer = envelope(await client.post("/api/v1/pilot/update_job", json=report))
        (record,) = envelope(
            await client.post("/api/v1/job/get_description", json={"job_ids": [job["PandaID"]]})
        )["data"]
    assert answer["data"] == {"StatusCode": 0, "command": "NULL"}
    assert (record["jobStatus"], record["modificationHost"], record["maxRSS"]) == ("running", "wn42", 2048)
    assert (record["totRCHAR"], record["pilotErrorCode"], record["cpuConversion"]) == (4, 1099, 1.0)
    assert record["startTime"] == {"__datetime__": "2026-11-28T10:00:00"}
