"""The finaliser ends a whole batch of jobs in one transaction and a few statements, rolls back to
nothing when killed, and takes dataset rows in the same order as the generator (no deadlock)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa

from bamboo.db import catalog as catalog_db
from bamboo.db import tasks as tasks_db
from bamboo.db.schema import jobs
from bamboo.logic import finaliser
from tests.api.test_task_flow import acquire, output_report, report, submit, world
from tests.tasks import NO_INPUT_TASK

__all__ = ["world"]

COUNTERS = ("nFiles", "nFilesUsed", "nFilesFinished", "nFilesFailed", "nEventsUsed")


def no_input_task(name: str, n_jobs: int) -> dict[str, Any]:
    return {
        **NO_INPUT_TASK,
        "taskName": f"user.testuser.{name}/",
        "nEvents": 2 * n_jobs,
        "log": {
            **NO_INPUT_TASK["log"],
            "dataset": f"user.testuser.{name}.log/",
            "container": f"user.testuser.{name}.log/",
            "value": f"user.testuser.{name}.log.$JEDITASKID.${{SN}}.log.tgz",
        },
    }


async def end_jobs(api, taken: list[dict], final: str = "finished", output: str | None = None) -> None:
    """Report the jobs running, then with their final status (all in one bulk call each)."""
    await report(
        api, [{"job_id": j["PandaID"], "job_status": "running", "attempt_nr": j["attemptNr"]} for j in taken]
    )
    updates = []
    for job in taken:
        update = {"job_id": job["PandaID"], "job_status": final, "attempt_nr": job["attemptNr"]}
        if final == "finished":
            update["job_output_report"] = output_report(job) if output is None else output
        updates.append(update)
    await report(api, updates)


async def counters(api, task_id: int) -> dict[str, dict[str, int]]:
    async with api.state.db.transaction(write=False) as conn:
        return {d["type"]: {c: d[c] for c in COUNTERS} for d in await tasks_db.datasets(conn, task_id)}


async def job_statuses(api, panda_ids: list[int]) -> dict[int, tuple[str, Any]]:
    async with api.state.db.transaction(write=False) as conn:
        query = sa.select(jobs.c.PandaID, jobs.c.jobStatus, jobs.c.ddmErrorCode).where(
            jobs.c.PandaID.in_(panda_ids)
        )
        return {row[0]: (row[1], row[2]) for row in await conn.execute(query)}


async def test_a_killed_batch_leaves_nothing_and_the_rerun_counts_once(world) -> None:
    api, runner = world
    task_id = await submit(api, no_input_task("batch", 6))
    await runner.drain()
    taken = await acquire(api, n_jobs=6)
    assert len(taken) == 6
    await end_jobs(api, taken[:4])
    await end_jobs(api, taken[4:5], final="failed")
    # A report without the job's log: the job fails with the DDM error (ddmErrorCode 200).
    await end_jobs(api, taken[5:], output="{}")
    ids = [job["PandaID"] for job in taken]
    before = await counters(api, task_id)

    # Killed after the batch was written but before the commit: nothing of it is left.
    with pytest.raises(RuntimeError):
        async with api.state.db.transaction() as conn:
            assert await finaliser.finalise(conn, api.state.clock, api.state.dm) == 6
            raise RuntimeError("killed")
    assert await counters(api, task_id) == before
    assert {status for status, _ in (await job_statuses(api, ids)).values()} == {"holding"}

    assert await runner.run_once("finaliser") == 6
    assert await runner.run_once("finaliser") == 0
    statuses = await job_statuses(api, ids)
    assert [statuses[i] for i in ids] == [("finished", None)] * 4 + [("failed", None), ("failed", 200)]
    after = await counters(api, task_id)
    master, log_dataset = after["pseudo_input"], after["log"]
    assert master == {**before["pseudo_input"], "nFilesUsed": 4, "nFilesFinished": 4, "nEventsUsed": 8}
    assert log_dataset == {**before["log"], "nFiles": 6, "nFilesFinished": 4, "nFilesFailed": 2}
    async with api.state.db.transaction(write=False) as conn:
        registered = await catalog_db.files(conn, "user.testuser.batch.log/")
    assert sorted(row["lfn"] for row in registered) == sorted(job["outFiles"] for job in taken[:4])
    assert [row["position"] for row in registered] == [1, 2, 3, 4]


async def test_a_batch_costs_the_same_statements_whatever_its_size(world) -> None:
    api, runner = world
    await submit(api, no_input_task("sizes", 33))
    await runner.drain()
    taken = await acquire(api, n_jobs=33)
    assert len(taken) == 33
    executed: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        executed.append(statement)

    engine = api.state.db.engine.sync_engine
    sizes = []
    for batch in (taken[:3], taken[3:]):
        await end_jobs(api, batch)
        executed.clear()
        sa.event.listen(engine, "before_cursor_execute", count)
        try:
            assert await runner.run_once("finaliser") == len(batch)
        finally:
            sa.event.remove(engine, "before_cursor_execute", count)
        sizes.append(len(executed))
    # The first batch also creates the log dataset in the catalog: one statement more.
    assert sizes[1] <= sizes[0] < 20, sizes


async def _lock_waiters(api) -> int:
    """Sessions of this database waiting for a row lock."""
    async with api.state.db.transaction(write=False) as conn:
        query = sa.text(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return (await conn.execute(query)).scalar_one()


async def _until_waiters(api, count: int) -> None:
    for _ in range(500):
        if await _lock_waiters(api) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never {count} sessions waiting for a lock")


async def test_the_finaliser_and_the_generator_take_dataset_rows_in_one_order(world) -> None:
    """The interleaving that deadlocked: the finaliser waits for the task's first dataset row,
    then the generator starts its cycle, and the row is released. Taking dataset rows in different
    orders (the generator the output's serial numbers first, the finaliser the input's counters
    first) made each hold the row the other needed; now both take them in datasetID order."""
    api, runner = world
    if api.state.db.is_sqlite:
        pytest.skip("row locks: SQLite has one writer at a time, so two agents cannot interleave")
    task_id = await submit(api, no_input_task("order", 2))
    await runner.drain()
    first, second = await acquire(api, n_jobs=2)
    # The failed job's input goes back to ready: the generator has a retry to make for the task.
    await end_jobs(api, [second], final="failed")
    assert await runner.run_once("finaliser") == 1
    await end_jobs(api, [first])
    async with api.state.db.transaction(write=False) as conn:
        lowest = min(d["datasetID"] for d in await tasks_db.datasets(conn, task_id))
    released = asyncio.Event()

    async def blocker() -> None:
        async with api.state.db.transaction() as conn:
            await conn.execute(
                sa.text('SELECT 1 FROM task_datasets WHERE "datasetID" = :id FOR UPDATE'), {"id": lowest}
            )
            await released.wait()

    holding = asyncio.create_task(blocker())
    await asyncio.sleep(0.1)
    finalising = asyncio.create_task(runner.run_once("finaliser"))
    await _until_waiters(api, 1)
    generating = asyncio.create_task(runner.run_once("generator"))
    await _until_waiters(api, 2)
    released.set()
    await holding
    assert await asyncio.wait_for(finalising, 30) == 1
    assert await asyncio.wait_for(generating, 30) == 1
    statuses = await job_statuses(api, [first["PandaID"]])
    assert statuses[first["PandaID"]][0] == "finished"
