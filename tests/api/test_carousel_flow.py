"""The data carousel end to end, on both databases: a task over a tape-resident dataset waits in
``staging``, the tape simulator stages its files as the clock moves, jobs are made for the files as
they arrive and run by a pilot, and the task ends when everything is processed; transfer failures
are retried, and files failing every attempt are given up."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bamboo.agents.runner import AgentContext, AgentRunner
from bamboo.db import carousel as carousel_db
from bamboo.db import catalog as catalog_db
from bamboo.db import tasks as tasks_db
from bamboo.logic import queues
from bamboo.logic.catalog import CatalogFile, LocalCatalog
from bamboo.logic.tape_simulator import TapeParameters, simulate
from tests.api.conftest import ApiServer
from tests.api.test_task_flow import acquire, run_job, submit
from tests.conftest import FixedClock
from tests.tasks import input_task

DATASET = "user.testuser.tape.input"
FILES = [f"tape.{i}.root" for i in range(6)]
FILE_SIZE = 1000
# 100 bytes/s: each transfer attempt takes 10 s, after a 20 s mount delay.
TAPE = {"tape_staging_delay_seconds": 20.0, "tape_bandwidth_bytes_per_second": 100.0}


async def make_world(api_factory, **settings) -> tuple[ApiServer, AgentRunner, FixedClock]:
    api = api_factory(**TAPE, **settings)
    clock = FixedClock()
    async with api.state.db.transaction() as conn:
        await queues.put(conn, clock, {"name": "TEST_PQ", "type": "unified", "corecount": 1})
        catalog = LocalCatalog()
        await catalog.register_files(
            conn, clock, DATASET, [CatalogFile(lfn=name, fsize=FILE_SIZE, n_events=10) for name in FILES]
        )
        await catalog.set_residency(conn, DATASET, "LOCAL_TAPE")
    runner = AgentRunner(AgentContext(api.state.db, clock, api.state.dm, settings=api.state.settings))
    return api, runner, clock


async def task_row(api: ApiServer, task_id: int) -> dict:
    async with api.state.db.transaction(write=False) as conn:
        row = await tasks_db.get(conn, task_id)
    assert row is not None
    return row


async def request_of(api: ApiServer, task_id: int) -> dict:
    async with api.state.db.transaction(write=False) as conn:
        request = await carousel_db.request_of_task(conn, task_id, DATASET)
    assert request is not None
    return request


async def run_until_done(api: ApiServer, runner: AgentRunner, clock: FixedClock, task_id: int) -> list[int]:
    """Move the clock 10 s at a time, run the agents and a pilot; the jobs made per step."""
    made = []
    for _ in range(200):
        clock.set(clock.now() + timedelta(seconds=10))
        await runner.drain()
        jobs = await acquire(api, n_jobs=50)
        made.append(len(jobs))
        for job in jobs:
            await run_job(api, job)
        await runner.drain()
        if (await task_row(api, task_id))["status"] in ("done", "finished", "failed"):
            return made
    raise AssertionError("the task did not end")


async def test_a_task_over_tape_waits_then_runs_as_files_arrive(api_factory) -> None:
    api, runner, clock = await make_world(
        api_factory, tape_failure_rate=0.3, tape_max_attempts=10, tape_seed=7
    )
    task_id = await submit(api, input_task(DATASET, "user.testuser.tape", n_files_per_job=1))
    await runner.run_once("refiner")
    row = await task_row(api, task_id)
    assert (row["status"], row["oldStatus"]) == ("staging", "registered")
    request = await request_of(api, task_id)
    assert (request["status"], request["total_files"], request["dataset_size"]) == (
        "queued",
        6,
        6 * FILE_SIZE,
    )
    # The carousel submits the rule: the task is resumed (staged), then ready; nothing is on disk yet.
    await runner.run_once("carousel")
    assert (await task_row(api, task_id))["status"] == "staged"
    request = await request_of(api, task_id)
    assert (request["status"], request["destination_rse"]) == ("staging", "LOCAL_DATADISK")
    await runner.drain()
    assert (await task_row(api, task_id))["status"] == "ready"
    assert await acquire(api, n_jobs=50) == []
    # Within the mount delay still nothing.
    clock.set(clock.now() + timedelta(seconds=10))
    await runner.drain()
    assert await acquire(api, n_jobs=50) == []

    made = await run_until_done(api, runner, clock, task_id)
    # Files arrived one by one: jobs were made over many steps, one file each.
    assert sum(made) == 6
    assert len([n for n in made if n]) >= 3
    assert (await task_row(api, task_id))["status"] == "done"
    request = await request_of(api, task_id)
    assert (request["status"], request["staged_files"], request["staged_size"]) == ("done", 6, 6 * FILE_SIZE)
    # The seed makes some attempts fail; they were retried and every file got through.
    progress = simulate(
        request["ddm_rule_id"],
        [(name, FILE_SIZE, False) for name in FILES],
        TapeParameters(20.0, 100.0, 0.3, 10, 7),
        started=request["start_time"],
        now=clock.now(),
    )
    assert progress.failed_attempts > 0
    assert progress.stuck == ()


async def test_files_failing_every_attempt_are_given_up_and_the_task_ends_finished(api_factory) -> None:
    api, runner, clock = await make_world(
        api_factory, tape_failure_rate=0.5, tape_max_attempts=1, tape_seed=3
    )
    task_id = await submit(api, input_task(DATASET, "user.testuser.tape", n_files_per_job=1))
    await runner.drain()
    made = await run_until_done(api, runner, clock, task_id)
    request = await request_of(api, task_id)
    assert request["status"] == "done"
    assert 0 < request["staged_files"] < 6
    assert sum(made) == request["staged_files"]
    assert (await task_row(api, task_id))["status"] == "finished"
    async with api.state.db.transaction(write=False) as conn:
        master = next(d for d in await tasks_db.datasets(conn, task_id) if d["type"] == "input")
    assert (master["nFiles"], master["nFilesFinished"], master["nFilesFailed"]) == (
        6,
        request["staged_files"],
        6 - request["staged_files"],
    )


async def test_a_second_task_reuses_the_request_and_a_done_one_reads_from_disk(api_factory) -> None:
    api, runner, clock = await make_world(api_factory)
    first = await submit(api, input_task(DATASET, "user.testuser.tape.a", n_files_per_job=6))
    await runner.drain()
    second = await submit(api, input_task(DATASET, "user.testuser.tape.b", n_files_per_job=6))
    await runner.drain()
    assert (await request_of(api, first))["request_id"] == (await request_of(api, second))["request_id"]
    assert (await task_row(api, second))["status"] == "ready"
    await run_until_done(api, runner, clock, first)
    await run_until_done(api, runner, clock, second)
    assert (await task_row(api, second))["status"] == "done"
    third = await submit(api, input_task(DATASET, "user.testuser.tape.c", n_files_per_job=6))
    await runner.drain()
    # Every file is on disk and the done request is reused: no staging, the input is complete at once.
    assert (await task_row(api, third))["status"] == "running"
    assert (await request_of(api, third))["status"] == "done"
    async with api.state.db.transaction(write=False) as conn:
        master = next(d for d in await tasks_db.datasets(conn, third) if d["type"] == "input")
    assert (master["status"], master["nFiles"]) == ("ready", 6)


@pytest.mark.parametrize("key", ["nFiles", "nEvents", "skipFilesUsedBy"])
async def test_tasks_reading_part_of_a_dataset_do_not_stage(api_factory, key: str) -> None:
    api, runner, _clock = await make_world(api_factory)
    params = {**input_task(DATASET, "user.testuser.tape", n_files_per_job=1), key: 2}
    task_id = await submit(api, params)
    await runner.drain()
    assert (await task_row(api, task_id))["status"] != "staging"
    async with api.state.db.transaction(write=False) as conn:
        assert await carousel_db.request_of_task(conn, task_id, DATASET) is None


async def test_a_killed_staging_task_cancels_its_request(api_factory) -> None:
    api, runner, _clock = await make_world(api_factory)
    task_id = await submit(api, input_task(DATASET, "user.testuser.tape", n_files_per_job=1))
    await runner.run_once("refiner")
    async with api.client(headers=api.token_headers("test user")) as client:
        reply = await client.post("/api/v1/task/kill", json={"task_id": task_id})
    assert reply.json()["success"] is True
    await runner.drain()
    assert (await task_row(api, task_id))["status"] == "aborted"
    assert (await request_of(api, task_id))["status"] == "cancelled"


async def test_a_carousel_step_that_dies_leaves_nothing_and_runs_again(api_factory, monkeypatch) -> None:
    api, runner, _clock = await make_world(api_factory)
    task_id = await submit(api, input_task(DATASET, "user.testuser.tape", n_files_per_job=1))
    await runner.run_once("refiner")

    async def dies(*_args, **_kwargs) -> None:
        raise RuntimeError("process killed")

    # The rule is submitted, then the process dies before the task is resumed.
    with monkeypatch.context() as patch:
        patch.setattr("bamboo.logic.carousel.task_status.change", dies)
        with pytest.raises(RuntimeError):
            await runner.run_once("carousel")
    request = await request_of(api, task_id)
    assert (request["status"], request["ddm_rule_id"]) == ("queued", None)
    async with api.state.db.transaction(write=False) as conn:
        assert await catalog_db.count_rules(conn, DATASET) == 0
    assert (await task_row(api, task_id))["status"] == "staging"
    # Run again: the same rule id, staged once.
    assert await runner.run_once("carousel") == 1
    assert await runner.run_once("carousel") == 1
    assert await runner.run_once("carousel") == 0
    assert (await task_row(api, task_id))["status"] == "ready"
    async with api.state.db.transaction(write=False) as conn:
        assert await catalog_db.count_rules(conn, DATASET) == 1
