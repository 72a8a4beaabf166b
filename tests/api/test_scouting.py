"""Scouting then avalanche through the API and the agents (domain.md §4.3), on both databases."""

from __future__ import annotations

from typing import Any

from bamboo.db import tasks as tasks_db
from bamboo.logic.task_admin import parse_split_rule
from tests.api.test_task_flow import (
    acquire,
    envelope,
    output_report,
    report,
    submit,
    task_status,
    world,
)
from tests.tasks import NO_INPUT_TASK

# The fixture, imported for pytest to find.
__all__ = ["world"]

# 25 jobs of 2 events each, as a client sends it: no skipScout.
SCOUTED_TASK = {**NO_INPUT_TASK, "nEvents": 50, "nEventsPerJob": 2, "taskName": "user.testuser.scouted/"}
SCOUTED_TASK.pop("skipScout")


async def task_row(api, task_id: int) -> dict[str, Any]:
    async with api.state.db.transaction(write=False) as conn:
        return await tasks_db.get(conn, task_id)


async def end_job(api, job: dict, final: str = "finished", max_pss_kb: int = 2_000_000) -> None:
    running = {"job_id": job["PandaID"], "job_status": "running", "attempt_nr": job["attemptNr"]}
    assert (await report(api, [running]))[0]["success"] is True
    update: dict[str, Any] = {
        "job_id": job["PandaID"],
        "job_status": final,
        "attempt_nr": job["attemptNr"],
        "start_time": "2026-12-01 10:00:00",
        "end_time": "2026-12-01 10:20:00",
        "max_pss": max_pss_kb,
        "n_events": 2,
        "cpu_consumption_time": 1000,
    }
    if final == "finished":
        update["job_output_report"] = output_report(job)
    assert (await report(api, [update]))[0]["success"] is True


async def test_scouts_first_then_the_avalanche_with_measured_needs(world) -> None:
    api, runner = world
    task_id = await submit(api, SCOUTED_TASK)
    await runner.drain()
    assert await task_status(api, task_id) == "scouting"
    scouts = await acquire(api, n_jobs=100)
    assert len(scouts) == 10
    # Scouts jump the queue: priority max(901, taskPriority + 1).
    assert {job["currentPriority"] for job in scouts} == {1001}
    for job in scouts[:9]:
        await end_job(api, job)
    await runner.drain()
    # One scout still runs: the task waits, and makes no other job.
    assert await task_status(api, task_id) == "scouting"
    assert await acquire(api, n_jobs=100) == []
    await end_job(api, scouts[9], max_pss_kb=4_000_000)
    await runner.drain()
    assert await task_status(api, task_id) == "running"
    row = await task_row(api, task_id)
    assert parse_split_rule(row["splitRule"])["US"] == "3"
    # 75th percentile of the scouts' PSS (1953 MB for nine, 3906 MB for one) and their 1200 s.
    assert row["ramCount"] == 1954
    assert row["walltime"] == 1200
    assert row["cpuTime"] == 500
    rest = await acquire(api, n_jobs=100)
    assert len(rest) == 15
    assert {job["currentPriority"] for job in rest} == {1000}
    assert {job["minRamCount"] for job in rest} == {1954}
    for job in rest:
        await end_job(api, job)
    await runner.drain()
    assert await task_status(api, task_id) == "done"


async def test_a_task_whose_scouts_all_fail_is_broken(world) -> None:
    api, runner = world
    task_id = await submit(api, SCOUTED_TASK)
    await runner.drain()
    scouts = await acquire(api, n_jobs=100)
    assert len(scouts) == 10
    for job in scouts:
        await end_job(api, job, final="failed")
    await runner.drain()
    assert await task_status(api, task_id) == "broken"
    row = await task_row(api, task_id)
    assert row["errorDialog"] == "no scout jobs succeeded"
    assert await acquire(api, n_jobs=100) == []


async def test_avalanche_command_ends_scouting_at_once(world) -> None:
    api, runner = world
    task_id = await submit(api, SCOUTED_TASK)
    await runner.drain()
    scouts = await acquire(api, n_jobs=100)
    before = await task_row(api, task_id)
    async with api.client(headers=api.token_headers("Prod Operator", role="production")) as client:
        body = envelope(await client.post("/api/v1/task/avalanche", json={"task_id": task_id}))
    assert body["success"] is True, body
    await runner.drain()
    assert await task_status(api, task_id) == "running"
    assert len(await acquire(api, n_jobs=100)) == 15
    # The scouts keep running; nothing was measured, so the task keeps its own needs.
    after = await task_row(api, task_id)
    assert (after["ramCount"], after["walltime"]) == (before["ramCount"], before["walltime"])
    assert parse_split_rule(after["splitRule"])["US"] == "3"
    assert len(scouts) == 10


async def test_a_small_task_made_of_scouts_only_ends_without_avalanche(world) -> None:
    api, runner = world
    task_id = await submit(api, {**SCOUTED_TASK, "nEvents": 4})
    await runner.drain()
    assert await task_status(api, task_id) == "scouting"
    jobs = await acquire(api, n_jobs=100)
    assert len(jobs) == 2
    for job in jobs:
        await end_job(api, job)
    await runner.drain()
    assert await task_status(api, task_id) == "done"


async def test_reassigning_a_scouting_task_scouts_again(world) -> None:
    api, runner = world
    task_id = await submit(api, SCOUTED_TASK)
    await runner.drain()
    first = await acquire(api, n_jobs=100)
    async with api.client(headers=api.token_headers("Prod Operator", role="production")) as client:
        body = envelope(
            await client.post("/api/v1/task/reassign", json={"task_id": task_id, "site": "TEST_PQ"})
        )
    assert body["success"] is True, body
    await runner.drain()
    assert await task_status(api, task_id) == "scouting"
    again = await acquire(api, n_jobs=100)
    assert len(again) == 10
    assert not {job["PandaID"] for job in again} & {job["PandaID"] for job in first}
    assert {job["currentPriority"] for job in again} == {1001}
