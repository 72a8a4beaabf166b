"""The task watchdog's time-based rules (domain.md §2.4) and the one way task statuses are written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from bamboo.db import commands as commands_db
from bamboo.db import tasks as tasks_db
from bamboo.db.schema import task_files
from bamboo.logic import task_status, task_watchdog
from bamboo.logic.catalog import CatalogFile
from bamboo.logic.states import TaskTransitionError
from tests.api.test_task_flow import run_job, submit, world
from tests.api.test_task_flow import task_status as api_status
from tests.tasks import NO_INPUT_TASK, input_task

# The fixture, imported for pytest to find.
__all__ = ["world"]


class LaterClock:
    """The wall clock moved ``offset`` into the future."""

    def __init__(self, offset: timedelta) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


async def watch(api, offset: timedelta) -> int:
    async with api.state.db.transaction() as conn:
        return await task_watchdog.watch(conn, LaterClock(offset))


async def task_row(api, task_id: int) -> dict:
    async with api.state.db.transaction(write=False) as conn:
        return await tasks_db.get(conn, task_id)


async def pending_task(api, runner, **params) -> int:
    """A task no queue can take: it waits in pending with frozenTime stamped."""
    task_id = await submit(api, {**NO_INPUT_TASK, "site": "NO_SUCH_QUEUE", **params})
    await runner.drain()
    row = await task_row(api, task_id)
    assert row["status"] == "pending" and row["oldStatus"] == "ready", row
    assert row["frozenTime"] is not None
    return task_id


async def test_pending_task_is_exhausted_after_seven_days(world) -> None:
    api, runner = world
    task_id = await pending_task(api, runner)
    frozen = (await task_row(api, task_id))["frozenTime"]
    assert await watch(api, timedelta(days=6, hours=23)) == 0
    assert (await task_row(api, task_id))["status"] == "pending"
    assert await watch(api, timedelta(days=7, minutes=1)) == 1
    row = await task_row(api, task_id)
    assert row["status"] == "exhausted"
    assert row["errorDialog"] == f"timeout while in pending since {frozen:%Y-%m-%d %H:%M:%S}"
    assert await api_status(api, task_id) == "exhausted"


async def test_pending_child_of_a_running_parent_keeps_waiting(world) -> None:
    api, runner = world
    parent = await submit(api, {**NO_INPUT_TASK, "taskName": "user.testuser.parent/"})
    await runner.drain()
    assert await api_status(api, parent) == "running"
    child = await submit(api, {**NO_INPUT_TASK, "taskName": "user.testuser.child/", "parent_tid": parent})
    await runner.drain()
    row = await task_row(api, child)
    assert row["status"] == "pending" and row["errorDialog"] == f"pending until parent task {parent} is done"
    assert await watch(api, timedelta(days=30)) == 0
    assert (await task_row(api, child))["status"] == "pending"


async def test_leaving_pending_clears_frozen_time(world) -> None:
    api, runner = world
    task_id = await pending_task(api, runner)
    async with api.state.db.transaction() as conn:
        await tasks_db.update(conn, task_id, site="TEST_PQ")
    await runner.drain()
    row = await task_row(api, task_id)
    assert row["status"] == "running" and row["frozenTime"] is None and row["oldStatus"] is None


async def test_exhausted_task_is_finished_after_48_hours(world) -> None:
    api, runner = world
    task_id = await pending_task(api, runner)
    await watch(api, timedelta(days=8))
    assert (await task_row(api, task_id))["status"] == "exhausted"
    # The watchdog's clock stamped modificationTime 8 days ahead: 47 h after that nothing happens,
    # 49 h after it a soft finish.
    assert await watch(api, timedelta(days=8, hours=47)) == 0
    assert await watch(api, timedelta(days=8, hours=49)) == 1
    async with api.state.db.transaction(write=False) as conn:
        command = await commands_db.get(conn, task_id)
    assert command["command"] == "finish" and command["requester"] == task_watchdog.AUTO_FINISH_REQUESTER
    assert command["comment"] == "soft finish: exhausted for more than 48 h"
    # Queued, it is not registered again.
    assert await watch(api, timedelta(days=8, hours=50)) == 0
    await runner.drain()
    assert await api_status(api, task_id) == "failed"


async def test_disable_auto_finish_keeps_an_exhausted_task(world) -> None:
    api, runner = world
    task_id = await pending_task(api, runner)
    await watch(api, timedelta(days=8))
    async with api.state.db.transaction() as conn:
        await tasks_db.update(conn, task_id, splitRule="DF=1")
    assert await watch(api, timedelta(days=30)) == 0
    assert (await task_row(api, task_id))["status"] == "exhausted"


async def production_input_task(api, runner) -> int:
    files = [CatalogFile(lfn=f"prod.{i:02d}.root", fsize=1000, n_events=10) for i in range(4)]
    async with api.state.db.transaction() as conn:
        await api.state.dm.register_files(conn, api.state.clock, "mc.input.v1", files)
    params = {
        **input_task("mc.input.v1", "mc.prod.throttle", n_files_per_job=1),
        "prodSourceLabel": "managed",
        "taskType": "prod",
    }
    async with api.client(headers=api.token_headers("Prod Robot", role="production")) as client:
        body = (await client.post("/api/v1/task/submit", json={"task_parameters": params})).json()
    assert body["success"] is True, body
    await runner.drain()
    return body["data"]


async def acquire_production(api) -> list[dict]:
    async with api.client(headers=api.token_headers("Harvester Robot", role="production")) as client:
        body = (
            await client.post(
                "/api/v1/pilot/acquire_jobs",
                json={"site_name": "TEST_PQ", "prod_source_label": "managed", "n_jobs": 10, "node": "wn01"},
            )
        ).json()
    assert body["success"] is True, body
    return body["data"]["jobs"]


async def set_failed_attempts(api, task_id: int, failed: int) -> None:
    async with api.state.db.transaction() as conn:
        await conn.execute(
            sa.update(task_files)
            .where(task_files.c.jediTaskID == task_id, task_files.c.type == "input")
            .values(failedAttempt=failed, maxFailure=None, maxAttempt=None)
        )


async def test_production_task_with_failing_inputs_is_throttled_then_released(world) -> None:
    api, runner = world
    task_id = await production_input_task(api, runner)
    assert (await task_row(api, task_id))["status"] == "running"
    await set_failed_attempts(api, task_id, 4)
    assert await watch(api, timedelta(0)) == 0
    await set_failed_attempts(api, task_id, 5)
    assert await watch(api, timedelta(0)) == 1
    row = await task_row(api, task_id)
    assert (row["status"], row["oldStatus"], row["numThrottled"]) == ("throttled", "running", 1)
    assert timedelta(minutes=119) < row["throttledTime"] - datetime.now(UTC) <= timedelta(minutes=120)
    # Still inside the wait: stays throttled.
    assert await watch(api, timedelta(minutes=60)) == 0
    assert await watch(api, timedelta(minutes=121)) == 1
    row = await task_row(api, task_id)
    assert (row["status"], row["oldStatus"]) == ("running", None)
    # The second throttle needs twice the failures and waits four times as long.
    await set_failed_attempts(api, task_id, 9)
    assert await watch(api, timedelta(0)) == 0
    await set_failed_attempts(api, task_id, 10)
    assert await watch(api, timedelta(0)) == 1
    row = await task_row(api, task_id)
    assert row["numThrottled"] == 2
    assert timedelta(minutes=479) < row["throttledTime"] - datetime.now(UTC) <= timedelta(minutes=480)


async def test_user_tasks_are_not_throttled(world) -> None:
    api, runner = world
    files = [CatalogFile(lfn=f"user.{i:02d}.root", fsize=1000, n_events=10) for i in range(2)]
    async with api.state.db.transaction() as conn:
        await api.state.dm.register_files(conn, api.state.clock, "user.input.v1", files)
    task_id = await submit(api, input_task("user.input.v1", "user.testuser.nothrottle", n_files_per_job=1))
    await runner.drain()
    await set_failed_attempts(api, task_id, 50)
    assert await watch(api, timedelta(0)) == 0
    assert (await task_row(api, task_id))["status"] == "running"


async def test_throttled_task_with_nothing_left_is_released_at_once(world) -> None:
    api, runner = world
    task_id = await production_input_task(api, runner)
    await set_failed_attempts(api, task_id, 5)
    assert await watch(api, timedelta(0)) == 1
    jobs = await acquire_production(api)
    assert len(jobs) == 4
    for job in jobs:
        await run_job(api, job)
    assert await api_status(api, task_id) == "throttled"
    # The agents' own watchdog step releases it (nothing is left), then the finisher ends it.
    await runner.drain()
    assert await api_status(api, task_id) == "done"


async def test_task_status_is_written_only_through_the_transition_table(world) -> None:
    api, runner = world
    task_id = await submit(api, NO_INPUT_TASK)
    await runner.drain()
    async with api.state.db.transaction() as conn:
        with pytest.raises(ValueError, match=r"only by logic\.task_status\.change"):
            await tasks_db.update(conn, task_id, status="done")
        task = await tasks_db.get(conn, task_id)
        assert task["status"] == "running"
        with pytest.raises(TaskTransitionError, match="running -> registered is not allowed"):
            await task_status.change(conn, api.state.clock, task, "registered")
    assert (await task_row(api, task_id))["status"] == "running"


async def test_a_task_that_reached_its_goal_is_finished_softly(world) -> None:
    api, runner = world
    files = [CatalogFile(lfn=f"goal.{i}.root", fsize=100, n_events=10) for i in range(4)]
    async with api.state.db.transaction() as conn:
        await api.state.dm.register_files(conn, api.state.clock, "user.goal.v1", files)
    task_id = await submit(
        api, {**input_task("user.goal.v1", "user.testuser.goal", n_files_per_job=1), "goal": 50}
    )
    await runner.drain()
    assert (await task_row(api, task_id))["goal"] == 500
    # Two jobs go to pilots, two stay queued.
    jobs = await acquire_user(api, n_jobs=2)
    assert len(jobs) == 2
    await run_job(api, jobs[0])
    await runner.drain()
    assert await watch(api, timedelta(0)) == 0
    await run_job(api, jobs[1])
    # Only the finaliser: a full drain would run the watchdog step itself.
    await runner.run_once("finaliser")
    assert await watch(api, timedelta(0)) == 1
    async with api.state.db.transaction(write=False) as conn:
        command = await commands_db.get(conn, task_id)
    assert (command["command"], command["comment"]) == ("finish", "soft finish: goal of 50% reached")
    await runner.drain()
    # Half of the input is processed, the queued rest is not started: finished (partially).
    assert await api_status(api, task_id) == "finished"
    assert await acquire_user(api, n_jobs=10) == []


async def acquire_user(api, n_jobs: int) -> list[dict]:
    async with api.client(headers=api.token_headers("Harvester Robot", role="production")) as client:
        body = (
            await client.post(
                "/api/v1/pilot/acquire_jobs",
                json={"site_name": "TEST_PQ", "prod_source_label": "user", "n_jobs": n_jobs, "node": "wn01"},
            )
        ).json()
    return body["data"]["jobs"] if body["success"] else []


@pytest.mark.parametrize("goal", [0, -5, 101, "half", True])
async def test_a_goal_outside_0_to_100_percent_is_refused(world, goal) -> None:
    api, _ = world
    async with api.client(headers=api.token_headers("test user")) as client:
        body = (
            await client.post(
                "/api/v1/task/submit", json={"task_parameters": {**NO_INPUT_TASK, "goal": goal}}
            )
        ).json()
    assert body["success"] is False
    assert body["message"] == f"task parameter 'goal' must be a percentage in (0, 100], got {goal!r}"
