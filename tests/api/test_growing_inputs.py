"""Inputs that grow: a noWaitParent child runs on its parent's outputs as they are produced, and
reload_input processes files the catalog gained (domain.md §2.2 ContentsFeeder), on both databases."""

from __future__ import annotations

from bamboo.db import tasks as tasks_db
from bamboo.logic.catalog import CatalogFile
from tests.api.test_task_flow import acquire, envelope, run_job, submit, task_status, world
from tests.tasks import input_task

# The fixture, imported for pytest to find.
__all__ = ["world"]

PARENT = "user.testuser.grow.parent"
CHILD = "user.testuser.grow.child"


async def register(api, dataset: str, names: list[str]) -> None:
    files = [CatalogFile(lfn=name, fsize=100, n_events=10) for name in names]
    async with api.state.db.transaction() as conn:
        await api.state.dm.register_files(conn, api.state.clock, dataset, files)


async def task_row(api, task_id: int) -> dict:
    async with api.state.db.transaction(write=False) as conn:
        return await tasks_db.get(conn, task_id)


async def master(api, task_id: int) -> dict:
    async with api.state.db.transaction(write=False) as conn:
        datasets = await tasks_db.datasets(conn, task_id)
    return next(d for d in datasets if d["masterID"] is None and d["type"] == "input")


def of_task(jobs: list[dict], task_id: int) -> list[dict]:
    return [job for job in jobs if int(job["taskID"]) == task_id]


async def test_child_runs_on_the_parents_outputs_as_they_are_produced(world) -> None:
    api, runner = world
    await register(api, f"{PARENT}.in", [f"grow.{i}.root" for i in range(3)])
    parent = await submit(api, input_task(f"{PARENT}.in", PARENT, n_files_per_job=1))
    await runner.drain()
    child = await submit(
        api,
        {
            **input_task(f"{PARENT}_out/", CHILD, n_files_per_job=1),
            "parent_tid": parent,
            "noWaitParent": True,
        },
    )
    await runner.drain()
    row = await task_row(api, child)
    assert (row["status"], row["errorDialog"]) == (
        "pending",
        f"pending until input dataset {PARENT}_out/ has files",
    )
    parent_jobs = await acquire(api, n_jobs=10)
    assert len(parent_jobs) == 3
    await run_job(api, parent_jobs[0])
    await runner.drain()
    # One output exists: the child has made a job for it while its parent still runs.
    assert await task_status(api, parent) == "running"
    assert await task_status(api, child) == "running"
    (first,) = of_task(await acquire(api, n_jobs=10), child)
    assert first["inFiles"] == f"{PARENT}.{parent}._000001.out.root"
    await run_job(api, first)
    await runner.drain()
    # Its only input is done, but more may come: the child is not finished.
    assert await task_status(api, child) == "running"
    assert (await master(api, child))["status"] == "toupdate"
    await run_job(api, parent_jobs[1])
    await run_job(api, parent_jobs[2])
    await runner.drain()
    assert await task_status(api, parent) == "done"
    later = of_task(await acquire(api, n_jobs=10), child)
    assert sorted(job["inFiles"] for job in later) == [
        f"{PARENT}.{parent}._{serial:06d}.out.root" for serial in (2, 3)
    ]
    dataset = await master(api, child)
    assert (dataset["status"], dataset["nFiles"]) == ("ready", 3)
    for job in later:
        await run_job(api, job)
    await runner.drain()
    assert await task_status(api, child) == "done"


async def test_child_of_a_parent_that_fails_is_ended_with_what_it_got(world) -> None:
    api, runner = world
    await register(api, f"{PARENT}.in", [f"grow.{i}.root" for i in range(2)])
    parent = await submit(api, input_task(f"{PARENT}.in", PARENT, n_files_per_job=1))
    await runner.drain()
    child = await submit(
        api,
        {
            **input_task(f"{PARENT}_out/", CHILD, n_files_per_job=1),
            "parent_tid": parent,
            "noWaitParent": True,
        },
    )
    await runner.drain()
    parent_jobs = await acquire(api, n_jobs=10)
    await run_job(api, parent_jobs[0])
    await runner.drain()
    (child_job,) = of_task(await acquire(api, n_jobs=10), child)
    await run_job(api, child_job)
    # The parent is killed with one output made: the child closes its input and ends.
    async with api.client(headers=api.token_headers("test user")) as client:
        body = envelope(await client.post("/api/v1/task/kill", json={"task_id": parent}))
    assert body["success"] is True, body
    await runner.drain()
    assert await task_status(api, parent) == "aborted"
    # All its input processed, its parent aborted: failed (domain.md §2.5), input closed as failed.
    assert await task_status(api, child) == "failed"
    dataset = await master(api, child)
    assert (dataset["status"], dataset["nFiles"], dataset["nFilesFinished"]) == ("failed", 1, 1)


async def test_reload_input_processes_the_files_added_since(world) -> None:
    api, runner = world
    dataset = "user.testuser.reload.in"
    await register(api, dataset, ["reload.0.root", "reload.1.root"])
    task_id = await submit(api, input_task(dataset, "user.testuser.reload", n_files_per_job=1))
    await runner.drain()
    for job in await acquire(api, n_jobs=10):
        await run_job(api, job)
    await runner.drain()
    assert await task_status(api, task_id) == "done"
    await register(api, dataset, ["reload.2.root", "reload.3.root"])
    async with api.client(headers=api.token_headers("test user")) as client:
        body = envelope(await client.post("/api/v1/task/reload_input", json={"task_id": task_id}))
    assert body["success"] is True, body
    await runner.drain()
    jobs = await acquire(api, n_jobs=10)
    assert sorted(job["inFiles"] for job in jobs) == ["reload.2.root", "reload.3.root"]
    for job in jobs:
        await run_job(api, job)
    await runner.drain()
    assert await task_status(api, task_id) == "done"
    row = await master(api, task_id)
    assert (row["status"], row["nFiles"], row["nFilesFinished"]) == ("done", 4, 4)
