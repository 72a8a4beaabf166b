"""file_server/upload_file_recovery_request and the recovery agent, on both databases."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa

from bamboo.agents.runner import AgentContext, AgentRunner
from bamboo.db import catalog as catalog_db
from bamboo.db import file_recovery as recovery_db
from bamboo.db import tasks as tasks_db
from bamboo.db.schema import file_recovery_requests, jobs, task_files
from bamboo.logic import file_recovery, queues
from bamboo.logic.catalog import CatalogFile
from bamboo.storage import LocalFileStore, UnsafeName
from tests.api.conftest import ApiServer
from tests.api.test_task_flow import acquire, envelope, run_job, submit, task_status
from tests.tasks import input_task

URL = "/api/v1/file_server/upload_file_recovery_request"
OWNER = "test user"
# The owner's compact user name, as the token's name claim gives it.
REQUESTER = "Test User"
A = "user.testuser.rec.a"
B = "user.testuser.rec.b"
C = "user.testuser.rec.c"


@pytest.fixture
async def world(api: ApiServer) -> tuple[ApiServer, AgentRunner]:
    async with api.state.db.transaction() as conn:
        await queues.put(conn, api.state.clock, {"name": "TEST_PQ", "type": "unified", "corecount": 1})
    context = AgentContext(api.state.db, api.state.clock, api.state.dm, settings=api.state.settings)
    return api, AgentRunner(context)


async def register(api: ApiServer, dataset: str, names: list[str]) -> None:
    files = [CatalogFile(lfn=name, fsize=100, n_events=10) for name in names]
    async with api.state.db.transaction() as conn:
        await api.state.dm.register_files(conn, api.state.clock, dataset, files)


async def run_all(api: ApiServer, runner: AgentRunner) -> list[dict]:
    """Run every job the agents make until none is left; returns the jobs run."""
    ran = []
    await runner.drain()
    while jobs_now := await acquire(api, n_jobs=20):
        for job in jobs_now:
            await run_job(api, job)
        ran += jobs_now
        await runner.drain()
    return ran


async def finished_task(
    api: ApiServer, runner: AgentRunner, name: str, dataset: str, parent: int | None
) -> tuple[int, list[dict]]:
    params = input_task(dataset, name, n_files_per_job=1)
    if parent is not None:
        params["parent_tid"] = parent
    task_id = await submit(api, params, user=OWNER)
    ran = await run_all(api, runner)
    assert await task_status(api, task_id) == "done"
    return task_id, ran


def output_of(job: dict) -> str:
    return next(name for name in job["outFiles"].split(",") if name.endswith(".out.root"))


async def recover(api: ApiServer, body: dict, user: str = OWNER, role: str | None = None) -> dict:
    async with api.client(headers=api.token_headers(user, role=role)) as client:
        return envelope(await client.post(URL, json=body))


async def rows(api: ApiServer, task_id: int) -> list[dict]:
    async with api.state.db.transaction(write=False) as conn:
        query = sa.select(task_files).where(task_files.c.jediTaskID == task_id).order_by(task_files.c.fileID)
        return [dict(row) for row in (await conn.execute(query)).mappings()]


async def catalog_names(api: ApiServer, dataset: str) -> list[str]:
    async with api.state.db.transaction(write=False) as conn:
        return [row["lfn"] for row in await catalog_db.files(conn, dataset)]


async def last_request(api: ApiServer) -> dict:
    async with api.state.db.transaction(write=False) as conn:
        request_id = (
            await conn.execute(sa.select(sa.func.max(file_recovery_requests.c.request_id)))
        ).scalar()
        return await recovery_db.get_request(conn, request_id)


async def job_count(api: ApiServer, task_id: int) -> int:
    async with api.state.db.transaction(write=False) as conn:
        query = sa.select(sa.func.count()).select_from(jobs).where(jobs.c.jediTaskID == task_id)
        return (await conn.execute(query)).scalar_one()


def log_text(api: ApiServer, request: dict) -> str:
    return (api.state.settings.effective_cache_dir / "jedilog" / request["log_name"]).read_text()


async def one_task_done(world) -> tuple[ApiServer, AgentRunner, int, list[dict]]:
    api, runner = world
    await register(api, f"{A}.in", [f"rec.{i}.root" for i in range(3)])
    task_id, ran = await finished_task(api, runner, A, f"{A}.in", None)
    assert len(ran) == 3
    return api, runner, task_id, ran


async def test_a_request_is_stored_and_answered_with_its_log_url(world) -> None:
    api, _runner, task_id, ran = await one_task_done(world)
    body = await recover(api, {"task_id": task_id, "files": [output_of(ran[1])], "dry_run": True})
    assert body["success"] is True, body
    assert body["message"] == "The request was accepted and will be processed in a few minutes"
    url = body["data"]["logFileURL"]
    match = re.fullmatch(r"https://testserver/cache/jedilog/(lost_file_recovery\.[0-9a-f-]{36}\.log)", url)
    assert match, url
    request = await last_request(api)
    assert request["log_name"] == match.group(1)
    assert log_text(api, request) == ""
    assert {key: request[key] for key in ("requester", "jediTaskID", "dataset", "files", "status")} == {
        "requester": REQUESTER,
        "jediTaskID": task_id,
        "dataset": None,
        "files": [output_of(ran[1])],
        "status": "queued",
    }
    assert (request["dry_run"], request["no_child_retry"], request["force"]) == (True, True, False)
    assert (request["reproduce_parent"], request["reproduce_upto_nth_gen"]) == (False, 0)


async def test_only_the_owner_or_production_may_ask(world) -> None:
    api, _runner, task_id, _ran = await one_task_done(world)
    refused = {"success": False, "message": "not the task owner or no production role", "data": None}
    assert await recover(api, {"task_id": task_id}, user="other user") == refused
    assert await recover(api, {"dataset": f"{A}_out/"}, user="other user") == refused
    assert await recover(api, {"dataset": "no.such.dataset/"}, user="other user") == refused
    assert await recover(api, {"task_id": 99999999}, user="other user") == refused
    body = await recover(api, {"dataset": f"{A}_out/"}, user="Harvester Robot", role="production")
    assert body["success"] is True, body
    body = await recover(api, {"dataset": f"{A}_out/"})
    assert body["success"] is True, body


async def test_bad_parameters_get_the_contract_messages(world) -> None:
    api, _runner = world
    assert await recover(api, {}) == {
        "success": False,
        "message": "Either task_id or dataset must be provided",
        "data": None,
    }
    assert await recover(api, {"dataset": "x/", "files": "a.root"}) == {
        "success": False,
        "message": "Type error: 'files' must be of type list, got str.",
        "data": None,
    }
    assert (await recover(api, {"dataset": "x/", "reproduce_upto_nth_gen": 99}))["message"] == (
        "reproduce_upto_nth_gen must be between 0 and 10"
    )
    assert (await recover(api, {"dataset": "x/", "colour": 1}))["message"] == (
        "Argument error: got an unexpected keyword argument 'colour'"
    )
    async with api.client(headers=api.token_headers(OWNER)) as client:
        body = envelope(await client.get(URL, params={"dataset": "x/"}))
    assert body == {"success": False, "message": "expecting POST, received GET", "data": None}
    async with api.client(https=False) as client:
        body = envelope(await client.post(URL, json={"dataset": "x/"}))
    assert body == {"success": False, "message": "SSL secure connection is required", "data": None}


async def test_lost_files_of_a_done_task_are_produced_again(world) -> None:
    api, runner, task_id, ran = await one_task_done(world)
    lost = output_of(ran[1])
    kept = [output_of(ran[0]), output_of(ran[2])]
    lost_input = ran[1]["inFiles"]
    body = await recover(api, {"task_id": task_id, "files": [lost, "not.a.file.root"]})
    assert body["success"] is True, body
    await runner.drain()
    assert await task_status(api, task_id) == "running"
    by_name = {row["lfn"]: row for row in await rows(api, task_id)}
    assert by_name[lost]["status"] == "lost"
    assert await catalog_names(api, f"{A}_out/") == kept
    (again,) = await acquire(api, n_jobs=20)
    assert again["inFiles"] == lost_input
    await run_job(api, again)
    await runner.drain()
    assert await task_status(api, task_id) == "done"
    assert await acquire(api, n_jobs=20) == []
    replacement = output_of(again)
    assert replacement not in (lost, *kept)
    assert await catalog_names(api, f"{A}_out/") == [*kept, replacement]
    async with api.state.db.transaction(write=False) as conn:
        datasets = {d["datasetName"]: d for d in await tasks_db.datasets(conn, task_id)}
    master = datasets[f"{A}.in"]
    assert (master["nFiles"], master["nFilesFinished"], master["nFilesFailed"]) == (3, 3, 0)
    output = datasets[f"{A}_out/"]
    assert (output["nFiles"], output["nFilesFinished"], output["nFilesMissing"]) == (3, 3, 1)
    request = await last_request(api)
    assert (request["status"], request["message"]) == ("done", "1 lost files re-produced or retried")
    text = log_text(api, request)
    assert f"recovery of lost files of jediTaskID={task_id} requested by {REQUESTER}" in text
    assert "not.a.file.root: not an output of" in text
    assert f"jediTaskID={task_id}: marked lost: {lost}" in text
    assert f"jediTaskID={task_id}: done -> processing again" in text
    assert f"jediTaskID={task_id}: {lost} re-produced as {replacement}" in text
    assert text.rstrip().endswith("request done: 1 lost files re-produced or retried")


async def test_a_dry_run_changes_nothing(world) -> None:
    api, runner, task_id, ran = await one_task_done(world)
    before = await rows(api, task_id)
    catalog_before = await catalog_names(api, f"{A}_out/")
    body = await recover(api, {"dataset": f"{A}_out/", "dry_run": True})
    assert body["success"] is True, body
    await runner.drain()
    assert await rows(api, task_id) == before
    assert await catalog_names(api, f"{A}_out/") == catalog_before
    assert await task_status(api, task_id) == "done"
    assert await acquire(api, n_jobs=20) == []
    request = await last_request(api)
    assert request["status"] == "done"
    assert request["message"] == "dry run: 3 lost files in 1 tasks, nothing changed"
    text = log_text(api, request)
    for job in ran:
        assert f"{output_of(job)} ({A}_out/) would be re-produced" in text


async def test_a_step_rolled_back_is_done_once_when_run_again(world) -> None:
    api, runner, task_id, ran = await one_task_done(world)
    lost = output_of(ran[0])
    assert (await recover(api, {"task_id": task_id, "files": [lost]}))["success"] is True

    class Killed(Exception):
        pass

    for _ in range(2):
        # Plan, then reopen: each step is killed once before its commit, then run again.
        with pytest.raises(Killed):
            async with api.state.db.transaction() as conn:
                assert (await file_recovery.work(conn, api.state.clock)).progress == 1
                raise Killed
        await runner.run_once("file_recovery")
    assert await runner.run_once("file_recovery") == 0
    await runner.drain()
    assert len(await acquire(api, n_jobs=20)) == 1
    assert await job_count(api, task_id) == 4
    async with api.state.db.transaction(write=False) as conn:
        master = next(d for d in await tasks_db.datasets(conn, task_id) if d["type"] == "input")
    assert (master["nFilesFinished"], master["nFilesUsed"]) == (2, 3)
    text = log_text(api, await last_request(api))
    assert text.count("marked lost") == 1


async def test_a_task_with_nothing_lost_is_refused_unless_forced(world) -> None:
    api, runner, task_id, ran = await one_task_done(world)
    assert (await recover(api, {"task_id": task_id, "files": [output_of(ran[0])]}))["success"] is True
    await run_all(api, runner)
    # The same file again: it is no longer a finished output, so there is nothing to recover.
    assert (await recover(api, {"task_id": task_id, "files": [output_of(ran[0])]}))["success"] is True
    await runner.drain()
    request = await last_request(api)
    assert (request["status"], request["message"]) == (
        "failed",
        "no lost file to recover (force re-runs the task anyway)",
    )
    assert f"{output_of(ran[0])}: lost, not a finished output, skipped" in log_text(api, request)
    assert (await recover(api, {"task_id": task_id, "files": [output_of(ran[0])], "force": True}))["success"]
    await runner.drain()
    assert (await last_request(api))["status"] == "done"
    assert await task_status(api, task_id) == "done"


async def test_a_deleted_dataset_needs_resurrect_datasets(world) -> None:
    api, runner, task_id, ran = await one_task_done(world)
    async with api.state.db.transaction() as conn:
        await conn.execute(sa.text("DELETE FROM catalog_files WHERE dataset = :d"), {"d": f"{A}_out/"})
        await conn.execute(sa.text("DELETE FROM catalog_datasets WHERE name = :d"), {"d": f"{A}_out/"})
    assert (await recover(api, {"task_id": task_id, "files": [output_of(ran[0])]}))["success"] is True
    await runner.drain()
    request = await last_request(api)
    assert (request["status"], request["message"]) == (
        "failed",
        f"dataset {A}_out/ is not in the catalog (resurrect_datasets re-creates it)",
    )
    body = await recover(api, {"task_id": task_id, "files": [output_of(ran[0])], "resurrect_datasets": True})
    assert body["success"] is True
    (again,) = await run_all(api, runner)
    assert await catalog_names(api, f"{A}_out/") == [output_of(again)]
    assert (await last_request(api))["status"] == "done"


async def test_reproduce_parent_walks_up_two_generations(world) -> None:
    api, runner = world
    await register(api, f"{A}.in", ["gen.0.root", "gen.1.root"])
    task_a, ran_a = await finished_task(api, runner, A, f"{A}.in", None)
    task_b, ran_b = await finished_task(api, runner, B, f"{A}_out/", task_a)
    task_c, ran_c = await finished_task(api, runner, C, f"{B}_out/", task_b)
    lost_c = output_of(ran_c[1])
    lost_b = ran_c[1]["inFiles"]
    lost_a = next(job["inFiles"] for job in ran_b if output_of(job) == lost_b)
    first_input = next(job["inFiles"] for job in ran_a if output_of(job) == lost_a)
    body = {"task_id": task_c, "files": [lost_c], "reproduce_parent": True, "reproduce_upto_nth_gen": 2}
    assert (await recover(api, body))["success"] is True
    await runner.drain()
    # The oldest generation first: only the grandparent runs.
    assert [await task_status(api, t) for t in (task_a, task_b, task_c)] == ["running", "done", "done"]
    (job_a,) = await acquire(api, n_jobs=20)
    assert job_a["inFiles"] == first_input
    await run_job(api, job_a)
    await runner.drain()
    assert [await task_status(api, t) for t in (task_a, task_b, task_c)] == ["done", "running", "done"]
    (job_b,) = await acquire(api, n_jobs=20)
    assert job_b["inFiles"] == output_of(job_a)
    await run_job(api, job_b)
    await runner.drain()
    (job_c,) = await acquire(api, n_jobs=20)
    assert job_c["inFiles"] == output_of(job_b)
    await run_job(api, job_c)
    await runner.drain()
    assert [await task_status(api, t) for t in (task_a, task_b, task_c)] == ["done"] * 3
    assert await acquire(api, n_jobs=20) == []
    assert lost_c not in await catalog_names(api, f"{C}_out/")
    assert output_of(job_c) in await catalog_names(api, f"{C}_out/")
    request = await last_request(api)
    assert (request["status"], request["message"]) == ("done", "3 lost files re-produced or retried")
    text = log_text(api, request)
    assert f"{lost_a} re-produced as {output_of(job_a)}" in text
    assert f"{lost_a} is read as its replacement {output_of(job_a)}" in text
    assert f"{lost_b} re-produced as {output_of(job_b)}" in text
    assert f"{lost_c} re-produced as {output_of(job_c)}" in text


async def test_a_child_that_failed_on_a_lost_file_is_retried_with_no_child_retry_false(world) -> None:
    api, runner, task_a, ran_a = await one_task_done(world)
    child_params = {**input_task(f"{A}_out/", B, n_files_per_job=1), "parent_tid": task_a, "maxAttempt": 1}
    child = await submit(api, child_params, user=OWNER)
    await runner.drain()
    lost = output_of(ran_a[0])
    for job in await acquire(api, n_jobs=20):
        # The child cannot read the lost file: its job fails, for good with one attempt per file.
        await run_job(api, job, final="failed" if job["inFiles"] == lost else "finished")
    await runner.drain()
    assert await task_status(api, child) == "finished"
    assert (await recover(api, {"task_id": task_a, "files": [lost], "no_child_retry": False}))["success"]
    await runner.drain()
    (job_a,) = await acquire(api, n_jobs=20)
    await run_job(api, job_a)
    await runner.drain()
    assert await task_status(api, task_a) == "done"
    (retried,) = await acquire(api, n_jobs=20)
    assert int(retried["taskID"]) == child
    assert retried["inFiles"] == output_of(job_a)
    await run_job(api, retried)
    await runner.drain()
    assert await task_status(api, child) == "done"
    request = await last_request(api)
    assert request["status"] == "done"
    assert f"child jediTaskID={child}: 1 input files to process again" in log_text(api, request)


async def test_log_names_cannot_leave_the_jedilog_directory(tmp_path: Path) -> None:
    store = LocalFileStore(tmp_path / "cache")
    await file_recovery.append_jedilog(store, "x.log", ["one"])
    assert (tmp_path / "cache" / "jedilog" / "x.log").read_text() == "one\n"
    for name in ("../x.log", ".hidden", "a/b.log"):
        with pytest.raises(UnsafeName):
            await file_recovery.append_jedilog(store, name, ["two"])
