"""Event-service, job-cloning and jumbo jobs made by the generator, on both databases (domain.md §7)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa

from bamboo.db.schema import events, jobs, task_files, tasks
from bamboo.logic import queues
from bamboo.logic.catalog import CatalogFile
from tests.api.conftest import ApiServer
from tests.api.test_task_admin import post, task_row
from tests.api.test_task_flow import acquire, envelope, submit, world
from tests.tasks import input_task

__all__ = ["world"]

DATASET = "user.testuser.es.input.v1"
NAME = "user.testuser.es.v1"


async def register(api: ApiServer, events_per_file: list[int | None]) -> None:
    files = [
        CatalogFile(lfn=f"evt.{i:02d}.root", fsize=1000 + i, n_events=n, guid=f"guid-{i}")
        for i, n in enumerate(events_per_file)
    ]
    async with api.state.db.transaction() as conn:
        await api.state.dm.register_files(conn, api.state.clock, DATASET, files)


def es_task(**extra: Any) -> dict[str, Any]:
    params = input_task(DATASET, NAME, n_files_per_job=2)
    params["jobParameters"].append({"type": "constant", "value": "--eventService=True", "es_only": True})
    params.update(eventService=1, nEventsPerWorker=4, nEsConsumers=2, maxAttemptES=5)
    params.update(extra)
    return params


async def add_queue(api: ApiServer, name: str, **spec: Any) -> None:
    async with api.state.db.transaction() as conn:
        await queues.put(conn, api.state.clock, {"name": name, "type": "unified", "corecount": 1, **spec})


async def rows(api: ApiServer, query: sa.Select) -> list[dict]:
    async with api.state.db.transaction() as conn:
        return [dict(row) for row in (await conn.execute(query)).mappings()]


async def task_jobs(api: ApiServer, task_id: int) -> list[dict]:
    return await rows(api, sa.select(jobs).where(jobs.c.jediTaskID == task_id).order_by(jobs.c.PandaID))


async def event_rows(api: ApiServer, task_id: int) -> list[dict]:
    return await rows(api, sa.select(events).where(events.c.jediTaskID == task_id).order_by(events.c.row_ID))


async def file_rows(api: ApiServer, task_id: int, kind: str) -> list[dict]:
    query = (
        sa.select(task_files)
        .where(task_files.c.jediTaskID == task_id, task_files.c.type == kind)
        .order_by(task_files.c.fileID)
    )
    return await rows(api, query)


async def submit_error(api: ApiServer, params: dict) -> str:
    async with api.client(headers=api.token_headers("test user")) as client:
        body = envelope(await client.post("/api/v1/task/submit", json={"task_parameters": params}))
    assert body["success"] is False and body["data"] == 4, body
    return body["message"]


async def test_an_es_task_makes_jobsets_of_consumers_and_their_event_rows(world) -> None:
    api, runner = world
    await register(api, [10, 10, 5])
    task_id = await submit(api, es_task())
    await runner.drain()

    task = await task_row(api, task_id)
    assert task["status"] == "running" and task["eventService"] == 1
    assert task["splitRule"] == "NF=2,MF=200,ES=4,EC=2,XA=5,XJ=3"

    consumers = await task_jobs(api, task_id)
    assert len(consumers) == 4
    assert {job["eventService"] for job in consumers} == {1}
    jobset_ids = sorted({job["jobsetID"] for job in consumers})
    assert len(jobset_ids) == 2
    assert [job["jobsetID"] for job in consumers] == [jobset_ids[0]] * 2 + [jobset_ids[1]] * 2
    # jobsetIDs come from the PandaID sequence but no job has one.
    assert not set(jobset_ids) & {job["PandaID"] for job in consumers}

    inputs = await file_rows(api, task_id, "input")
    assert [(row["lfn"], row["PandaID"], row["status"]) for row in inputs] == [
        ("evt.00.root", jobset_ids[0], "running"),
        ("evt.01.root", jobset_ids[0], "running"),
        ("evt.02.root", jobset_ids[1], "running"),
    ]
    file_ids = [row["fileID"] for row in inputs]
    ranges = await event_rows(api, task_id)
    assert [
        (
            r["PandaID"],
            r["jobsetID"],
            r["fileID"],
            r["job_processID"],
            r["def_min_eventID"],
            r["def_max_eventID"],
            r["attemptNr"],
            r["status"],
        )
        for r in ranges
    ] == [
        (jobset_ids[0], jobset_ids[0], file_ids[0], 0, 0, 3, 5, "ready"),
        (jobset_ids[0], jobset_ids[0], file_ids[0], 4, 4, 7, 5, "ready"),
        (jobset_ids[0], jobset_ids[0], file_ids[0], 8, 8, 9, 5, "ready"),
        (jobset_ids[0], jobset_ids[0], file_ids[1], 0, 0, 3, 5, "ready"),
        (jobset_ids[0], jobset_ids[0], file_ids[1], 4, 4, 7, 5, "ready"),
        (jobset_ids[0], jobset_ids[0], file_ids[1], 8, 8, 9, 5, "ready"),
        (jobset_ids[1], jobset_ids[1], file_ids[2], 0, 0, 3, 5, "ready"),
        (jobset_ids[1], jobset_ids[1], file_ids[2], 4, 4, 4, 5, "ready"),
    ]
    assert {r["datasetID"] for r in ranges} == {inputs[0]["datasetID"]}

    # Data outputs: one planned row per jobset, held by the jobset; logs: one per consumer.
    outputs = await file_rows(api, task_id, "output")
    assert [(row["lfn"], row["outPandaID"]) for row in outputs] == [
        (f"{NAME}.{task_id}._000001.out.root", jobset_ids[0]),
        (f"{NAME}.{task_id}._000002.out.root", jobset_ids[1]),
    ]
    logs = await file_rows(api, task_id, "log")
    assert [(row["lfn"], row["outPandaID"]) for row in logs] == [
        (f"{NAME}.log.{task_id}.{serial:06d}.log.tgz", job["PandaID"])
        for serial, job in enumerate(consumers, start=1)
    ]

    dispatched = await acquire(api, n_jobs=10)
    assert [job["PandaID"] for job in dispatched] == [job["PandaID"] for job in consumers]
    first = dispatched[0]
    assert first["eventService"] == "True"
    assert "eventServiceMerge" not in first and "cloneJob" not in first
    assert first["jobsetID"] == jobset_ids[0]
    assert first["inFiles"] == "evt.00.root,evt.01.root"
    # No data-output file: the jobset's merge job writes it; the consumer's own log only.
    assert first["outFiles"] == f"{NAME}.log.{task_id}.000001.log.tgz"
    assert first["jobPars"] == (
        "-i \"['evt.00.root', 'evt.01.root']\" "
        f"--outputFile={NAME}.{task_id}._000001.out.root --eventService=True"
    )
    assert dispatched[3]["jobPars"].endswith(
        f"--outputFile={NAME}.{task_id}._000002.out.root --eventService=True"
    )


async def test_es_only_items_and_keys_stay_out_of_normal_tasks(world) -> None:
    api, runner = world
    await register(api, [10, 10])
    params = es_task()
    for key in ("eventService", "nEventsPerWorker", "nEsConsumers", "maxAttemptES"):
        del params[key]
    task_id = await submit(api, params)
    await runner.drain()
    (job,) = await acquire(api, n_jobs=10)
    assert job["jobPars"].endswith("._000001.out.root")
    assert "eventService" not in job and "cloneJob" not in job and "eventServiceMerge" not in job
    assert await event_rows(api, task_id) == []
    assert (await task_row(api, task_id))["eventService"] is None


async def test_an_es_task_with_event_split_rows(world) -> None:
    api, runner = world
    await register(api, [6])
    params = es_task(nEventsPerWorker=2, nEsConsumers=1)
    del params["nFilesPerJob"]
    params["nEventsPerJob"] = 3
    task_id = await submit(api, params)
    await runner.drain()
    ranges = await event_rows(api, task_id)
    # Two jobs of 3 events each: ranges follow each chunk's startEvent..endEvent.
    assert [(r["def_min_eventID"], r["def_max_eventID"]) for r in ranges] == [(0, 1), (2, 2), (3, 4), (5, 5)]
    assert len({r["jobsetID"] for r in ranges}) == 2


async def test_an_es_task_over_files_of_unknown_size_waits(world) -> None:
    api, runner = world
    await register(api, [None])
    task_id = await submit(api, es_task())
    await runner.drain()
    task = await task_row(api, task_id)
    assert task["status"] == "pending"
    assert "evt.00.root" in task["errorDialog"] and "no known number of events" in task["errorDialog"]
    assert await task_jobs(api, task_id) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"nEventsPerWorker": None}, "'nEventsPerWorker' is required with eventService 1"),
        ({"nEventsPerWorker": 0}, "'nEventsPerWorker' must be a positive integer"),
        ({"nEsConsumers": 0}, "'nEsConsumers' must be a positive integer"),
        ({"nEsConsumers": 101}, "'nEsConsumers' must be at most 100"),
        ({"maxAttemptES": "3"}, "'maxAttemptES' must be an integer"),
        ({"nJumboJobs": -1}, "'nJumboJobs' must be a non-negative integer"),
        ({"eventService": 7}, "'eventService' must be 0, 1 (event service) or 2 (job cloning)"),
        ({"eventService": True}, "'eventService' must be 0, 1"),
        ({"useJobCloning": "twice"}, "'useJobCloning' must be runonce or storeonce"),
        ({"allowPartialFinish": 1}, "'allowPartialFinish' must be a boolean"),
        ({"esmergeSpec": "merge.sh"}, "'esmergeSpec' must be an object"),
        ({"esmergeSpec": {"transPath": "m"}}, "'esmergeSpec': 'jobParameters' must be a non-empty string"),
        (
            {"esmergeSpec": {"jobParameters": "x", "transPath": 3}},
            "'esmergeSpec': 'transPath' must be a string",
        ),
        ({"mergeOutput": True, "mergeSpec": {"jobParameters": "m"}}, "'mergeOutput' cannot be used"),
    ],
)
async def test_es_parameters_are_checked(world, change: dict, message: str) -> None:
    api, _ = world
    params = {key: value for key, value in {**es_task(), **change}.items() if value is not None}
    assert message in await submit_error(api, params)


async def test_es_settings_reach_the_split_rule(world) -> None:
    api, runner = world
    await register(api, [4])
    params = es_task(
        maxAttemptEsJob=4,
        allowPartialFinish=True,
        esmergeSpec={"transPath": "merge.sh", "jobParameters": "--in ${INPUT0}"},
    )
    task_id = await submit(api, params)
    await runner.drain()
    assert (await task_row(api, task_id))["splitRule"] == "NF=2,MF=200,ES=4,EC=2,XA=5,XJ=4,AP=1"


async def test_cloned_jobs_run_at_distinct_queues(world) -> None:
    api, runner = world
    for name in ("PQ_B", "PQ_C"):
        await add_queue(api, name)
    await register(api, [10, 10, 10])
    params = input_task(DATASET, NAME, n_files_per_job=2)
    del params["site"]
    params.update(useJobCloning="storeonce", nSitesPerJob=2)
    task_id = await submit(api, params)
    await runner.drain()
    task = await task_row(api, task_id)
    assert task["eventService"] == 2 and task["splitRule"] == "NF=2,MF=200,ES=1,UC=2,NS=2"
    clones = await task_jobs(api, task_id)
    assert [job["eventService"] for job in clones] == [3] * 4
    jobset_ids = sorted({job["jobsetID"] for job in clones})
    assert len(jobset_ids) == 2
    for jobset_id in jobset_ids:
        sites = [job["computingSite"] for job in clones if job["jobsetID"] == jobset_id]
        assert len(sites) == len(set(sites)) == 2
    inputs = await file_rows(api, task_id, "input")
    assert [row["PandaID"] for row in inputs] == [jobset_ids[0], jobset_ids[0], jobset_ids[1]]
    semaphores = await event_rows(api, task_id)
    columns = ("PandaID", "jobsetID", "fileID", "job_processID", "def_min_eventID", "def_max_eventID")
    assert [tuple(r[name] for name in (*columns, "attemptNr", "status")) for r in semaphores] == [
        (jobset_ids[0], jobset_ids[0], inputs[0]["fileID"], 0, 0, 0, 1, "ready"),
        (jobset_ids[1], jobset_ids[1], inputs[2]["fileID"], 0, 0, 0, 1, "ready"),
    ]
    dispatched = []
    for site in ("TEST_PQ", "PQ_B", "PQ_C"):
        dispatched += await acquire(api, n_jobs=10, site=site)
    assert len(dispatched) == 4
    assert {job["cloneJob"] for job in dispatched} == {"storeonce"}
    assert not any("eventService" in job for job in dispatched)
    # The clones of a jobset carry the same data output, each its own log.
    by_jobset: dict[int, list[dict]] = {}
    for job in dispatched:
        by_jobset.setdefault(job["jobsetID"], []).append(job)
    for same in by_jobset.values():
        data = {job["outFiles"].split(",")[0] for job in same}
        logs = {job["logFile"] for job in same}
        assert len(data) == 1 and len(logs) == 2


async def test_fewer_queues_make_fewer_clones(world) -> None:
    api, runner = world
    await add_queue(api, "PQ_B")
    await register(api, [10])
    params = input_task(DATASET, NAME)
    del params["site"]
    params.update(useJobCloning="runonce", nSitesPerJob=5)
    task_id = await submit(api, params)
    await runner.drain()
    clones = await task_jobs(api, task_id)
    assert sorted(job["computingSite"] for job in clones) == ["PQ_B", "TEST_PQ"]
    dispatched = await acquire(api, n_jobs=10)
    assert dispatched[0]["cloneJob"] == "runonce"


async def test_enable_and_disable_job_cloning_act_on_later_jobsets(world) -> None:
    api, runner = world
    await register(api, [10, 10])
    params = input_task(DATASET, NAME, n_files_per_job=1)
    params["site"] = "NEW_PQ,NEW_PQB"
    task_id = await submit(api, params)
    await runner.drain()
    assert (await task_row(api, task_id))["status"] == "pending"
    ok = {"success": True, "message": None, "data": None}
    assert await post(api, "enable_job_cloning", jedi_task_id=task_id, num_sites=2) == ok
    await add_queue(api, "NEW_PQ")
    await add_queue(api, "NEW_PQB")
    await runner.drain()
    clones = await task_jobs(api, task_id)
    assert len(clones) == 4 and {job["eventService"] for job in clones} == {3}
    assert {job["computingSite"] for job in clones} == {"NEW_PQ", "NEW_PQB"}

    # A second task, cloned from its parameters, then disabled before it has a queue.
    await register(api, [10, 10])
    other = {**input_task(DATASET, NAME + ".b"), "site": "LATER_PQ", "useJobCloning": "runonce"}
    other_id = await submit(api, other)
    await runner.drain()
    assert await post(api, "disable_job_cloning", jedi_task_id=other_id) == ok
    await add_queue(api, "LATER_PQ")
    await runner.drain()
    (job,) = await task_jobs(api, other_id)
    assert job["eventService"] == 0
    assert await event_rows(api, other_id) == []
    (dispatched,) = await acquire(api, site="LATER_PQ")
    assert "cloneJob" not in dispatched


async def test_jumbo_jobs_take_the_task_at_jumbo_queues(world) -> None:
    api, runner = world
    await add_queue(api, "JUMBO_A", useJumboJobs=True)
    await add_queue(api, "JUMBO_B", useJumboJobs=True)
    await register(api, [8])
    # Jumbo jobs go through brokerage too: a task pinned to one site would get none elsewhere.
    params = es_task(nJumboJobs=3, maxJumboPerSite=2, nEsConsumers=1)
    del params["site"]
    task_id = await submit(api, params)
    await runner.drain()
    task = await task_row(api, task_id)
    assert task["useJumbo"] == "R" and "NJ=3,MJ=2" in task["splitRule"]
    made = await task_jobs(api, task_id)
    consumers = [job for job in made if job["eventService"] == 1]
    jumbos = [job for job in made if job["eventService"] == 4]
    assert len(consumers) == 1
    assert [job["computingSite"] for job in jumbos] == ["JUMBO_A", "JUMBO_A", "JUMBO_B"]
    (jumbo_set,) = {job["jobsetID"] for job in jumbos}
    assert jumbo_set != consumers[0]["jobsetID"]
    # Jumbo jobs hold no input rows; the ranges stay with the consumers' jobset.
    assert {row["PandaID"] for row in await file_rows(api, task_id, "input")} == {consumers[0]["jobsetID"]}
    (jumbo,) = [job for job in await acquire(api, n_jobs=10, site="JUMBO_B") if job["jobsetID"] == jumbo_set]
    assert jumbo["eventService"] == "True" and jumbo["inFiles"] == ""
    assert jumbo["outFiles"] == jumbo["logFile"]
    # Made once: a later cycle adds none.
    await runner.drain()
    assert len(await task_jobs(api, task_id)) == 4


async def test_enable_jumbo_jobs_on_a_running_es_task(world) -> None:
    api, runner = world
    await add_queue(api, "JUMBO_A", useJumboJobs=True)
    await register(api, [8])
    params = es_task(nEsConsumers=1)
    params["site"] = "TEST_PQ,JUMBO_A"
    task_id = await submit(api, params)
    await runner.drain()
    assert len(await task_jobs(api, task_id)) == 1
    done = {"success": True, "message": "done", "data": 0}
    assert await post(api, "enable_jumbo_jobs", task_id=task_id, jumbo_jobs_total=2) == done
    await runner.drain()
    jumbos = [job for job in await task_jobs(api, task_id) if job["eventService"] == 4]
    assert [job["computingSite"] for job in jumbos] == ["JUMBO_A", "JUMBO_A"]
    assert (await task_row(api, task_id))["useJumbo"] == "R"


async def test_no_jumbo_jobs_without_a_jumbo_queue_or_ready_ranges(world) -> None:
    api, runner = world
    await register(api, [8])
    params = es_task(nJumboJobs=2, nEsConsumers=1)
    params["site"] = "TEST_PQ,JUMBO_A"
    task_id = await submit(api, params)
    await runner.drain()
    assert [job["eventService"] for job in await task_jobs(api, task_id)] == [1]
    assert (await task_row(api, task_id))["useJumbo"] == "W"
    # A jumbo queue appears, but no range is ready any more.
    async with api.state.db.transaction() as conn:
        await conn.execute(sa.update(events).where(events.c.jediTaskID == task_id).values(status="sent"))
    await add_queue(api, "JUMBO_A", useJumboJobs=True)
    await runner.drain()
    assert [job["eventService"] for job in await task_jobs(api, task_id)] == [1]
    async with api.state.db.transaction() as conn:
        await conn.execute(sa.update(events).where(events.c.jediTaskID == task_id).values(status="ready"))
    await runner.drain()
    assert sorted(job["eventService"] for job in await task_jobs(api, task_id)) == [1, 4, 4]
    assert (await task_row(api, task_id))["useJumbo"] == "R"
    # The tasks table records nothing more for the task.
    assert (await rows(api, sa.select(tasks.c.status).where(tasks.c.jediTaskID == task_id)))[0]["status"] == (
        "running"
    )


async def test_ten_thousand_ranges_take_one_cycle_of_a_few_statements(world) -> None:
    api, runner = world
    await register(api, [500] * 20)
    params = es_task(nEventsPerWorker=1, nEsConsumers=1)
    params["nFilesPerJob"] = 1
    task_id = await submit(api, params)
    assert await runner.run_once("refiner") == 1
    executed: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        executed.append(statement)

    engine = api.state.db.engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", count)
    started = time.monotonic()
    try:
        assert await runner.run_once("generator") == 20
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    elapsed = time.monotonic() - started
    ranges = await event_rows(api, task_id)
    assert len(ranges) == 10_000
    assert len({(r["fileID"], r["job_processID"]) for r in ranges}) == 10_000
    assert sum("INSERT INTO events" in statement for statement in executed) == 2
    assert len(executed) < 80, len(executed)
    assert elapsed < 10, elapsed


async def test_the_jobs_of_a_jobset_share_their_random_seed(world) -> None:
    api, runner = world
    await register(api, [4, 4, 4])
    params = es_task()
    params["jobParameters"].append(
        {"type": "template", "param_type": "number", "value": "--seed=${RNDMSEED}"}
    )
    await submit(api, params)
    await runner.drain()
    seeds = [
        (job["jobsetID"], job["jobPars"].rsplit("--seed=", 1)[1]) for job in await acquire(api, n_jobs=10)
    ]
    assert len(seeds) == 4
    assert seeds[0][1] == seeds[1][1] != seeds[2][1] == seeds[3][1]
    assert seeds[0][0] == seeds[1][0] != seeds[2][0]
