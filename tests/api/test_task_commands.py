"""Task commands through the API and the commando agent, on both databases (api-v1.md §2.1)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from bamboo.db.schema import jobs, task_commands, task_datasets, task_files, tasks
from bamboo.logic import queues
from tests.api.conftest import ApiServer
from tests.api.test_task_flow import acquire, envelope, report, run_job, submit, task_status, world
from tests.tasks import NO_INPUT_TASK

__all__ = ["world"]

OWNER = "test user"
PRODUCTION = {"user": "Task Operator", "role": "production"}


async def command(api: ApiServer, name: str, as_user: str = OWNER, role: str | None = None, **params) -> dict:
    async with api.client(headers=api.token_headers(as_user, role=role)) as client:
        return envelope(await client.post(f"/api/v1/task/{name}", json=params))


async def prod_command(api: ApiServer, name: str, **params) -> dict:
    return await command(api, name, as_user=PRODUCTION["user"], role=PRODUCTION["role"], **params)


async def job_rows(api: ApiServer, task_id: int) -> list[dict]:
    async with api.state.db.transaction() as conn:
        query = (
            sa.select(
                jobs.c.PandaID,
                jobs.c.jobStatus,
                jobs.c.commandToPilot,
                jobs.c.taskBufferErrorCode,
                jobs.c.taskBufferErrorDiag,
                jobs.c.computingSite,
            )
            .where(jobs.c.jediTaskID == task_id)
            .order_by(jobs.c.PandaID)
        )
        return [dict(row) for row in (await conn.execute(query)).mappings()]


async def master(api: ApiServer, task_id: int) -> dict:
    async with api.state.db.transaction() as conn:
        query = sa.select(task_datasets).where(
            task_datasets.c.jediTaskID == task_id, task_datasets.c.type == "pseudo_input"
        )
        return dict((await conn.execute(query)).mappings().one())


async def running_task(world) -> tuple[ApiServer, object, int]:
    api, runner = world
    task_id = await submit(api, NO_INPUT_TASK, user=OWNER)
    await runner.drain()
    assert await task_status(api, task_id) == "running"
    return api, runner, task_id


def registered(name: str, task_id: int) -> dict:
    return {
        "success": True,
        "message": f"command={name} is registered for task ID {task_id}. will be executed in a few minutes",
        "data": 0,
    }


async def heartbeat(api: ApiServer, job: dict) -> dict:
    replies = await report(
        api, [{"job_id": job["PandaID"], "job_status": "running", "attempt_nr": job["attemptNr"]}]
    )
    return replies[0]["data"]


async def test_kill_aborts_the_task_and_every_job(world) -> None:
    api, runner, task_id = await running_task(world)
    dispatched = (await acquire(api))[0]
    assert await command(api, "kill", task_id=task_id) == registered("kill", task_id)
    await runner.drain()
    assert await task_status(api, task_id) == "aborted"
    rows = await job_rows(api, task_id)
    assert [row["jobStatus"] for row in rows] == ["cancelled", "cancelled"]
    assert {row["taskBufferErrorCode"] for row in rows} == {100}
    assert {row["taskBufferErrorDiag"] for row in rows} == {"Test User"}
    # The pilot still running the dispatched job is told to stop.
    assert await heartbeat(api, dispatched) == {"StatusCode": 0, "command": "tobekilled"}
    assert await acquire(api) == []


async def test_kill_of_a_final_task_is_rejected_with_code_4(world) -> None:
    api, runner, task_id = await running_task(world)
    assert (await command(api, "kill", task_id=task_id))["success"] is True
    await runner.drain()
    assert await command(api, "kill", task_id=task_id) == {
        "success": False,
        "message": "Command rejected: the kill command is not accepted if the task is in aborted status ",
        "data": 4,
    }


async def test_only_the_owner_or_production_may_kill(world) -> None:
    api, runner, task_id = await running_task(world)
    assert await command(api, "kill", as_user="Someone Else", task_id=task_id) == {
        "success": False,
        "message": "not the task owner or no production role",
        "data": None,
    }
    assert await task_status(api, task_id) == "running"
    assert await prod_command(api, "kill", task_id=task_id) == registered("kill", task_id)
    await runner.drain()
    assert await task_status(api, task_id) == "aborted"


async def test_unknown_task(world) -> None:
    api, _ = world
    assert await command(api, "kill", task_id=123) == {
        "success": False,
        "message": "not the task owner or no production role",
        "data": None,
    }
    for name in ("kill", "finish", "pause", "resume", "release", "avalanche"):
        assert await prod_command(api, name, task_id=123) == {
            "success": False,
            "message": "jediTaskID=123 not found",
            "data": 2,
        }


async def test_production_commands_need_the_role(world) -> None:
    api, _, task_id = await running_task(world)
    for name in ("pause", "resume", "release", "avalanche"):
        assert await command(api, name, task_id=task_id) == {
            "success": False,
            "message": "production or pilot role required",
            "data": None,
        }


async def test_bad_parameters(world) -> None:
    api, _, _ = await running_task(world)
    body = await command(api, "kill", task_id="abc")
    assert body["success"] is False and "task_id" in body["message"]
    body = await command(api, "finish")
    assert body == {
        "success": False,
        "message": "Argument error: missing a required argument: 'task_id'",
        "data": None,
    }


async def test_hard_finish_kills_jobs_and_ends_by_what_was_processed(world) -> None:
    api, runner, task_id = await running_task(world)
    first, second = await acquire(api, n_jobs=2)
    await run_job(api, first)
    await runner.drain()
    assert await command(api, "finish", task_id=task_id) == registered("finish", task_id)
    await runner.drain()
    assert await task_status(api, task_id) == "finished"
    rows = await job_rows(api, task_id)
    assert [row["jobStatus"] for row in rows] == ["finished", "cancelled"]
    dataset = await master(api, task_id)
    assert (dataset["nFiles"], dataset["nFilesFinished"], dataset["nFilesFailed"]) == (2, 1, 1)
    assert await heartbeat(api, second) == {"StatusCode": 0, "command": "tobekilled"}


async def test_soft_finish_waits_for_running_jobs(world) -> None:
    api, runner, task_id = await running_task(world)
    running = (await acquire(api))[0]
    assert await heartbeat(api, running) == {"StatusCode": 0, "command": "NULL"}
    assert await command(api, "finish", task_id=task_id, soft=True) == registered("finish", task_id)
    await runner.drain()
    assert await task_status(api, task_id) == "finishing"
    assert [row["jobStatus"] for row in await job_rows(api, task_id)] == ["running", "cancelled"]
    await run_job(api, running)
    await runner.drain()
    assert await task_status(api, task_id) == "finished"


async def test_pause_throttles_queued_jobs_and_resume_releases_them(world) -> None:
    api, runner, task_id = await running_task(world)
    assert await prod_command(api, "pause", task_id=task_id) == registered("pause", task_id)
    await runner.drain()
    assert await task_status(api, task_id) == "paused"
    assert {row["jobStatus"] for row in await job_rows(api, task_id)} == {"throttled"}
    assert await acquire(api) == []
    body = await prod_command(api, "pause", task_id=task_id)
    assert body["data"] == 4
    assert body["message"].endswith("if the task is in paused status ")
    assert await prod_command(api, "resume", task_id=task_id) == registered("resume", task_id)
    await runner.drain()
    assert await task_status(api, task_id) == "running"
    assert len(await acquire(api, n_jobs=5)) == 2


async def test_a_new_command_replaces_the_queued_one(world) -> None:
    api, runner, task_id = await running_task(world)
    await prod_command(api, "pause", task_id=task_id)
    await command(api, "kill", task_id=task_id)
    async with api.state.db.transaction() as conn:
        rows = (await conn.execute(sa.select(task_commands.c.command))).scalars().all()
    assert rows == ["kill"]
    await runner.drain()
    assert await task_status(api, task_id) == "aborted"


async def test_retry_reprocesses_only_what_failed(world) -> None:
    api, runner, task_id = await running_task(world)
    first, _ = await acquire(api, n_jobs=2)
    await run_job(api, first)
    await runner.drain()
    await command(api, "finish", task_id=task_id)
    await runner.drain()
    assert await task_status(api, task_id) == "finished"
    body = await command(api, "retry", task_id=task_id)
    assert body == registered("retry", task_id)
    await runner.drain()
    assert await task_status(api, task_id) == "running"
    rows = await job_rows(api, task_id)
    assert [row["jobStatus"] for row in rows] == ["finished", "cancelled", "activated"]
    retried = (await acquire(api))[0]
    assert retried["jobPars"].endswith("--skipEvents=2")
    await run_job(api, retried)
    await runner.drain()
    assert await task_status(api, task_id) == "done"
    dataset = await master(api, task_id)
    assert (dataset["nFilesFinished"], dataset["nFilesFailed"]) == (2, 0)


async def test_retry_of_a_running_user_task_retries_its_failed_inputs(world) -> None:
    api, _, task_id = await running_task(world)
    async with api.state.db.transaction() as conn:
        # One input out of attempts, counted failed, as the finaliser leaves it.
        file_id = (
            await conn.execute(
                sa.select(sa.func.min(task_files.c.fileID)).where(task_files.c.jediTaskID == task_id)
            )
        ).scalar_one()
        await conn.execute(
            sa.update(task_files)
            .where(task_files.c.fileID == file_id)
            .values(status="ready", attemptNr=3, maxAttempt=3, PandaID=None)
        )
    body = await command(api, "retry", task_id=task_id)
    async with api.state.db.transaction() as conn:
        row = (
            (await conn.execute(sa.select(task_files).where(task_files.c.fileID == file_id))).mappings().one()
        )
    assert row["maxAttempt"] == 8
    assert body == {
        "success": True,
        "message": "retry has been triggered for failed jobs while the task is still running",
        "data": 0,
    }
    body = await command(api, "retry", task_id=999)
    assert body["data"] is None and body["success"] is False


async def test_retry_with_new_parameters_updates_the_task(world) -> None:
    api, runner, task_id = await running_task(world)
    await command(api, "finish", task_id=task_id)
    await runner.drain()
    assert await task_status(api, task_id) == "failed"
    body = await command(api, "retry", task_id=task_id, new_parameters={"nEventsPerJob": 1})
    # Code 3, as upstream's re-execution answers: pbook calls a retry with new options failed otherwise.
    assert body == {
        "success": True,
        "message": f"reactivation accepted. jediTaskID={task_id} (currently in failed state) "
        "will be re-executed with old and/or new input",
        "data": 3,
    }
    async with api.client(headers=api.token_headers(OWNER)) as client:
        params = envelope(await client.get("/api/v1/task/get_task_parameters", params={"task_id": task_id}))
    assert params["data"]["nEventsPerJob"] == 1
    # The generator sizes jobs from the split rule, so the new size must be there too.
    async with api.state.db.transaction() as conn:
        split_rule = (
            await conn.execute(sa.select(tasks.c.splitRule).where(tasks.c.jediTaskID == task_id))
        ).scalar_one()
    assert "NE=1" in split_rule.split(",")
    body = await command(api, "retry", task_id=task_id, new_parameters="not json")
    assert body["success"] is False and body["data"] == 1
    assert body["message"].startswith("new parameter conversion failed with")


async def test_retry_is_rejected_while_the_task_is_not_final(world) -> None:
    api, runner, task_id = await running_task(world)
    await prod_command(api, "pause", task_id=task_id)
    await runner.drain()
    assert await command(api, "retry", task_id=task_id) == {
        "success": False,
        "message": "Command rejected: the retry command is not accepted if the task is in paused status ",
        "data": 4,
    }


async def test_reassign_to_a_site_remakes_the_jobs_there(world) -> None:
    api, runner, task_id = await running_task(world)
    async with api.state.db.transaction() as conn:
        await queues.put(conn, api.state.clock, {"name": "OTHER_PQ", "type": "unified", "corecount": 1})
    assert await command(api, "reassign", task_id=task_id, site="OTHER_PQ") == registered("reassign", task_id)
    await runner.drain()
    assert await task_status(api, task_id) == "running"
    rows = await job_rows(api, task_id)
    assert [(row["jobStatus"], row["computingSite"]) for row in rows] == [
        ("closed", "TEST_PQ"),
        ("closed", "TEST_PQ"),
        ("activated", "OTHER_PQ"),
        ("activated", "OTHER_PQ"),
    ]
    assert {row["taskBufferErrorDiag"] for row in rows[:2]} == {"reassigned by JEDI"}


async def test_reassign_nokill_keeps_the_jobs(world) -> None:
    api, runner, task_id = await running_task(world)
    await command(api, "reassign", task_id=task_id, site="OTHER_PQ", mode="nokill")
    await runner.drain()
    assert [row["jobStatus"] for row in await job_rows(api, task_id)] == ["activated", "activated"]


async def test_kill_unfinished_jobs(world) -> None:
    api, runner, task_id = await running_task(world)
    first = (await acquire(api))[0]
    await run_job(api, first)
    await runner.drain()
    body = await command(api, "kill_unfinished_jobs", task_id=task_id)
    assert body == {"success": True, "message": "", "data": [False, True]}
    rows = await job_rows(api, task_id)
    assert [row["jobStatus"] for row in rows] == ["finished", "cancelled"]
    assert (await command(api, "kill_unfinished_jobs", task_id=task_id, code=1234))["success"] is False


@pytest.mark.parametrize("name", ["avalanche", "release"])
async def test_commands_refused_outside_their_statuses(world, name: str) -> None:
    api, runner, task_id = await running_task(world)
    await command(api, "kill", task_id=task_id)
    await runner.drain()
    assert await prod_command(api, name, task_id=task_id) == {
        "success": False,
        "message": f"Command rejected: the {name} command is not accepted if the task is in aborted status ",
        "data": 4,
    }


async def test_release_of_a_running_task_is_executed(world) -> None:
    api, runner, task_id = await running_task(world)
    assert await prod_command(api, "release", task_id=task_id) == registered("release", task_id)
    await runner.drain()
    async with api.state.db.transaction() as conn:
        status = (await conn.execute(sa.select(task_commands.c.status))).scalar_one()
    assert status == "done"
    assert await task_status(api, task_id) == "running"


async def test_reload_input_of_a_done_task(world) -> None:
    api, runner, task_id = await running_task(world)
    for job in await acquire(api, n_jobs=2):
        await run_job(api, job)
    await runner.drain()
    assert await task_status(api, task_id) == "done"
    assert await command(api, "reload_input", task_id=task_id) == registered("incexec", task_id)
    await runner.drain()
    assert await task_status(api, task_id) == "done"


async def test_a_refused_retry_leaves_the_task_parameters_alone(world) -> None:
    api, runner, task_id = await running_task(world)
    await prod_command(api, "pause", task_id=task_id)
    await runner.drain()
    body = await command(api, "retry", task_id=task_id, new_parameters={"nEventsPerJob": 1})
    assert body == {
        "success": False,
        "message": "Command rejected: the retry command is not accepted if the task is in paused status ",
        "data": 4,
    }
    async with api.client(headers=api.token_headers(OWNER)) as client:
        params = envelope(await client.get("/api/v1/task/get_task_parameters", params={"task_id": task_id}))
    assert params["data"]["nEventsPerJob"] == NO_INPUT_TASK["nEventsPerJob"]


async def test_retry_with_new_parameters_of_a_running_user_task_answers_code_3(world) -> None:
    api, _, task_id = await running_task(world)
    body = await command(api, "retry", task_id=task_id, new_parameters={"nEventsPerJob": 1})
    assert body == {
        "success": True,
        "message": "retry has been triggered for failed jobs while the task is still running",
        "data": 3,
    }
