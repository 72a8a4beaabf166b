"""The job watchdog (domain.md §10.3): lost and stuck jobs fail like pilot failures, stale ones are
killed with the kill codes of api-v1.md §3.6, and their inputs go back to the task."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from bamboo.agents.runner import AGENTS, AgentContext, AgentRunner
from bamboo.config import Settings
from bamboo.db import jobs as jobs_db
from bamboo.db.schema import task_files, worker_node_queues
from bamboo.logic import job_watchdog, queues
from bamboo.logic.catalog import CatalogFile
from bamboo.logic.job_watchdog import JobTimeouts
from tests.api.test_task_flow import acquire, report, submit, world
from tests.tasks import input_task

# The fixture, imported for pytest to find.
__all__ = ["world"]

DATASET = "user.testuser.watched.v1"
STAMP = "%Y-%m-%d %H:%M:%S"


class LaterClock:
    """The wall clock moved ``offset`` into the future."""

    def __init__(self, offset: timedelta = timedelta(0)) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


async def watch(api, offset: timedelta) -> int:
    """One watchdog step, as the agent runs it (settings from the environment), with the clock
    ``offset`` ahead."""
    context = AgentContext(api.state.db, LaterClock(offset), api.state.dm)
    return await AgentRunner(context).run_once("job_watchdog")


async def job_row(api, panda_id: int) -> dict:
    async with api.state.db.transaction(write=False) as conn:
        return (await jobs_db.get_many(conn, [panda_id]))[panda_id]


async def set_job(api, panda_id: int, **values) -> None:
    """Put a job where no API call of ours leaves one (pending, waiting, throttled...)."""
    async with api.state.db.transaction() as conn:
        await jobs_db.update(conn, panda_id, **values)


async def pilots_seen(api, until: timedelta, site: str = "TEST_PQ") -> None:
    """A pilot at ``site`` reported its worker node ``until`` from now: the queue stays active (so
    the re-brokerage of jobs at idle queues, logic/rebrokerage.py, leaves its jobs alone)."""
    async with api.state.db.transaction() as conn:
        await conn.execute(
            sa.insert(worker_node_queues).values(
                site=site, host_name="wn01", panda_queue=site, last_seen=datetime.now(UTC) + until
            )
        )


async def input_rows(api, job: dict) -> list[dict]:
    lfns = job["inFiles"].split(",")
    async with api.state.db.transaction(write=False) as conn:
        result = await conn.execute(
            sa.select(task_files).where(task_files.c.lfn.in_(lfns), task_files.c.type == "input")
        )
        return sorted((dict(row) for row in result.mappings()), key=lambda row: row["lfn"])


async def one_job(api, runner, n_files: int = 2) -> dict:
    """An analysis task over ``n_files`` files in one job, that job handed to a pilot (sent)."""
    files = [CatalogFile(lfn=f"watched.{i:02d}.root", fsize=1000 + i, n_events=10) for i in range(n_files)]
    async with api.state.db.transaction() as conn:
        await api.state.dm.register_files(conn, api.state.clock, DATASET, files)
    await submit(api, input_task(DATASET, "user.testuser.watch.v1", n_files_per_job=n_files))
    await runner.drain()
    (job,) = await acquire(api)
    return job


async def pilot_says(api, job: dict, status: str) -> dict:
    (reply,) = await report(
        api, [{"job_id": job["PandaID"], "job_status": status, "attempt_nr": job["attemptNr"]}]
    )
    assert reply["success"] is True, reply
    return reply["data"]


async def assert_failed_and_retried(api, runner, job: dict, code: int, diag: str) -> None:
    """The job failed with ``code``/``diag`` through the finaliser, its inputs have one more attempt
    and a new job is ready for them."""
    before = await input_rows(api, job)
    held = await job_row(api, job["PandaID"])
    assert (held["jobStatus"], held["reported_status"]) == ("holding", "failed")
    assert held["commandToPilot"] == "tobekilled"
    await runner.drain()
    row = await job_row(api, job["PandaID"])
    assert row["jobStatus"] == "failed"
    assert row["jobDispatcherErrorCode"] == code
    assert row["jobDispatcherErrorDiag"] == diag
    assert row["reported_status"] is None and row["endTime"] is not None
    after = await input_rows(api, job)
    assert [r["attemptNr"] for r in after] == [r["attemptNr"] + 1 for r in before]
    assert [r["failedAttempt"] for r in after] == [r["failedAttempt"] + 1 for r in before]
    (retry,) = await acquire(api)
    assert retry["PandaID"] != job["PandaID"]
    assert retry["inFiles"] == job["inFiles"]
    assert retry["attemptNr"] == job["attemptNr"] + 1
    # A pilot that comes back to the failed job is told it is over.
    assert (await pilot_says(api, job, "running"))["command"] in ("tobekilled", "alreadydone")


async def test_lost_heartbeat_fails_the_job_and_its_inputs_are_retried(world) -> None:
    api, runner = world
    job = await one_job(api, runner)
    await pilot_says(api, job, "running")
    heartbeat = (await job_row(api, job["PandaID"]))["modificationTime"]
    assert await watch(api, timedelta(minutes=119)) == 0
    assert (await job_row(api, job["PandaID"]))["jobStatus"] == "running"
    assert await watch(api, timedelta(minutes=121)) == 1
    assert await watch(api, timedelta(minutes=121)) == 0, "a second step finds nothing left to do"
    await assert_failed_and_retried(api, runner, job, 100, f"lost heartbeat : {heartbeat:{STAMP}}")


async def test_a_late_final_report_does_not_undo_the_watchdogs_verdict(world) -> None:
    api, runner = world
    job = await one_job(api, runner)
    await pilot_says(api, job, "running")
    assert await watch(api, timedelta(minutes=121)) == 1
    # The pilot comes back before the finaliser ran: it is told to stop and changes nothing.
    (reply,) = await report(
        api,
        [{"job_id": job["PandaID"], "job_status": "finished", "attempt_nr": job["attemptNr"]}],
    )
    assert reply["data"] == {"StatusCode": 0, "command": "tobekilled"}
    held = await job_row(api, job["PandaID"])
    assert (held["jobStatus"], held["reported_status"]) == ("holding", "failed")
    await runner.drain()
    row = await job_row(api, job["PandaID"])
    assert (row["jobStatus"], row["jobDispatcherErrorCode"]) == ("failed", 100)


async def test_starting_job_without_heartbeat_is_lost_too(world) -> None:
    api, runner = world
    job = await one_job(api, runner)
    await pilot_says(api, job, "starting")
    heartbeat = (await job_row(api, job["PandaID"]))["modificationTime"]
    assert await watch(api, timedelta(hours=3)) == 1
    await assert_failed_and_retried(api, runner, job, 100, f"lost heartbeat : {heartbeat:{STAMP}}")


async def test_sent_job_no_pilot_answered_for_is_recovered(world) -> None:
    # The acquire_jobs answer never reached a pilot: nobody will ever report on this job.
    api, runner = world
    job = await one_job(api, runner)
    assert (await job_row(api, job["PandaID"]))["jobStatus"] == "sent"
    assert await watch(api, timedelta(minutes=29)) == 0
    assert await watch(api, timedelta(minutes=31)) == 1
    await assert_failed_and_retried(
        api, runner, job, 102, "Sent job didn't receive reply from pilot within 30 min"
    )


async def test_holding_without_a_final_report_times_out(world) -> None:
    api, runner = world
    job = await one_job(api, runner)
    await pilot_says(api, job, "running")
    await pilot_says(api, job, "holding")
    last = (await job_row(api, job["PandaID"]))["modificationTime"]
    assert await watch(api, timedelta(minutes=179)) == 0
    assert await watch(api, timedelta(minutes=181)) == 1
    await assert_failed_and_retried(
        api, runner, job, 103, f"timeout in holding : last heartbeat at {last:{STAMP}}"
    )


async def test_production_holding_waits_longer_unless_urgent(world) -> None:
    api, runner = world
    job = await one_job(api, runner)
    await pilot_says(api, job, "running")
    await pilot_says(api, job, "holding")
    await set_job(api, job["PandaID"], prodSourceLabel="managed", currentPriority=500)
    assert await watch(api, timedelta(hours=47)) == 0
    await set_job(api, job["PandaID"], currentPriority=900)
    assert await watch(api, timedelta(hours=4)) == 1
    assert (await job_row(api, job["PandaID"]))["jobDispatcherErrorCode"] == 103


async def test_a_final_report_waiting_for_the_finaliser_is_left_alone(world) -> None:
    api, runner = world
    job = await one_job(api, runner)
    await pilot_says(api, job, "running")
    await pilot_says(api, job, "failed")
    assert await watch(api, timedelta(days=30)) == 0
    row = await job_row(api, job["PandaID"])
    assert (row["jobStatus"], row["reported_status"], row["jobDispatcherErrorCode"]) == (
        "holding",
        "failed",
        None,
    )


async def test_transferring_too_long_fails(world) -> None:
    api, runner = world
    job = await one_job(api, runner)
    await pilot_says(api, job, "running")
    await pilot_says(api, job, "transferring")
    last = (await job_row(api, job["PandaID"]))["modificationTime"]
    assert await watch(api, timedelta(minutes=119)) == 0
    assert await watch(api, timedelta(minutes=121)) == 1
    await assert_failed_and_retried(
        api, runner, job, 104, f"timeout in transferring : last heartbeat at {last:{STAMP}}"
    )


async def test_production_job_at_a_paused_queue_keeps_its_heartbeat(world) -> None:
    api, runner = world
    job = await one_job(api, runner)
    await pilot_says(api, job, "running")
    await set_job(api, job["PandaID"], prodSourceLabel="managed")
    async with api.state.db.transaction() as conn:
        await queues.put(
            conn, api.state.clock, {"name": "TEST_PQ", "type": "unified", "corecount": 1, "status": "paused"}
        )
    assert await watch(api, timedelta(hours=3)) == 0
    async with api.state.db.transaction() as conn:
        await queues.put(conn, api.state.clock, {"name": "TEST_PQ", "type": "unified", "corecount": 1})
    assert await watch(api, timedelta(hours=3)) == 1
    assert (await job_row(api, job["PandaID"]))["jobDispatcherErrorCode"] == 100


_DAYS_6, _DAYS_7 = timedelta(days=6), timedelta(days=7, hours=1)
_MIN_59, _MIN_61 = timedelta(minutes=59), timedelta(minutes=61)


@pytest.mark.parametrize(
    ("status", "label", "not_yet", "expired", "code", "diag"),
    [
        ("activated", "user", _DAYS_6, _DAYS_7, 102, "expired in activated"),
        ("defined", "user", _DAYS_6, _DAYS_7, 102, "expired in defined"),
        ("assigned", "user", _DAYS_6, _DAYS_7, 102, "expired in assigned"),
        ("throttled", "user", _DAYS_6, _DAYS_7, 102, "expired in throttled"),
        ("pending", "user", _MIN_59, _MIN_61, 102, "expired in pending"),
        ("waiting", "user", _MIN_59, _MIN_61, 102, "expired in waiting"),
        ("activated", "managed", timedelta(hours=47), timedelta(hours=49), 100, "reassigned by JEDI"),
        ("defined", "managed", timedelta(hours=3), timedelta(hours=5), 100, "reassigned by JEDI"),
    ],
)
async def test_stale_queued_jobs_are_killed_and_regenerated(
    world, status, label, not_yet, expired, code, diag
) -> None:
    # Codes 2, 4 and 51 all close the job (api-v1.md §3.6); the task makes a new one.
    api, runner = world
    job = await one_job(api, runner)
    # An active queue and a modest priority: the re-brokerage rules (logic/rebrokerage.py) do not
    # apply, the timeouts under test do.
    await set_job(api, job["PandaID"], jobStatus=status, prodSourceLabel=label, currentPriority=500)
    await pilots_seen(api, expired)
    since = (await job_row(api, job["PandaID"]))["modificationTime"]
    before = await input_rows(api, job)
    assert await watch(api, not_yet) == 0
    assert await watch(api, expired) == 1
    row = await job_row(api, job["PandaID"])
    assert row["jobStatus"] == "closed"
    assert row["taskBufferErrorCode"] == code
    if diag.startswith("expired"):
        assert row["taskBufferErrorDiag"] == f"{diag}. status unchanged since {since:{STAMP}}"
    else:
        assert row["taskBufferErrorDiag"] == diag
    assert row["commandToPilot"] == "tobekilled"
    # killing.py returns the inputs of a killed job with their attempt unchanged.
    after = await input_rows(api, job)
    assert [r["status"] for r in after] == ["ready"] * len(after)
    assert [r["attemptNr"] for r in after] == [r["attemptNr"] for r in before]
    await runner.drain()
    (retry,) = await acquire(api)
    assert retry["PandaID"] != job["PandaID"] and retry["inFiles"] == job["inFiles"]


async def test_managed_job_starting_for_two_days_is_reassigned(world) -> None:
    api, runner = world
    job = await one_job(api, runner)
    await pilot_says(api, job, "starting")
    # Below the priority of the re-brokerage of high-priority jobs (logic/rebrokerage.py).
    await set_job(api, job["PandaID"], prodSourceLabel="managed", currentPriority=500)
    # Heartbeats keep coming; only the time since the status changed counts.
    await set_job(api, job["PandaID"], modificationTime=datetime.now(UTC) + timedelta(hours=49))
    assert await watch(api, timedelta(hours=47)) == 0
    assert await watch(api, timedelta(hours=49)) == 1
    row = await job_row(api, job["PandaID"])
    assert (row["jobStatus"], row["taskBufferErrorCode"], row["taskBufferErrorDiag"]) == (
        "closed",
        100,
        "reassigned by JEDI",
    )


async def test_job_running_for_three_weeks_is_expired(world) -> None:
    api, runner = world
    job = await one_job(api, runner)
    await pilot_says(api, job, "running")
    created = datetime.now(UTC) - timedelta(days=22)
    await set_job(api, job["PandaID"], creationTime=created)
    assert await watch(api, timedelta(0)) == 1
    row = await job_row(api, job["PandaID"])
    assert (row["jobStatus"], row["taskBufferErrorCode"]) == ("closed", 102)
    assert row["taskBufferErrorDiag"] == f"expired in running. status unchanged since {created:{STAMP}}"


async def test_each_step_handles_a_bounded_batch(world, monkeypatch) -> None:
    api, runner = world
    files = [CatalogFile(lfn=f"batch.{i:02d}.root", fsize=1000 + i, n_events=10) for i in range(3)]
    async with api.state.db.transaction() as conn:
        await api.state.dm.register_files(conn, api.state.clock, DATASET, files)
    await submit(api, input_task(DATASET, "user.testuser.batch.v1", n_files_per_job=1))
    await runner.drain()
    assert len(await acquire(api, n_jobs=3)) == 3
    monkeypatch.setattr(job_watchdog, "BATCH", 2)
    assert await watch(api, timedelta(hours=1)) == 2
    assert await watch(api, timedelta(hours=1)) == 1
    assert await watch(api, timedelta(hours=1)) == 0
    await runner.drain()
    assert len(await acquire(api, n_jobs=10)) == 3


async def test_timeouts_come_from_the_settings(world, monkeypatch) -> None:
    assert JobTimeouts.from_settings(Settings()) == JobTimeouts(), "defaults must match the settings"
    monkeypatch.setenv("BAMBOO_JOB_SENT_TIMEOUT_MINUTES", "10")
    timeouts = JobTimeouts.from_settings(Settings())
    assert timeouts.sent == timedelta(minutes=10)
    api, runner = world
    job = await one_job(api, runner)
    # The agent reads them from its context's settings.
    assert await watch(api, timedelta(minutes=11)) == 1
    assert (await job_row(api, job["PandaID"]))["jobDispatcherErrorDiag"] == (
        "Sent job didn't receive reply from pilot within 10 min"
    )


def test_the_agent_is_registered_with_its_period() -> None:
    (agent,) = [agent for agent in AGENTS if agent.name == "job_watchdog"]
    assert "finaliser" in agent.wakes and "generator" in agent.wakes
    assert agent.period_setting == "job_watchdog_period_seconds"
    assert Settings().job_watchdog_period_seconds == 300.0
