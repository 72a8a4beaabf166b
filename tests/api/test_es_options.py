"""Event-service options at a consumer's end (domain.md §1.4, §7.1, §7.4): decAttOnFailedES (XF),
notDiscardEvents (ND), failed ranges with partial progress, and a finishing task's jobsets."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from bamboo.db import jobs as jobs_db
from bamboo.db import tasks as tasks_db
from bamboo.db.schema import events, job_files
from bamboo.logic.es_generation import row_ranges, uncovered
from tests.api.test_es_generation import es_task as es_task_params
from tests.api.test_es_generation import register, submit_error, task_row
from tests.api.test_es_lifecycle import file_rows, files_of, finalise, jobs_of, kill_jobs, statuses
from tests.api.test_job_watchdog import set_job
from tests.api.test_task_flow import envelope, submit, world
from tests.es_world import es_task, ranges_of, report_end, run_ranges

__all__ = ["world"]


def shape(ranges: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (r["fileID"], r["def_min_eventID"], r["def_max_eventID"], r["status"], r["attemptNr"]) for r in ranges
    ]


# --- task parameters ----------------------------------------------------------------------------


async def test_the_options_reach_the_split_rule(world) -> None:
    api, runner = world
    await register(api, [4])
    task_id = await submit(api, es_task_params(decAttOnFailedES=True, notDiscardEvents=True))
    await runner.drain()
    assert (await task_row(api, task_id))["splitRule"] == "NF=2,MF=200,ES=4,EC=2,XA=5,XJ=3,XF=1,ND=1"


@pytest.mark.parametrize("key", ["decAttOnFailedES", "notDiscardEvents"])
async def test_the_options_must_be_booleans(world, key: str) -> None:
    api, _ = world
    assert f"task parameter {key!r} must be a boolean, got 1" in await submit_error(
        api, es_task_params(**{key: 1})
    )


# --- decAttOnFailedES ---------------------------------------------------------------------------


@pytest.mark.parametrize(("rule", "unprocessed"), [(None, 9), ("XF=1", 10)])
async def test_only_failed_ranges_lose_an_attempt_with_dec_att_on_failed(world, rule, unprocessed) -> None:
    api, runner = world
    es = await es_task(api, runner, "esxf", split_rule=rule)
    (consumer,) = es.consumers
    await run_ranges(api, consumer, es.jobset_id, 1)
    await run_ranges(api, consumer, es.jobset_id, 1, status="sent")
    await run_ranges(api, consumer, es.jobset_id, 1, status="running")
    await run_ranges(api, consumer, es.jobset_id, 1, status="failed")
    await report_end(api, consumer, "failed")
    assert await finalise(api) == 1
    ranges = await ranges_of(api, es.jobset_id)
    assert [(r["status"], r["attemptNr"], r["PandaID"]) for r in ranges] == [
        ("done", 10, consumer),
        ("ready", unprocessed, es.jobset_id),
        ("ready", unprocessed, es.jobset_id),
        ("ready", 9, es.jobset_id),
    ]


async def test_with_dec_att_on_failed_a_failed_range_still_runs_out_of_attempts(world) -> None:
    api, runner = world
    es = await es_task(api, runner, "esxfhopeless", range_attempts=1, split_rule="XF=1")
    (consumer,) = es.consumers
    await run_ranges(api, consumer, es.jobset_id, 3, status="sent")
    await run_ranges(api, consumer, es.jobset_id, 1, status="failed")
    await report_end(api, consumer, "failed")
    assert await finalise(api) == 1
    ranges = await ranges_of(api, es.jobset_id)
    assert [(r["status"], r["attemptNr"]) for r in ranges] == [("ready", 1)] * 3 + [("failed", 0)]


async def test_with_dec_att_on_failed_a_killed_consumer_hands_its_ranges_back_whole(world) -> None:
    api, runner = world
    es = await es_task(api, runner, "esxfkill", split_rule="XF=1")
    (consumer,) = es.consumers
    await run_ranges(api, consumer, es.jobset_id, 2, status="running")
    await kill_jobs(api, [consumer])
    ranges = await ranges_of(api, es.jobset_id)
    assert [(r["status"], r["attemptNr"]) for r in ranges] == [("ready", 10)] * 4


# --- notDiscardEvents ---------------------------------------------------------------------------


async def test_a_failed_jobset_keeps_its_done_ranges_and_the_retry_skips_them(world) -> None:
    api, runner = world
    es = await es_task(api, runner, "esnd", range_attempts=1, split_rule="ND=1")
    (consumer,) = es.consumers
    await run_ranges(api, consumer, es.jobset_id, 3)
    await run_ranges(api, consumer, es.jobset_id, 1, status="failed")
    async with api.state.db.transaction() as conn:
        await conn.execute(
            sa.insert(job_files),
            [{"PandaID": consumer, "lfn": "zip.old", "type": "zipoutput", "status": "ready", "GUID": "g0",
              "jediTaskID": es.task_id, "dataset": "zips", "scope": "user.testuser", "attemptNr": 1}],
        )  # fmt: skip
    await report_end(api, consumer)
    assert await finalise(api) == 1
    first, second = es.file_ids
    assert shape(await ranges_of(api, es.jobset_id)) == [
        (first, 0, 1, "done", 1),
        (first, 2, 3, "done", 1),
        (second, 0, 1, "done", 1),
        (second, 2, 3, "failed", 0),
    ]
    (job,) = await jobs_of(api, es.jobset_id)
    assert job["taskBufferErrorCode"] == 116
    assert [(r["status"], r["attemptNr"]) for r in await file_rows(api, es.file_ids)] == [("ready", 1)] * 2

    # The generator retries the files: the new jobset makes only the events not done yet, and
    # adopts the done ranges (one ready range instead of four).
    assert await runner.run_once("generator") >= 1
    async with api.state.db.transaction(write=False) as conn:
        query = sa.select(events).where(events.c.jediTaskID == es.task_id).order_by(events.c.row_ID)
        every = [dict(r) for r in (await conn.execute(query)).mappings()]
    retry_id = next(r["jobsetID"] for r in every if r["status"] == "ready")
    assert retry_id != es.jobset_id
    assert shape(await ranges_of(api, retry_id)) == [
        (first, 0, 1, "done", 1),
        (first, 2, 3, "done", 1),
        (second, 0, 1, "done", 1),
        (second, 2, 3, "ready", 1),
    ]
    assert {r["PandaID"] for r in every if r["status"] == "done"} == {consumer}
    (new,) = [j for j in await jobs_of(api, retry_id) if j["eventService"] == 1]
    await set_job(api, new["PandaID"], jobStatus="running")
    await run_ranges(api, new["PandaID"], retry_id, 1)
    await report_end(api, new["PandaID"])
    assert await finalise(api) == 1
    merge = next(j for j in await jobs_of(api, retry_id) if j["eventService"] == 2)
    assert merge["jobSubStatus"] is None
    # The merge job also reads the zip of the earlier consumer whose ranges it merges.
    assert "zip.old" in [f["lfn"] for f in await files_of(api, merge["PandaID"]) if f["type"] == "input"]
    await report_end(api, merge["PandaID"])
    assert await finalise(api) == 1
    assert statuses(await ranges_of(api, retry_id)) == ["merged"] * 4
    assert {r["status"] for r in await file_rows(api, es.file_ids)} == {"finished"}


async def test_without_not_discard_events_a_retry_makes_every_range_again(world) -> None:
    api, runner = world
    es = await es_task(api, runner, "esnond", range_attempts=1)
    (consumer,) = es.consumers
    await run_ranges(api, consumer, es.jobset_id, 3)
    await run_ranges(api, consumer, es.jobset_id, 1, status="failed")
    await report_end(api, consumer)
    assert await finalise(api) == 1
    assert statuses(await ranges_of(api, es.jobset_id)) == ["discarded"] * 3 + ["failed"]
    assert await runner.run_once("generator") >= 1
    async with api.state.db.transaction(write=False) as conn:
        query = sa.select(events).where(events.c.jediTaskID == es.task_id, events.c.status == "ready")
        assert len((await conn.execute(query)).all()) == 4


async def test_a_killed_merge_job_keeps_the_done_ranges_with_not_discard_events(world) -> None:
    api, runner = world
    es = await es_task(api, runner, "esndkill", split_rule="ND=1")
    (consumer,) = es.consumers
    await run_ranges(api, consumer, es.jobset_id, 4)
    await report_end(api, consumer)
    assert await finalise(api) == 1
    merge = next(j for j in await jobs_of(api, es.jobset_id) if j["eventService"] == 2)
    await kill_jobs(api, [merge["PandaID"]])
    assert statuses(await ranges_of(api, es.jobset_id)) == ["done"] * 4
    assert {r["status"] for r in await file_rows(api, es.file_ids)} == {"ready"}


async def test_a_merge_job_failing_for_good_keeps_the_done_ranges_with_not_discard_events(world) -> None:
    api, runner = world
    es = await es_task(api, runner, "esndmerge", split_rule="ND=1")
    (consumer,) = es.consumers
    await run_ranges(api, consumer, es.jobset_id, 4)
    await report_end(api, consumer)
    assert await finalise(api) == 1
    merge = next(j for j in await jobs_of(api, es.jobset_id) if j["eventService"] == 2)
    await report_end(api, merge["PandaID"], "failed")
    assert await finalise(api) == 1
    assert statuses(await ranges_of(api, es.jobset_id)) == ["done"] * 4
    assert [(r["status"], r["attemptNr"]) for r in await file_rows(api, es.file_ids)] == [("ready", 1)] * 2


def test_new_ranges_leave_out_the_events_already_done() -> None:
    assert uncovered(0, 9, [(2, 3), (6, 6)]) == [(0, 1), (4, 5), (7, 9)]
    assert uncovered(0, 9, [(0, 9)]) == []
    assert uncovered(5, 9, [(0, 4), (8, 20)]) == [(5, 7)]
    assert uncovered(0, 4, [(1, 3), (2, 2)]) == [(0, 0), (4, 4)]
    row = {"startEvent": None, "endEvent": None, "nEvents": 10, "lfn": "f"}
    # Each stretch between done ranges is cut on its own: no range spans a done event.
    assert row_ranges(row, 3, [(3, 4)]) == [(0, 2), (5, 7), (8, 9)]
    assert row_ranges(row, 3) == [(0, 2), (3, 5), (6, 8), (9, 9)]
    split = {"startEvent": 10, "endEvent": 19, "nEvents": 100, "lfn": "f"}
    assert row_ranges(split, 5, [(10, 12)]) == [(13, 17), (18, 19)]


# --- partial progress ---------------------------------------------------------------------------


async def set_progress(api, row_id: int, upto: int) -> None:
    async with api.state.db.transaction() as conn:
        await conn.execute(
            sa.update(events).where(events.c.row_ID == row_id).values(processed_upto_eventID=upto)
        )


@pytest.mark.parametrize(
    ("attempts", "rule", "left"),
    [(10, None, ("ready", 9)), (1, "AP=1", ("fatal", 0))],
)
async def test_a_failed_range_with_partial_progress_is_split(world, attempts, rule, left) -> None:
    api, runner = world
    es = await es_task(api, runner, "esupto", events_per_range=4, range_attempts=attempts, split_rule=rule)
    (consumer,) = es.consumers
    (partly,) = await run_ranges(api, consumer, es.jobset_id, 1, status="failed")
    await run_ranges(api, consumer, es.jobset_id, 1, status="sent")
    await set_progress(api, partly, 1)
    await report_end(api, consumer)
    assert await finalise(api) == 1
    first, second = es.file_ids
    ranges = await ranges_of(api, es.jobset_id)
    assert [(*row, r["PandaID"]) for row, r in zip(shape(ranges), ranges, strict=True)] == [
        (first, 0, 1, "done", attempts, consumer),
        (second, 0, 3, *left, es.jobset_id),
        (first, 2, 3, *left, es.jobset_id),
    ]
    assert ranges[2]["job_processID"] == 2 and ranges[2]["processed_upto_eventID"] is None
    members = await jobs_of(api, es.jobset_id)
    # It processed events: the consumer ends finished, not closed for having done nothing.
    assert members[0]["jobStatus"] == "finished"
    # With attempts left a new consumer takes the rest; without, the done part merges (AP).
    assert members[1]["eventService"] == (1 if attempts > 1 else 2)


async def test_progress_outside_the_range_is_no_partial_progress(world) -> None:
    api, runner = world
    es = await es_task(api, runner, "esuptoout", n_files=1, events_per_range=4)
    (consumer,) = es.consumers
    (row,) = await run_ranges(api, consumer, es.jobset_id, 1, status="failed")
    await set_progress(api, row, 3)  # the range's last event: nothing is left to split off
    await report_end(api, consumer, "failed")
    assert await finalise(api) == 1
    assert shape(await ranges_of(api, es.jobset_id)) == [(es.file_ids[0], 0, 3, "ready", 9)]


# --- a finishing task ---------------------------------------------------------------------------


async def test_a_consumer_killed_in_a_finishing_task_does_not_fail_its_survivor(world) -> None:
    """A consumer killed while its task finishes leaves cancelled ranges; the consumer that kept
    running ends later: the jobset merges what is done instead of failing (and discarding it)."""
    api, runner = world
    es = await es_task(api, runner, "esfinkill", n_consumers=2)
    killed, survivor = es.consumers
    await run_ranges(api, killed, es.jobset_id, 1)
    await run_ranges(api, killed, es.jobset_id, 1, status="sent")
    await run_ranges(api, survivor, es.jobset_id, 2)
    for panda_id in es.consumers:
        await set_job(api, panda_id, jobStatus="running")
    async with api.state.db.transaction() as conn:
        await tasks_db.write_status(conn, es.task_id, "finishing")
    await kill_jobs(api, [killed])
    assert statuses(await ranges_of(api, es.jobset_id)) == ["done", "cancelled", "finished", "finished"]
    await report_end(api, survivor)
    assert await finalise(api) == 1
    members = await jobs_of(api, es.jobset_id)
    assert [(j["eventService"], j["jobStatus"]) for j in members] == [
        (1, "cancelled"),
        (1, "finished"),
        (2, "activated"),
    ]
    merge = members[2]
    assert merge["jobSubStatus"] == "partial"
    assert members[1]["taskBufferErrorCode"] == 112
    await report_end(api, merge["PandaID"])
    assert await finalise(api) == 1
    assert statuses(await ranges_of(api, es.jobset_id)) == ["merged", "cancelled", "merged", "merged"]
    assert {r["status"] for r in await file_rows(api, [*es.file_ids, es.output_file_id])} == {"finished"}


async def test_a_soft_finish_lets_a_jobset_merge_what_is_done(world) -> None:
    api, runner = world
    es = await es_task(api, runner, "essoftfin", n_consumers=2)
    running, _queued = es.consumers
    await set_job(api, running, jobStatus="running")
    await run_ranges(api, running, es.jobset_id, 2)
    async with api.client(headers=api.token_headers("test user")) as client:
        body = envelope(await client.post("/api/v1/task/finish", json={"task_id": es.task_id, "soft": True}))
    assert body["success"] is True, body
    await runner.drain()
    # The queued consumer is killed; the running one goes on.
    members = await jobs_of(api, es.jobset_id)
    assert [j["jobStatus"] for j in members] == ["running", "cancelled"]
    await report_end(api, running)
    await runner.drain()
    merge = next(j for j in await jobs_of(api, es.jobset_id) if j["eventService"] == 2)
    # The soft finish leaves the ES merge job alone and waits for it.
    assert merge["jobStatus"] == "activated" and merge["jobSubStatus"] == "partial"
    async with api.state.db.transaction(write=False) as conn:
        assert (await tasks_db.get(conn, es.task_id))["status"] == "finishing"
    await report_end(api, merge["PandaID"])
    await runner.drain()
    assert statuses(await ranges_of(api, es.jobset_id)) == ["merged"] * 2 + ["cancelled"] * 2
    async with api.state.db.transaction(write=False) as conn:
        task = await tasks_db.get(conn, es.task_id)
        merged = (await jobs_db.get_many(conn, [merge["PandaID"]]))[merge["PandaID"]]
    assert merged["jobStatus"] == "finished"
    # The file with done ranges was merged; the other, never processed, is not counted finished.
    rows = await file_rows(api, es.file_ids)
    assert [(r["status"], r["proc_status"]) for r in rows] == [
        ("finished", "finished"),
        ("ready", "exhausted"),
    ]
    assert [
        f["fileID"] for f in await files_of(api, merge["PandaID"]) if f["type"] == "input"
    ] == es.file_ids[:1]
    assert task["status"] == "finished"


async def test_a_hard_finish_makes_no_merge_job(world) -> None:
    api, runner = world
    es = await es_task(api, runner, "eshardfin")
    (consumer,) = es.consumers
    await set_job(api, consumer, jobStatus="running")
    await run_ranges(api, consumer, es.jobset_id, 2)
    async with api.client(headers=api.token_headers("test user")) as client:
        body = envelope(await client.post("/api/v1/task/finish", json={"task_id": es.task_id}))
    assert body["success"] is True, body
    await runner.drain()
    assert [j["eventService"] for j in await jobs_of(api, es.jobset_id)] == [1]
    assert statuses(await ranges_of(api, es.jobset_id)) == ["discarded"] * 2 + ["cancelled"] * 2
