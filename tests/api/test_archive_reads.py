"""Reads of archived jobs through the API (DESIGN §4, api-v1.md §2.1-2.3), on both databases.

Each test archives jobs with the archiver's own step, driven by a clock past the archive delay,
and checks that what the API says about them does not change, except where the contract answers
from active jobs only.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa

from bamboo.db.schema import jobs, jobs_archive
from bamboo.logic import archive
from bamboo.logic.progress import progress
from tests.api.conftest import ApiServer
from tests.api.test_job_endpoints import OWNER, UNKNOWN, call, prod, task_jobs
from tests.api.test_scouting import SCOUTED_TASK, end_job, task_row
from tests.api.test_task_flow import (
    acquire,
    envelope,
    output_report,
    report,
    run_job,
    submit,
    task_status,
    world,
)
from tests.conftest import FixedClock
from tests.tasks import NO_INPUT_TASK

__all__ = ["world"]

POLICY = archive.ArchivePolicy()


async def archive_final_jobs(api: ApiServer) -> int:
    """Run the archiver, with a clock past the delay, until it has nothing left; return the jobs moved."""
    clock = FixedClock(datetime.now(UTC) + POLICY.delay + timedelta(minutes=1))
    moved = 0
    while True:
        async with api.state.db.transaction() as conn:
            done = await archive.archive(conn, clock, POLICY)
        if not done:
            return moved
        moved += done


async def archived_ids(api: ApiServer) -> list[int]:
    async with api.state.db.transaction(write=False) as conn:
        query = sa.select(jobs_archive.c.PandaID).order_by(jobs_archive.c.PandaID)
        return list((await conn.execute(query)).scalars())


async def task_get(api: ApiServer, name: str, **params: Any) -> dict:
    async with api.client(headers=api.token_headers(OWNER)) as client:
        return envelope(await client.get(f"/api/v1/task/{name}", params=params))


async def pilot_statuses(api: ApiServer, job_ids: list[int]) -> dict:
    async with api.client(headers=api.token_headers("Harvester Robot", role="production")) as client:
        return envelope(await client.get("/api/v1/pilot/get_job_status", params={"job_ids": job_ids}))


async def job_statuses(api: ApiServer, job_ids: list[int]) -> dict:
    async with api.client(headers=api.token_headers(OWNER)) as client:
        return envelope(await client.get("/api/v1/job/get_status", params={"job_ids": job_ids}))


async def reads(api: ApiServer, task_id: int, job_ids: list[int]) -> dict[str, Any]:
    """Every read that promises archived jobs, as the API answers it."""
    async with api.state.db.transaction(write=False) as conn:
        counts = (await progress(conn, task_id)).jobs_by_status
    return {
        "get_job_ids": await task_get(api, "get_job_ids", task_id=task_id),
        "get_details": await task_get(api, "get_details", task_id=task_id),
        "get_job_descriptions": await task_get(api, "get_job_descriptions", task_id=task_id),
        "unsuccessful": await task_get(api, "get_job_descriptions", task_id=task_id, unsuccessful_only=True),
        "get_description": await call(api, "get_description", job_ids=[*job_ids, UNKNOWN]),
        "incl_archive": await call(api, "get_description_incl_archive", job_ids=[*job_ids, UNKNOWN]),
        "offline_script": await call(api, "generate_offline_execution_script", job_id=job_ids[0]),
        "metadata": await call(api, "get_metadata_for_analysis_jobs", task_id=task_id),
        "pilot_get_job_status": await pilot_statuses(api, [*job_ids, UNKNOWN]),
        "progress": counts,
    }


async def test_an_archived_task_reads_as_before(world) -> None:
    api, runner, task_id, job_ids = await task_jobs(world)
    first, second = await acquire(api, n_jobs=2)
    running = {"job_id": first["PandaID"], "job_status": "running", "attempt_nr": 1}
    assert (await report(api, [running]))[0]["success"] is True
    finished = {
        "job_id": first["PandaID"],
        "job_status": "finished",
        "attempt_nr": 1,
        "job_output_report": output_report(first),
        "meta_data": orjson.dumps({"events": 2}).decode(),
    }
    assert (await report(api, [finished]))[0]["success"] is True
    await run_job(api, second, final="failed")
    await runner.drain()
    # The failed job's input makes a retry, which stays active.
    all_ids = (await task_get(api, "get_job_ids", task_id=task_id))["data"]
    assert all_ids[:2] == job_ids and len(all_ids) == 3
    before = await reads(api, task_id, all_ids)
    assert before["incl_archive"]["data"][0]["PandaID"] == job_ids[0]
    assert before["metadata"]["data"] == {str(first["PandaID"]): {"events": 2}}
    assert before["progress"] == {"finished": 1, "failed": 1, "activated": 1}
    assert before["pilot_get_job_status"]["data"][0] == {
        "job_id": job_ids[0],
        "status": "finished",
        "attempt_number": 1,
    }
    assert len(before["unsuccessful"]["data"]) == 1
    statuses = await job_statuses(api, job_ids)
    assert [entry["status"] for entry in statuses["data"]] == ["finished", "failed"]

    assert await archive_final_jobs(api) == 2
    assert await archived_ids(api) == job_ids
    async with api.state.db.transaction(write=False) as conn:
        assert list((await conn.execute(sa.select(jobs.c.PandaID))).scalars()) == all_ids[2:]

    assert await reads(api, task_id, all_ids) == before
    # job/get_status answers from live jobs and jobs final for less than an hour only.
    assert (await job_statuses(api, job_ids))["data"] == [{"status": "unknown", "command": "tobekilled"}] * 2
    # Archived jobs are final: nothing kills them, and a late pilot is told to stop.
    assert (await call(api, "kill", job_ids=job_ids))["data"] == [False, False]
    async with api.client(headers=api.token_headers(OWNER)) as client:
        killed = envelope(await client.post("/api/v1/task/kill_unfinished_jobs", json={"task_id": task_id}))
    assert killed == {"success": True, "message": "", "data": [False, False, True]}
    late = await report(api, [{"job_id": first["PandaID"], "job_status": "running", "attempt_nr": 1}])
    assert late[0]["data"] == {"StatusCode": 0, "command": "tobekilled"}
    assert (await prod(api, "set_command", job_id=job_ids[0], command="debug"))["success"] is False
    assert await archived_ids(api) == job_ids


async def test_kill_unfinished_jobs_lists_archived_jobs_in_order(world) -> None:
    api, runner, task_id, job_ids = await task_jobs(world)
    first, _ = await acquire(api, n_jobs=2)
    await run_job(api, first)
    await runner.drain()
    assert await archive_final_jobs(api) == 1
    async with api.client(headers=api.token_headers(OWNER)) as client:
        killed = envelope(await client.post("/api/v1/task/kill_unfinished_jobs", json={"task_id": task_id}))
    # One boolean per job of the task in PandaID order: the archived one was not killed.
    assert killed["data"] == [job_ids[0] != first["PandaID"], job_ids[1] != first["PandaID"]]


async def test_description_incl_archive_of_an_archived_job(world) -> None:
    api, runner, _, job_ids = await task_jobs(world)
    for job in await acquire(api, n_jobs=2):
        await run_job(api, job)
    await runner.drain()
    live = await call(api, "get_description_incl_archive", job_ids=job_ids)
    assert await archive_final_jobs(api) == 2
    body = await call(api, "get_description_incl_archive", job_ids=[job_ids[1], UNKNOWN, job_ids[0]])
    assert body["success"] is True and body["message"] == ""
    assert body["data"] == [live["data"][1], None, live["data"][0]]
    assert body["data"][0]["jobStatus"] == "finished"
    assert [f["type"] for f in body["data"][0]["Files"]] == ["log"]


async def test_a_retry_of_an_archived_job_keeps_its_chain(world) -> None:
    api, runner = world
    task_id = await submit(api, {**NO_INPUT_TASK, "nEvents": 2})
    await runner.drain()
    (failed,) = await acquire(api)
    await run_job(api, failed, final="failed")
    # Only the finaliser: the job ends failed, and is archived before the generator retries it.
    assert await runner.run_once("finaliser") == 1
    assert await archive_final_jobs(api) == 1
    await runner.drain()
    (retry,) = await acquire(api)
    assert retry["attemptNr"] == 2
    # The job name carries the first attempt's PandaID, read from the archive.
    assert retry["PandaID"] != failed["PandaID"]
    assert retry["jobName"] == failed["jobName"] == f"{NO_INPUT_TASK['taskName']}.{failed['PandaID']}"
    # The task's final status comes from its file counters: archived attempts change nothing.
    await run_job(api, retry)
    await runner.drain()
    assert await task_status(api, task_id) == "done"
    listed = (await task_get(api, "get_job_ids", task_id=task_id))["data"]
    assert listed == [failed["PandaID"], retry["PandaID"]]


async def test_scouts_archived_while_the_task_scouts_still_count(world) -> None:
    api, runner = world
    task_id = await submit(api, SCOUTED_TASK)
    await runner.drain()
    scouts = await acquire(api, n_jobs=100)
    assert len(scouts) == 10
    for job in scouts[:9]:
        await end_job(api, job)
    await runner.drain()
    assert await archive_final_jobs(api) == 9
    await end_job(api, scouts[9], max_pss_kb=4_000_000)
    await runner.drain()
    assert await task_status(api, task_id) == "running"
    # The same measurements as with every scout active (tests/api/test_scouting.py).
    row = await task_row(api, task_id)
    assert (row["ramCount"], row["walltime"], row["cpuTime"]) == (1954, 1200, 500)
