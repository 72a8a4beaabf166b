"""Event-service jobs after dispatch (domain.md §7.4, §7.5): consumers end by their ranges, each
jobset ends once in a merge job, a new consumer or a failure, and merge jobs end the jobset."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from bamboo.db import es_jobs
from bamboo.db import jobs as jobs_db
from bamboo.db import tasks as tasks_db
from bamboo.db.schema import job_files, jobs, task_files
from bamboo.logic import finaliser, job_watchdog
from bamboo.logic.catalog import CatalogFile
from bamboo.logic.job_watchdog import JobTimeouts
from tests.api.test_event_endpoints import call as event_call
from tests.api.test_job_watchdog import set_job
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
from tests.es_world import es_task, ranges_of, report_end, run_ranges
from tests.tasks import input_task

__all__ = ["world"]


async def jobs_of(api, jobset_id: int) -> list[dict[str, Any]]:
    async with api.state.db.transaction(write=False) as conn:
        query = sa.select(jobs).where(jobs.c.jobsetID == jobset_id).order_by(jobs.c.PandaID)
        return [dict(r) for r in (await conn.execute(query)).mappings()]


async def file_rows(api, file_ids: list[int]) -> list[dict[str, Any]]:
    async with api.state.db.transaction(write=False) as conn:
        query = sa.select(task_files).where(task_files.c.fileID.in_(file_ids)).order_by(task_files.c.fileID)
        return [dict(r) for r in (await conn.execute(query)).mappings()]


async def files_of(api, panda_id: int) -> list[dict[str, Any]]:
    async with api.state.db.transaction(write=False) as conn:
        return (await jobs_db.files_of(conn, [panda_id]))[panda_id]


def statuses(ranges: list[dict[str, Any]]) -> list[str]:
    return [r["status"] for r in ranges]


async def finalise(api) -> int:
    async with api.state.db.transaction() as conn:
        return await finaliser.finalise(conn, api.state.clock, api.state.dm)


async def test_all_ranges_done_make_one_merge_job_whose_end_finishes_the_task(world) -> None:
    api, runner = world
    es = await es_task(
        api,
        runner,
        "esmerge",
        n_consumers=2,
        esmerge={"transPath": "Merge_tf.py", "jobParameters": "--in ${IN} --out ${OUTPUT0} --log ${LOG0}"},
    )
    assert es.ranges == 4
    first, second = es.consumers
    await run_ranges(api, first, es.jobset_id, 2)
    await run_ranges(api, second, es.jobset_id, 2)
    async with api.state.db.transaction() as conn:
        await conn.execute(
            sa.insert(job_files),
            [
                {"PandaID": first, "lfn": "zip.1", "type": "zipoutput", "status": "ready", "GUID": "g1",
                 "jediTaskID": es.task_id, "dataset": "zips", "scope": "user.testuser", "attemptNr": 1},
            ],
        )  # fmt: skip
    # Both consumers end in the same batch: the jobset is decided once.
    await report_end(api, first)
    await report_end(api, second)
    assert await finalise(api) == 2
    members = await jobs_of(api, es.jobset_id)
    merges = [j for j in members if j["eventService"] == 2]
    assert len(merges) == 1
    (merge,) = merges
    assert [(j["jobStatus"], j["taskBufferErrorCode"]) for j in members if j["eventService"] == 1] == [
        ("finished", 112),
        ("finished", 112),
    ]
    assert merge["jobStatus"] == "activated"
    assert (merge["currentPriority"], merge["attemptNr"], merge["maxAttempt"]) == (5000, 1, 1)
    assert merge["transformation"] == "Merge_tf.py"
    assert merge["computingSite"] == "TEST_PQ"
    files = await files_of(api, merge["PandaID"])
    inputs = [f for f in files if f["type"] == "input"]
    assert [f["fileID"] for f in inputs if f["fileID"]] == es.file_ids
    assert "zip.1" in [f["lfn"] for f in inputs]
    outputs = {f["type"]: f["lfn"] for f in files if f["type"] in ("output", "log")}
    assert set(outputs) == {"output", "log"}
    # The data output is the one the jobset held: the merge job takes its row over.
    assert next(f["fileID"] for f in files if f["type"] == "output") == es.output_file_id
    (held,) = await file_rows(api, [es.output_file_id])
    assert (held["outPandaID"], held["status"]) == (merge["PandaID"], "running")
    # ${IN} names the jobset's input files (rendered as any template renders a file list).
    assert (
        merge["jobParameters"]
        == f"--in esmerge.[00,01].root --out {outputs['output']} --log {outputs['log']}"
    )
    assert statuses(await ranges_of(api, es.jobset_id)) == ["done"] * 4
    assert {r["PandaID"] for r in await file_rows(api, es.file_ids)} == {merge["PandaID"]}
    # Nothing left to decide: another finaliser run makes no second merge job.
    assert await finalise(api) == 0

    await report_end(api, merge["PandaID"])
    assert await finalise(api) == 1
    assert statuses(await ranges_of(api, es.jobset_id)) == ["merged"] * 4
    assert {r["status"] for r in await file_rows(api, [*es.file_ids, es.output_file_id])} == {"finished"}
    assert await runner.run_once("finisher") == 1
    async with api.state.db.transaction(write=False) as conn:
        task = await tasks_db.get(conn, es.task_id)
        datasets = {d["type"]: d for d in await tasks_db.datasets(conn, es.task_id)}
    assert task["status"] == "done"
    assert datasets["input"]["nFilesFinished"] == 2
    assert datasets["output"]["nFilesFinished"] == 1


async def test_a_consumer_ending_with_ranges_left_gets_a_successor(world) -> None:
    api, runner = world
    es = await es_task(api, runner, "esretry")
    (consumer,) = es.consumers
    await run_ranges(api, consumer, es.jobset_id, 1)
    await run_ranges(api, consumer, es.jobset_id, 1, status="sent")
    await run_ranges(api, consumer, es.jobset_id, 1, status="failed")
    await report_end(api, consumer, "failed")
    assert await finalise(api) == 1
    ranges = await ranges_of(api, es.jobset_id)
    assert [(r["status"], r["attemptNr"], r["PandaID"]) for r in ranges] == [
        ("done", 10, consumer),
        ("ready", 9, es.jobset_id),
        ("ready", 9, es.jobset_id),
        ("ready", 10, es.jobset_id),
    ]
    old, new = await jobs_of(api, es.jobset_id)
    assert (old["jobStatus"], old["taskBufferErrorCode"]) == ("failed", 111)
    assert new["eventService"] == 1 and new["jobStatus"] == "activated"
    assert (new["attemptNr"], new["currentPriority"]) == (2, old["currentPriority"] + 1)
    assert new["reported_status"] is None and new["startTime"] is None
    old_log = next(f for f in await files_of(api, old["PandaID"]) if f["type"] == "log")
    new_files = await files_of(api, new["PandaID"])
    new_log = next(f for f in new_files if f["type"] == "log")
    assert new_log["lfn"] != old_log["lfn"] and new_log["lfn"] in new["jobParameters"]
    assert [f["fileID"] for f in new_files if f["type"] == "input"] == es.file_ids
    # The input rows stay with the jobset.
    assert {(r["PandaID"], r["status"]) for r in await file_rows(api, es.file_ids)} == {
        (es.jobset_id, "running")
    }


async def test_a_consumer_without_a_finished_range_is_closed(world) -> None:
    api, runner = world
    es = await es_task(api, runner, "esnone", n_consumers=2)
    first, second = es.consumers
    await run_ranges(api, second, es.jobset_id, 4, status="running")
    await report_end(api, first)
    assert await finalise(api) == 1
    members = await jobs_of(api, es.jobset_id)
    assert [(j["jobStatus"], j["taskBufferErrorCode"]) for j in members] == [
        ("closed", 114),
        ("activated", None),
    ]


async def test_hopeless_ranges_fail_the_jobset_without_partial_acceptance(world) -> None:
    api, runner = world
    es = await es_task(api, runner, "eshopeless", range_attempts=1)
    (consumer,) = es.consumers
    await run_ranges(api, consumer, es.jobset_id, 3)
    await run_ranges(api, consumer, es.jobset_id, 1, status="failed")
    await report_end(api, consumer)
    assert await finalise(api) == 1
    ranges = await ranges_of(api, es.jobset_id)
    assert [(r["status"], r["attemptNr"]) for r in ranges] == [("discarded", 1)] * 3 + [("failed", 0)]
    (job,) = await jobs_of(api, es.jobset_id)
    assert (job["jobStatus"], job["taskBufferErrorCode"]) == ("finished", 116)
    rows = await file_rows(api, es.file_ids)
    # As a failed job's inputs: one more attempt, ready to be retried by a new jobset.
    assert [(r["status"], r["attemptNr"], r["failedAttempt"]) for r in rows] == [("ready", 1, 1)] * 2
    # The jobset's data output will never be written: failed, as a failed job's outputs.
    assert [r["status"] for r in await file_rows(api, [es.output_file_id])] == ["failed"]
    async with api.state.db.transaction(write=False) as conn:
        datasets = {d["type"]: d for d in await tasks_db.datasets(conn, es.task_id)}
    assert datasets["input"]["nFilesUsed"] == 0
    assert (datasets["output"]["nFiles"], datasets["output"]["nFilesFailed"]) == (1, 1)


async def test_with_partial_acceptance_hopeless_ranges_are_fatal_and_the_rest_merges(world) -> None:
    api, runner = world
    es = await es_task(api, runner, "espartial", range_attempts=1, split_rule="AP=1")
    (consumer,) = es.consumers
    await run_ranges(api, consumer, es.jobset_id, 3)
    await run_ranges(api, consumer, es.jobset_id, 1, status="failed")
    await report_end(api, consumer)
    assert await finalise(api) == 1
    assert statuses(await ranges_of(api, es.jobset_id)) == ["done"] * 3 + ["fatal"]
    merge = next(j for j in await jobs_of(api, es.jobset_id) if j["eventService"] == 2)
    assert merge["jobSubStatus"] == "partial"
    # Without esmergeSpec the merge job runs the task's own transformation and template.
    out = next(f["lfn"] for f in await files_of(api, merge["PandaID"]) if f["type"] == "output")
    assert merge["transformation"] == "runAna"
    assert merge["jobParameters"] == (f"-i \"['espartial.00.root', 'espartial.01.root']\" --outputFile={out}")
    await report_end(api, merge["PandaID"])
    assert await finalise(api) == 1
    assert statuses(await ranges_of(api, es.jobset_id)) == ["merged"] * 3 + ["fatal"]
    assert {r["status"] for r in await file_rows(api, es.file_ids)} == {"finished"}


async def test_the_jobset_fails_after_max_consumer_attempts(world) -> None:
    api, runner = world
    es = await es_task(api, runner, "esmax", split_rule="XJ=2")
    consumer = es.consumers[0]
    for attempt in (1, 2):
        await run_ranges(api, consumer, es.jobset_id, 1)
        await report_end(api, consumer, "failed")
        assert await finalise(api) == 1
        members = await jobs_of(api, es.jobset_id)
        assert members[-1]["attemptNr"] == (attempt + 1 if attempt < 2 else 2)
        consumer = members[-1]["PandaID"]
    assert len(members) == 2
    assert (members[-1]["jobStatus"], members[-1]["taskBufferErrorCode"]) == ("failed", 115)
    assert statuses(await ranges_of(api, es.jobset_id)) == ["discarded"] * 2 + ["cancelled"] * 2
    assert {r["status"] for r in await file_rows(api, es.file_ids)} == {"ready"}


async def test_the_jobset_of_a_retried_file_gets_the_whole_consumer_budget(world) -> None:
    api, runner = world
    es = await es_task(api, runner, "esbudget", split_rule="XJ=2")
    consumer = es.consumers[0]
    # A file failed twice before: its jobset's consumers start at attemptNr 3.
    async with api.state.db.transaction() as conn:
        await jobs_db.update(conn, consumer, attemptNr=3, maxAttempt=3)
    await run_ranges(api, consumer, es.jobset_id, 1)
    await report_end(api, consumer, "failed")
    assert await finalise(api) == 1
    first, successor = await jobs_of(api, es.jobset_id)
    assert (first["taskBufferErrorCode"], successor["attemptNr"]) == (111, 4)
    await run_ranges(api, successor["PandaID"], es.jobset_id, 1)
    await report_end(api, successor["PandaID"], "failed")
    assert await finalise(api) == 1
    members = await jobs_of(api, es.jobset_id)
    assert len(members) == 2
    assert (members[-1]["jobStatus"], members[-1]["taskBufferErrorCode"]) == ("failed", 115)


async def test_a_failed_merge_job_is_retried_then_fails_the_jobset(world) -> None:
    api, runner = world
    es = await es_task(api, runner, "esmergefail")
    consumer = es.consumers[0]
    # A second-generation consumer: the merge job gets maxAttempt 2.
    await run_ranges(api, consumer, es.jobset_id, 2)
    await report_end(api, consumer, "failed")
    assert await finalise(api) == 1
    consumer = (await jobs_of(api, es.jobset_id))[-1]["PandaID"]
    await run_ranges(api, consumer, es.jobset_id, 2)
    await report_end(api, consumer)
    assert await finalise(api) == 1
    merge = next(j for j in await jobs_of(api, es.jobset_id) if j["eventService"] == 2)
    assert (merge["attemptNr"], merge["maxAttempt"]) == (1, 2)
    await report_end(api, merge["PandaID"], "failed")
    assert await finalise(api) == 1
    merges = [j for j in await jobs_of(api, es.jobset_id) if j["eventService"] == 2]
    assert [(j["jobStatus"], j["attemptNr"]) for j in merges] == [("failed", 1), ("activated", 2)]
    assert {r["PandaID"] for r in await file_rows(api, es.file_ids)} == {merges[1]["PandaID"]}
    assert statuses(await ranges_of(api, es.jobset_id)) == ["done"] * 4
    await report_end(api, merges[1]["PandaID"], "failed")
    assert await finalise(api) == 1
    assert statuses(await ranges_of(api, es.jobset_id)) == ["discarded"] * 4
    rows = await file_rows(api, es.file_ids)
    assert [(r["status"], r["attemptNr"]) for r in rows] == [("ready", 1)] * 2


async def test_two_finalisers_ending_consumers_of_one_jobset_make_one_merge_job(world, monkeypatch) -> None:
    api, runner = world
    es = await es_task(api, runner, "esrace", n_consumers=2)
    first, second = es.consumers
    await run_ranges(api, first, es.jobset_id, 2)
    await run_ranges(api, second, es.jobset_id, 2)
    async with api.state.db.transaction() as conn:
        # Without logs: registering them in one dataset would serialise the two finalisers anyway.
        await conn.execute(sa.delete(job_files).where(job_files.c.PandaID.in_(es.consumers)))
        await conn.execute(sa.delete(task_files).where(task_files.c.outPandaID.in_(es.consumers)))
    await report_end(api, first)
    await report_end(api, second)
    # One job per batch: on PostgreSQL each finaliser claims one consumer (skipping the other's)
    # and both reach the jobset at once.
    monkeypatch.setattr(finaliser, "BATCH", 1)
    # Each finaliser, once it has read the jobset's ranges, waits a moment for the other to get
    # there too: without the jobset lock both would read them before either committed (and
    # neither would merge, each seeing the other's ranges still in flight).
    read = es_jobs.range_counts
    arrived = asyncio.Event()

    async def read_then_wait(conn, jobset_ids):
        rows = await read(conn, jobset_ids)
        if arrived.is_set():
            return rows
        arrived.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), 0.5)
        return rows

    monkeypatch.setattr(es_jobs, "range_counts", read_then_wait)
    assert sorted(await asyncio.gather(finalise(api), finalise(api))) == [1, 1]
    members = await jobs_of(api, es.jobset_id)
    assert [j["eventService"] for j in members] == [1, 1, 2]
    assert {j["jobStatus"] for j in members[:2]} == {"finished"}
    assert statuses(await ranges_of(api, es.jobset_id)) == ["done"] * 4


async def kill_jobs(api, panda_ids: list[int]) -> None:
    async with api.client(headers=api.token_headers("test user")) as client:
        body = envelope(await client.post("/api/v1/job/kill", json={"job_ids": panda_ids}))
    assert body["success"] is True, body


async def test_a_killed_consumer_of_a_running_task_hands_its_ranges_to_a_successor(world) -> None:
    api, runner = world
    es = await es_task(api, runner, "eskillone")
    (consumer,) = es.consumers
    await run_ranges(api, consumer, es.jobset_id, 1)
    await run_ranges(api, consumer, es.jobset_id, 1, status="sent")
    await kill_jobs(api, [consumer])
    ranges = await ranges_of(api, es.jobset_id)
    assert [(r["status"], r["attemptNr"]) for r in ranges] == [
        ("done", 10),
        ("ready", 9),
        ("ready", 10),
        ("ready", 10),
    ]
    old, new = await jobs_of(api, es.jobset_id)
    assert (old["jobStatus"], old["taskBufferErrorCode"]) == ("cancelled", 100)
    assert (new["jobStatus"], new["attemptNr"], new["eventService"]) == ("activated", 2, 1)


async def test_a_task_kill_cancels_the_jobsets_ranges_and_returns_its_inputs(world) -> None:
    api, runner = world
    es = await es_task(api, runner, "eskilltask", n_consumers=2)
    first, _second = es.consumers
    await run_ranges(api, first, es.jobset_id, 1)
    await run_ranges(api, first, es.jobset_id, 1, status="running")
    async with api.client(headers=api.token_headers("test user")) as client:
        assert envelope(await client.post("/api/v1/task/kill", json={"task_id": es.task_id}))["success"]
    await runner.drain()
    assert {j["jobStatus"] for j in await jobs_of(api, es.jobset_id)} == {"cancelled"}
    assert statuses(await ranges_of(api, es.jobset_id)) == ["discarded"] + ["cancelled"] * 3
    rows = await file_rows(api, es.file_ids)
    assert [(r["status"], r["attemptNr"]) for r in rows] == [("ready", 0)] * 2
    async with api.state.db.transaction(write=False) as conn:
        task = await tasks_db.get(conn, es.task_id)
        datasets = {d["type"]: d for d in await tasks_db.datasets(conn, es.task_id)}
    assert task["status"] == "aborted"
    assert datasets["input"]["nFilesUsed"] == 0
    assert [r["status"] for r in await file_rows(api, [es.output_file_id])] == ["cancelled"]


async def test_a_killed_merge_job_discards_the_done_ranges(world) -> None:
    api, runner = world
    es = await es_task(api, runner, "eskillmerge")
    (consumer,) = es.consumers
    await run_ranges(api, consumer, es.jobset_id, 4)
    await report_end(api, consumer)
    assert await finalise(api) == 1
    merge = next(j for j in await jobs_of(api, es.jobset_id) if j["eventService"] == 2)
    await kill_jobs(api, [merge["PandaID"]])
    assert statuses(await ranges_of(api, es.jobset_id)) == ["discarded"] * 4
    rows = await file_rows(api, es.file_ids)
    assert [(r["status"], r["proc_status"]) for r in rows] == [("ready", "cancelled")] * 2


async def watch_at(api, moment) -> int:
    async with api.state.db.transaction() as conn:
        return await job_watchdog.watch(conn, FixedClock(moment), JobTimeouts())


async def test_a_consumer_lost_without_a_finished_range_is_marked_es_heartbeat(world) -> None:
    api, runner = world
    es = await es_task(api, runner, "esheartbeat", n_consumers=2)
    first, second = es.consumers
    await run_ranges(api, first, es.jobset_id, 1)
    await run_ranges(api, second, es.jobset_id, 1, status="running")
    now = api.state.clock.now()
    for panda_id in es.consumers:
        await set_job(api, panda_id, jobStatus="running", modificationTime=now, startTime=now)
    assert await watch_at(api, now + timedelta(hours=3)) == 2
    members = await jobs_of(api, es.jobset_id)
    assert [(j["jobStatus"], j["jobSubStatus"]) for j in members] == [
        ("holding", None),
        ("holding", "es_heartbeat"),
    ]
    assert await finalise(api) == 2
    members = await jobs_of(api, es.jobset_id)
    assert [j["jobStatus"] for j in members] == ["failed", "failed", "activated"]


async def test_consumers_running_too_long_are_killed_with_es_toolong(world) -> None:
    api, runner = world
    es = await es_task(api, runner, "estoolong", n_consumers=2)
    first, second = es.consumers
    await run_ranges(api, first, es.jobset_id, 1, status="running")
    now = api.state.clock.now()
    await set_job(api, first, jobStatus="running", startTime=now, currentPriority=900)
    await set_job(api, second, jobStatus="running", startTime=now, currentPriority=899)
    later = now + timedelta(hours=25)
    for panda_id in es.consumers:
        await set_job(api, panda_id, modificationTime=later)
    assert await watch_at(api, later) == 1
    members = await jobs_of(api, es.jobset_id)
    assert [(j["jobStatus"], j["jobSubStatus"]) for j in members] == [
        ("closed", "es_toolong"),
        ("running", None),
    ]
    assert members[0]["taskBufferErrorDiag"] == "es_toolong: running longer than 24 h"
    # The range it held is ready again (another consumer is alive, so no new one is made).
    assert next((r["status"], r["attemptNr"]) for r in await ranges_of(api, es.jobset_id)) == ("ready", 9)


async def test_runonce_clones_race_for_the_semaphore_and_one_runs(world) -> None:
    api, runner = world
    es = await es_task(api, runner, "esrunonce", n_consumers=3, clones="runonce")
    taken = await asyncio.gather(acquire(api), acquire(api))
    handed = [job["PandaID"] for jobs_ in taken for job in jobs_]
    assert len(handed) == 1
    (winner,) = handed
    members = await jobs_of(api, es.jobset_id)
    assert {j["PandaID"]: (j["jobStatus"], j["taskBufferErrorCode"]) for j in members} == {
        panda_id: ("sent", None) if panda_id == winner else ("closed", 200) for panda_id in es.consumers
    }
    (semaphore,) = await ranges_of(api, es.jobset_id)
    assert (semaphore["status"], semaphore["PandaID"]) == ("sent", winner)
    assert await acquire(api) == []
    # The clone that ran finishes: the jobset's input rows are finished by it.
    await report_end(api, winner)
    assert await finalise(api) == 1
    assert {r["status"] for r in await file_rows(api, es.file_ids)} == {"finished"}


async def test_storeonce_keeps_the_first_clone_that_finishes(world) -> None:
    api, runner = world
    es = await es_task(api, runner, "esstoreonce", n_consumers=3, clones="storeonce")
    first, second, third = es.consumers
    for panda_id in (first, second):
        await set_job(api, panda_id, jobStatus="running")
    await report_end(api, second)
    assert await finalise(api) == 1
    members = {j["PandaID"]: j for j in await jobs_of(api, es.jobset_id)}
    assert members[second]["jobStatus"] == "finished"
    assert (members[first]["jobStatus"], members[first]["commandToPilot"]) == ("running", "tobekilled")
    assert (members[third]["jobStatus"], members[third]["taskBufferErrorCode"]) == ("closed", 200)
    assert {r["status"] for r in await file_rows(api, es.file_ids)} == {"finished"}
    (held,) = await file_rows(api, [es.output_file_id])
    assert (held["status"], held["outPandaID"]) == ("finished", second)
    # The first clone finishes later: closed, its outputs not kept.
    await report_end(api, first)
    assert await finalise(api) == 1
    async with api.state.db.transaction(write=False) as conn:
        late = (await jobs_db.get_many(conn, [first]))[first]
        log_rows = [r for r in (await tasks_db.rows_of_jobs(conn, [first, second]))]
    assert (late["jobStatus"], late["taskBufferErrorCode"]) == ("closed", 200)
    assert {(r["outPandaID"], r["status"]) for r in log_rows if r["type"] == "log"} == {
        (first, "cancelled"),
        (second, "finished"),
    }


async def test_killing_every_clone_returns_the_jobset_inputs(world) -> None:
    api, runner = world
    es = await es_task(api, runner, "esclonekill", n_consumers=2, clones="storeonce")
    await kill_jobs(api, es.consumers[:1])
    assert {r["status"] for r in await file_rows(api, es.file_ids)} == {"running"}
    await kill_jobs(api, es.consumers[1:])
    rows = await file_rows(api, es.file_ids)
    assert [(r["status"], r["attemptNr"]) for r in rows] == [("ready", 0)] * 2
    assert statuses(await ranges_of(api, es.jobset_id)) == ["cancelled"]
    assert [r["status"] for r in await file_rows(api, [es.output_file_id])] == ["cancelled"]
    async with api.state.db.transaction(write=False) as conn:
        datasets = {d["type"]: d for d in await tasks_db.datasets(conn, es.task_id)}
    assert datasets["input"]["nFilesUsed"] == 0


async def test_a_finishing_task_gets_no_new_consumer_and_merges_what_is_done(world) -> None:
    api, runner = world
    es = await es_task(api, runner, "esfinishing")
    (consumer,) = es.consumers
    await run_ranges(api, consumer, es.jobset_id, 1)
    async with api.state.db.transaction() as conn:
        await tasks_db.write_status(conn, es.task_id, "finishing")
    await report_end(api, consumer)
    assert await finalise(api) == 1
    members = await jobs_of(api, es.jobset_id)
    assert [(j["eventService"], j["jobSubStatus"]) for j in members] == [(1, None), (2, "partial")]
    assert members[0]["taskBufferErrorCode"] == 112
    assert statuses(await ranges_of(api, es.jobset_id)) == ["done"] + ["cancelled"] * 3
    # The merge job takes the file with a done range; the other goes back to the task untouched.
    rows = await file_rows(api, es.file_ids)
    assert [(r["PandaID"], r["status"], r["attemptNr"]) for r in rows] == [
        (members[1]["PandaID"], "running", 0),
        (es.jobset_id, "ready", 0),
    ]


async def test_a_finishing_task_returns_the_inputs_of_a_jobset_with_nothing_done(world) -> None:
    api, runner = world
    es = await es_task(api, runner, "esfinishnone")
    (consumer,) = es.consumers
    await run_ranges(api, consumer, es.jobset_id, 1, status="sent")
    async with api.state.db.transaction() as conn:
        await tasks_db.write_status(conn, es.task_id, "finishing")
    await report_end(api, consumer, "failed")
    assert await finalise(api) == 1
    assert [j["PandaID"] for j in await jobs_of(api, es.jobset_id)] == [consumer]
    assert statuses(await ranges_of(api, es.jobset_id)) == ["cancelled"] * 4
    rows = await file_rows(api, es.file_ids)
    assert [(r["status"], r["attemptNr"]) for r in rows] == [("ready", 0)] * 2


async def test_an_es_task_from_submission_to_done_through_the_api(world) -> None:
    """The whole life: the generator makes the jobset, a pilot runs the consumer and reports its
    ranges through event/*, the finaliser makes the merge job, the merge runs, the task is done."""
    api, runner = world
    files = [CatalogFile(lfn=f"full.{i:02d}.root", fsize=1000 + i, n_events=4) for i in range(2)]
    async with api.state.db.transaction() as conn:
        await api.state.dm.register_files(conn, api.state.clock, "user.testuser.full.in", files)
    params = input_task("user.testuser.full.in", "user.testuser.full", n_files_per_job=2)
    params.update(
        eventService=1,
        nEventsPerWorker=2,
        nEsConsumers=1,
        esmergeSpec={"transPath": "Merge_tf.py", "jobParameters": "--in ${IN} --out ${OUTPUT0}"},
    )
    task_id = await submit(api, params)
    await runner.drain()
    (consumer,) = await acquire(api)
    assert consumer["eventService"] == "True"
    await report(api, [{"job_id": consumer["PandaID"], "job_status": "running", "attempt_nr": 1}])
    body = await event_call(api, "acquire_event_ranges", job_id=consumer["PandaID"],
                            jobset_id=consumer["jobsetID"], n_ranges=10)  # fmt: skip
    taken = [item["eventRangeID"] for item in body["data"]["eventRanges"]]
    assert len(taken) == 4
    body = await event_call(
        api,
        "update_event_ranges",
        event_ranges=json.dumps([{"eventRangeID": rid, "eventStatus": "finished"} for rid in taken]),
    )
    assert body["data"]["Returns"] == [True] * 4
    await report(
        api,
        [{"job_id": consumer["PandaID"], "job_status": "finished", "attempt_nr": 1,
          "job_output_report": output_report(consumer)}],
    )  # fmt: skip
    await runner.drain()
    (merge,) = await acquire(api)
    assert merge["eventServiceMerge"] == "True"
    assert merge["inFiles"] == "full.00.root,full.01.root"
    assert merge["jobPars"] == f"--in full.[00,01].root --out {merge['outFiles'].split(',')[0]}"
    await run_job(api, merge)
    await runner.drain()
    assert await task_status(api, task_id) == "done"
    assert statuses(await ranges_of(api, consumer["jobsetID"])) == ["merged"] * 4
