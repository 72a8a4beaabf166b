"""Brokerage through the generator and re-brokerage (domain.md §6, §10.3): queue statuses, unified
queues, and jobs sent back to their task when their queue goes offline, idles, or is reassigned;
each re-brokered job ends closed with kill code 51 and its new job lands at another queue."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from bamboo.config import Settings
from bamboo.db import jobs as jobs_db
from bamboo.db.schema import jobs, tasks
from bamboo.logic import queues
from bamboo.logic.catalog import CatalogFile
from bamboo.logic.rebrokerage import RebrokerageLimits
from tests.api.test_job_endpoints import call
from tests.api.test_job_watchdog import job_row, pilot_says, pilots_seen, set_job, watch
from tests.api.test_task_flow import acquire, submit, world
from tests.tasks import input_task

__all__ = ["world"]

DATASET = "user.testuser.rebrokered.v1"
OTHER = "OTHER_PQ"


def anywhere(dataset: str, name: str, n_files_per_job: int) -> dict:
    """The test analysis task without its ``site``: brokerage chooses among all queues."""
    params = input_task(dataset, name, n_files_per_job=n_files_per_job)
    del params["site"]
    return params


async def put_queue(api, **spec) -> None:
    async with api.state.db.transaction() as conn:
        await queues.put(conn, api.state.clock, {"type": "unified", "corecount": 1, **spec})


async def set_queue(api, name: str, **changes) -> None:
    async with api.state.db.transaction() as conn:
        await queues.update(conn, api.state.clock, name, changes)


async def queued_job(api, runner, name: str = "user.testuser.rebro.v1") -> dict:
    """An analysis task with one job, activated at TEST_PQ (the only queue so far)."""
    files = [CatalogFile(lfn=f"{name}.{i:02d}.root", fsize=1000 + i, n_events=10) for i in range(2)]
    async with api.state.db.transaction() as conn:
        await api.state.dm.register_files(conn, api.state.clock, DATASET, files)
    await submit(api, anywhere(DATASET, name, n_files_per_job=2))
    await runner.drain()
    async with api.state.db.transaction(write=False) as conn:
        query = sa.select(jobs.c.PandaID).where(jobs.c.jobStatus == "activated")
        (panda_id,) = (await conn.execute(query)).scalars().all()
    job = await job_row(api, panda_id)
    assert job["computingSite"] == "TEST_PQ"
    return job


async def assert_rebrokered(api, runner, job: dict, site: str = OTHER) -> dict:
    """The job ended closed by kill code 51, and the task made a new job for its inputs at
    ``site``, which a pilot there gets."""
    row = await job_row(api, job["PandaID"])
    assert (row["jobStatus"], row["jobSubStatus"]) == ("closed", "toreassign")
    assert (row["taskBufferErrorCode"], row["taskBufferErrorDiag"]) == (100, "reassigned by JEDI")
    assert row["commandToPilot"] == "tobekilled"
    await runner.drain()
    (new,) = await acquire(api, site=site)
    assert new["PandaID"] != job["PandaID"]
    assert sorted(new["inFiles"].split(",")) == sorted(
        f["lfn"] for f in (await jobs_of(api, job["PandaID"])) if f["type"] == "input"
    )
    assert (await job_row(api, new["PandaID"]))["computingSite"] == site
    return new


async def jobs_of(api, panda_id: int) -> list[dict]:
    async with api.state.db.transaction(write=False) as conn:
        return (await jobs_db.files_of(conn, [panda_id]))[panda_id]


# --- queue statuses in brokerage -------------------------------------------------------------------


async def test_a_status_change_takes_effect_in_the_next_brokerage(world) -> None:
    api, runner = world
    await set_queue(api, "TEST_PQ", status="brokeroff")
    files = [CatalogFile(lfn=f"status.{i}.root", fsize=10, n_events=1) for i in range(2)]
    async with api.state.db.transaction() as conn:
        await api.state.dm.register_files(conn, api.state.clock, DATASET, files)
    task_id = await submit(api, anywhere(DATASET, "user.testuser.status.v1", n_files_per_job=2))
    await runner.drain()
    async with api.state.db.transaction(write=False) as conn:
        query = sa.select(tasks.c.status, tasks.c.errorDialog).where(tasks.c.jediTaskID == task_id)
        task = (await conn.execute(query)).one()
    assert task.status == "pending"
    assert "TEST_PQ is brokeroff and the task does not name it" in task.errorDialog
    await set_queue(api, "TEST_PQ", status="online")
    await runner.drain()
    assert len(await acquire(api)) == 1


async def test_scratch_space_counts_the_largest_input_file(world) -> None:
    api, runner = world
    await set_queue(api, "TEST_PQ", maxwdir=2)
    files = [CatalogFile(lfn="big.root", fsize=3 * 2**20, n_events=1)]
    async with api.state.db.transaction() as conn:
        await api.state.dm.register_files(conn, api.state.clock, DATASET, files)
    task_id = await submit(api, anywhere(DATASET, "user.testuser.scratch.v1", n_files_per_job=1))
    await runner.drain()
    async with api.state.db.transaction(write=False) as conn:
        query = sa.select(tasks.c.status, tasks.c.errorDialog).where(tasks.c.jediTaskID == task_id)
        task = (await conn.execute(query)).one()
    assert task.status == "pending"
    assert "TEST_PQ has 2 MB of scratch, a job needs 3 MB" in task.errorDialog
    await set_queue(api, "TEST_PQ", maxwdir=3)
    await runner.drain()
    assert len(await acquire(api)) == 1


async def test_a_unified_queue_gives_each_job_its_resource_type(world) -> None:
    api, runner = world
    await set_queue(api, "TEST_PQ", corecount=8, maxrss=32000, capability="ucore")
    job = await queued_job(api, runner)
    # A single-core task in the queue's one-core pseudo-queue.
    assert (job["coreCount"], job["resource_type"]) == (1, "SCORE")
    async with api.state.db.transaction(write=False) as conn:
        query = sa.select(tasks.c.resource_type).where(tasks.c.jediTaskID == job["jediTaskID"])
        task_rt = (await conn.execute(query)).scalar_one()
    assert task_rt == "SCORE"


# --- re-brokerage when a queue goes offline --------------------------------------------------------


async def test_a_queue_going_offline_sends_its_queued_jobs_elsewhere(world) -> None:
    api, runner = world
    job = await queued_job(api, runner)
    await put_queue(api, name=OTHER)
    await set_queue(api, "TEST_PQ", status="offline")
    await assert_rebrokered(api, runner, job)


async def test_the_watchdog_sweeps_jobs_left_at_an_offline_queue(world) -> None:
    # A job that reached an offline queue anyway (made in a transaction that raced the change).
    api, runner = world
    job = await queued_job(api, runner)
    await put_queue(api, name="OFF_PQ", status="offline")
    await put_queue(api, name=OTHER)
    await pilots_seen(api, timedelta(hours=1), site=OTHER)
    await set_job(api, job["PandaID"], computingSite="OFF_PQ", jobStatus="assigned")
    assert await watch(api, timedelta(0)) == 1
    await assert_rebrokered(api, runner, job)


async def test_sent_jobs_stay_and_disable_reassign_keeps_queued_ones(world) -> None:
    api, runner = world
    job = await queued_job(api, runner)
    await put_queue(api, name=OTHER)
    await set_queue(api, "TEST_PQ", catchall="disableReassign", status="offline")
    assert (await job_row(api, job["PandaID"]))["jobStatus"] == "activated"
    assert await watch(api, timedelta(hours=5)) == 0
    await set_queue(api, "TEST_PQ", catchall=None, status="online")
    (sent,) = await acquire(api)
    await set_queue(api, "TEST_PQ", status="offline")
    assert (await job_row(api, sent["PandaID"]))["jobStatus"] == "sent"


# --- job/reassign goes the same way ----------------------------------------------------------------


async def test_reassign_sends_the_job_to_another_queue(world) -> None:
    api, runner = world
    job = await queued_job(api, runner)
    await put_queue(api, name=OTHER)
    await set_queue(api, "TEST_PQ", status="brokeroff")
    body = await call(api, "reassign", as_user="Anyone", job_ids=[job["PandaID"]])
    assert body["success"] is True
    await assert_rebrokered(api, runner, job)


# --- ANALY_TIMEOUT: analysis jobs at a queue no pilot visits ---------------------------------------


async def test_analysis_jobs_at_an_idle_queue_are_rebrokered(world) -> None:
    api, runner = world
    job = await queued_job(api, runner)
    await put_queue(api, name=OTHER)
    await pilots_seen(api, timedelta(hours=4), site=OTHER)
    assert await watch(api, timedelta(hours=2, minutes=59)) == 0
    assert await watch(api, timedelta(hours=3, minutes=1)) == 1
    await assert_rebrokered(api, runner, job)


async def test_analysis_jobs_wait_at_a_queue_pilots_visit(world) -> None:
    api, runner = world
    job = await queued_job(api, runner)
    await pilots_seen(api, timedelta(hours=4))
    assert await watch(api, timedelta(hours=3, minutes=1)) == 0
    assert (await job_row(api, job["PandaID"]))["jobStatus"] == "activated"


# --- high-priority production jobs at queues that start nothing ------------------------------------


async def test_high_priority_jobs_at_a_queue_starting_nothing_are_rebrokered(world) -> None:
    api, runner = world
    job = await queued_job(api, runner)
    await set_job(api, job["PandaID"], prodSourceLabel="managed", currentPriority=900)
    await put_queue(api, name=OTHER)
    # Pilots come to OTHER_PQ only, so the new job goes there.
    await pilots_seen(api, timedelta(hours=5), site=OTHER)
    assert await watch(api, timedelta(hours=3, minutes=59)) == 0
    await set_job(api, job["PandaID"], currentPriority=799)
    assert await watch(api, timedelta(hours=4, minutes=1)) == 0
    await set_job(api, job["PandaID"], currentPriority=800)
    assert await watch(api, timedelta(hours=4, minutes=1)) == 1
    await assert_rebrokered(api, runner, job)


async def test_a_recent_job_start_keeps_high_priority_jobs(world) -> None:
    api, runner = world
    job = await queued_job(api, runner, "user.testuser.rebro1.v1")
    await queued_job_started_later(api, runner)
    await set_job(api, job["PandaID"], prodSourceLabel="managed", currentPriority=900)
    assert await watch(api, timedelta(hours=4, minutes=1)) == 0
    # A queue in test status counts as inactive whatever starts there.
    await set_queue(api, "TEST_PQ", status="test")
    assert await watch(api, timedelta(hours=4, minutes=1)) == 1
    assert (await job_row(api, job["PandaID"]))["jobSubStatus"] == "toreassign"


async def queued_job_started_later(api, runner) -> None:
    """A second job at TEST_PQ that starts 3 h 30 min from now and keeps running."""
    files = [CatalogFile(lfn="started.0.root", fsize=10, n_events=1)]
    async with api.state.db.transaction() as conn:
        await api.state.dm.register_files(conn, api.state.clock, "user.testuser.started.v1", files)
    task_id = await submit(
        api, anywhere("user.testuser.started.v1", "user.testuser.started.v1", n_files_per_job=1)
    )
    await runner.drain()
    async with api.state.db.transaction(write=False) as conn:
        (panda_id,) = (
            await conn.execute(sa.select(jobs.c.PandaID).where(jobs.c.jediTaskID == task_id))
        ).scalars()
    later = datetime.now(UTC) + timedelta(hours=3, minutes=30)
    await set_job(api, panda_id, jobStatus="running", startTime=later, modificationTime=later)


async def test_starting_high_priority_jobs_are_rebrokered_too(world) -> None:
    api, runner = world
    job = await queued_job(api, runner)
    (sent,) = await acquire(api)
    await pilot_says(api, sent, "starting")
    await set_job(
        api,
        job["PandaID"],
        prodSourceLabel="managed",
        currentPriority=900,
        # Heartbeats keep coming; the time since the job started counts.
        modificationTime=datetime.now(UTC) + timedelta(hours=5),
    )
    assert await watch(api, timedelta(hours=3, minutes=59)) == 0
    assert await watch(api, timedelta(hours=4, minutes=1)) == 1
    row = await job_row(api, job["PandaID"])
    assert (row["jobStatus"], row["taskBufferErrorCode"], row["jobSubStatus"]) == (
        "closed",
        100,
        "toreassign",
    )


# --- paused queues: no job timeout, no reassignment -----------------------------------------------


async def test_a_paused_queue_holds_its_jobs_against_every_rule(world) -> None:
    api, runner = world
    files = [CatalogFile(lfn=f"paused.{i}.root", fsize=10, n_events=1) for i in range(3)]
    async with api.state.db.transaction() as conn:
        await api.state.dm.register_files(conn, api.state.clock, DATASET, files)
    await submit(api, anywhere(DATASET, "user.testuser.paused.v1", n_files_per_job=1))
    await runner.drain()
    running, sent = await acquire(api, n_jobs=2)
    await pilot_says(api, running, "running")
    await put_queue(api, name=OTHER)
    await pilots_seen(api, timedelta(days=9), site=OTHER)
    await set_queue(api, "TEST_PQ", status="paused")
    # An analysis job without heartbeat, a sent job without reply, an activated job at a queue no
    # pilot visits: nothing happens for days.
    assert await watch(api, timedelta(days=8)) == 0
    assert (await job_row(api, running["PandaID"]))["jobStatus"] == "running"
    assert (await job_row(api, sent["PandaID"]))["jobStatus"] == "sent"
    await set_queue(api, "TEST_PQ", status="online")
    assert await watch(api, timedelta(days=8)) == 3


def test_limits_come_from_the_settings(monkeypatch) -> None:
    assert RebrokerageLimits.from_settings(Settings()) == RebrokerageLimits()
    monkeypatch.setenv("BAMBOO_JOB_REBROKERAGE_ANALYSIS_HOURS", "1.5")
    assert RebrokerageLimits.from_settings(Settings()).analysis == timedelta(hours=1.5)


async def test_disable_reassign_exempts_production_jobs_from_reassignment_timeouts(world) -> None:
    api, runner = world
    job = await queued_job(api, runner)
    await set_job(api, job["PandaID"], jobStatus="defined", prodSourceLabel="managed", currentPriority=900)
    await set_queue(api, "TEST_PQ", catchall="disableReassign")
    # Past the production defined timeout (4 h, code 51) and the high-priority rule.
    assert await watch(api, timedelta(hours=5)) == 0
    await set_queue(api, "TEST_PQ", catchall=None)
    assert await watch(api, timedelta(hours=5)) == 1
    assert (await job_row(api, job["PandaID"]))["jobSubStatus"] == "toreassign"


async def test_an_overloaded_queue_sheds_its_excess_by_fast_rebrokerage(world, monkeypatch) -> None:
    monkeypatch.setenv("BAMBOO_JOB_FAST_REBROKERAGE_MIN_QUEUED", "2")
    api, runner = world
    files = [CatalogFile(lfn=f"fast.{i}.root", fsize=10, n_events=1) for i in range(5)]
    async with api.state.db.transaction() as conn:
        await api.state.dm.register_files(conn, api.state.clock, DATASET, files)
    task_id = await submit(api, anywhere(DATASET, "user.testuser.fast.v1", n_files_per_job=1))
    await runner.drain()
    (running,) = await acquire(api)
    await pilot_says(api, running, "running")
    async with api.state.db.transaction() as conn:
        await conn.execute(
            sa.update(jobs).where(jobs.c.jediTaskID == task_id).values(prodSourceLabel="managed")
        )
    await put_queue(api, name=OTHER)
    await pilots_seen(api, timedelta(hours=2), site=OTHER)
    # 4 queued for 1 running: more than 2 and more than twice the running, so 2 too many.
    assert await watch(api, timedelta(minutes=59)) == 0
    assert await watch(api, timedelta(minutes=61)) == 2
    assert await watch(api, timedelta(minutes=61)) == 0, "the rest is within the limits"
    async with api.state.db.transaction(write=False) as conn:
        query = sa.select(jobs).where(jobs.c.jediTaskID == task_id, jobs.c.jobStatus == "closed")
        moved = [dict(row) for row in (await conn.execute(query)).mappings()]
    assert len(moved) == 2
    for row in moved:
        assert (row["taskBufferErrorCode"], row["taskBufferErrorDiag"]) == (
            130,
            "fast rebrokerage due to Nq/Nr overshoot",
        )
        assert row["computingSite"] == "TEST_PQ"
    await runner.drain()
    async with api.state.db.transaction(write=False) as conn:
        query = sa.select(jobs.c.computingSite).where(
            jobs.c.jediTaskID == task_id, jobs.c.jobStatus == "activated"
        )
        sites = sorted((await conn.execute(query)).scalars())
    assert sites == ["OTHER_PQ", "OTHER_PQ", "TEST_PQ", "TEST_PQ"]
