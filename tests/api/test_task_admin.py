"""Direct task changes and task reads through the API, on both databases (api-v1.md §2.1)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from bamboo.db.schema import jobs, task_datasets, task_files, tasks
from tests.api.conftest import ApiServer
from tests.api.test_task_flow import acquire, envelope, submit, task_status, world
from tests.tasks import NO_INPUT_TASK

__all__ = ["world"]

OWNER = "test user"
OPERATOR = "Task Operator"
MISSING = 123
PRODUCTION_REQUIRED = {"success": False, "message": "production or pilot role required", "data": None}
NOT_FOUND = {"success": False, "message": "Task not found", "data": None}


async def post(api: ApiServer, name: str, *, production: bool = True, **params: Any) -> dict:
    headers = api.token_headers(OPERATOR, role="production") if production else api.token_headers(OWNER)
    async with api.client(headers=headers) as client:
        return envelope(await client.post(f"/api/v1/task/{name}", json=params))


async def get(api: ApiServer, name: str, **params: Any) -> dict:
    async with api.client(headers=api.token_headers(OWNER)) as client:
        return envelope(await client.get(f"/api/v1/task/{name}", params=params))


async def task_row(api: ApiServer, task_id: int) -> dict:
    async with api.state.db.transaction() as conn:
        query = sa.select(tasks).where(tasks.c.jediTaskID == task_id)
        return dict((await conn.execute(query)).mappings().one())


async def set_task(api: ApiServer, task_id: int, **values: Any) -> None:
    async with api.state.db.transaction() as conn:
        await conn.execute(sa.update(tasks).where(tasks.c.jediTaskID == task_id).values(**values))


async def job_priorities(api: ApiServer, task_id: int) -> dict[str, set[int]]:
    async with api.state.db.transaction() as conn:
        query = sa.select(jobs.c.jobStatus, jobs.c.currentPriority).where(jobs.c.jediTaskID == task_id)
        result: dict[str, set[int]] = {}
        for row in await conn.execute(query):
            result.setdefault(row[0], set()).add(row[1])
        return result


async def pseudo_input(api: ApiServer, task_id: int) -> tuple[dict, list[dict]]:
    async with api.state.db.transaction() as conn:
        dataset = (
            (
                await conn.execute(
                    sa.select(task_datasets).where(
                        task_datasets.c.jediTaskID == task_id, task_datasets.c.type == "pseudo_input"
                    )
                )
            )
            .mappings()
            .one()
        )
        rows = (
            await conn.execute(
                sa.select(task_files)
                .where(task_files.c.datasetID == dataset["datasetID"])
                .order_by(task_files.c.fileID)
            )
        ).mappings()
        return dict(dataset), [dict(row) for row in rows]


async def running_task(world) -> tuple[ApiServer, int]:
    api, runner = world
    task_id = await submit(api, NO_INPUT_TASK, user=OWNER)
    await runner.drain()
    assert await task_status(api, task_id) == "running"
    return api, task_id


def assert_type_error(body: dict, name: str) -> None:
    assert body["success"] is False and name in body["message"], body


# --- change_priority, change_attribute, change_modification_time, change_split_rule -------------
async def test_change_priority_reaches_jobs_not_yet_running(world) -> None:
    api, task_id = await running_task(world)
    await acquire(api)
    before = await job_priorities(api, task_id)
    (dispatched_status,) = set(before) - {"activated"}
    assert await post(api, "change_priority", task_id=task_id, priority=4321) == {
        "success": True,
        "message": "1 tasks changed",
        "data": None,
    }
    assert (await task_row(api, task_id))["currentPriority"] == 4321
    priorities = await job_priorities(api, task_id)
    assert priorities.pop(dispatched_status) == before[dispatched_status]
    assert priorities == {"activated": {4321}}


async def test_change_priority_refusals(world) -> None:
    api, task_id = await running_task(world)
    assert await post(api, "change_priority", task_id=MISSING, priority=1) == NOT_FOUND
    assert await post(api, "change_priority", production=False, task_id=task_id, priority=1) == (
        PRODUCTION_REQUIRED
    )
    assert_type_error(await post(api, "change_priority", task_id=task_id, priority="high"), "priority")
    assert (await task_row(api, task_id))["currentPriority"] != 1


async def test_change_attribute_sets_the_column_and_the_resource_type(world) -> None:
    api, task_id = await running_task(world)
    assert await post(api, "change_attribute", task_id=task_id, attribute_name="ramCount", value=4000) == {
        "success": True,
        "message": "1 tasks changed",
        "data": None,
    }
    row = await task_row(api, task_id)
    assert row["ramCount"] == 4000 and row["resource_type"] == "SCORE_HIMEM"
    body = await post(api, "change_attribute", task_id=task_id, attribute_name="wallTime", value=3600)
    assert body["success"] is True
    assert (await task_row(api, task_id))["walltime"] == 3600


async def test_change_attribute_refusals(world) -> None:
    api, task_id = await running_task(world)
    assert await post(api, "change_attribute", task_id=task_id, attribute_name="status", value=1) == {
        "success": False,
        "message": "status is not a valid attribute. "
        "Valid attributes are ['ramCount', 'wallTime', 'cpuTime', 'coreCount']",
        "data": None,
    }
    assert (
        await post(api, "change_attribute", task_id=MISSING, attribute_name="cpuTime", value=1) == NOT_FOUND
    )
    body = await post(
        api, "change_attribute", production=False, task_id=task_id, attribute_name="cpuTime", value=1
    )
    assert body == PRODUCTION_REQUIRED
    assert_type_error(
        await post(api, "change_attribute", task_id=task_id, attribute_name="cpuTime", value="x"), "value"
    )


async def test_change_modification_time(world) -> None:
    api, task_id = await running_task(world)
    body = await post(api, "change_modification_time", task_id=task_id, hour_offset=-5)
    assert body == {"success": True, "message": "1 tasks changed", "data": None}
    expected = datetime.now(UTC) - timedelta(hours=5)
    assert abs((await task_row(api, task_id))["modificationTime"] - expected) < timedelta(minutes=1)
    assert await post(api, "change_modification_time", task_id=MISSING, hour_offset=1) == NOT_FOUND
    assert await post(api, "change_modification_time", production=False, task_id=task_id, hour_offset=1) == (
        PRODUCTION_REQUIRED
    )
    assert_type_error(await post(api, "change_modification_time", task_id=task_id), "hour_offset")


async def test_change_split_rule_replaces_adds_and_removes_tags(world) -> None:
    api, task_id = await running_task(world)
    await set_task(api, task_id, splitRule="NE=2,NF=3")
    ok = {"success": True, "message": "1 tasks changed", "data": None}
    assert await post(api, "change_split_rule", task_id=task_id, attribute_name="NF", value="5") == ok
    assert await post(api, "change_split_rule", task_id=task_id, attribute_name="AV", value="1") == ok
    assert (await task_row(api, task_id))["splitRule"] == "NE=2,NF=5,AV=1"
    for removal in ("None", ""):
        assert await post(api, "change_split_rule", task_id=task_id, attribute_name="NF", value=removal) == ok
    assert (await task_row(api, task_id))["splitRule"] == "NE=2,AV=1"


async def test_change_split_rule_refusals(world) -> None:
    api, task_id = await running_task(world)
    body = await post(api, "change_split_rule", task_id=task_id, attribute_name="NE", value="3")
    assert body["success"] is False and body["data"] == 2
    assert body["message"].startswith("NE is not a valid attribute. Valid attributes are ['AI', 'TW', ")
    assert await post(api, "change_split_rule", task_id=MISSING, attribute_name="NF", value="1") == NOT_FOUND
    body = await post(
        api, "change_split_rule", production=False, task_id=task_id, attribute_name="NF", value="1"
    )
    assert body == PRODUCTION_REQUIRED
    # value is declared str: a JSON number is refused.
    assert_type_error(
        await post(api, "change_split_rule", task_id=task_id, attribute_name="NF", value=1), "value"
    )


# --- reactivate, increase_attempts ---------------------------------------------------------------
async def test_reactivate_resets_the_task_and_its_inputs(world) -> None:
    api, task_id = await running_task(world)
    await set_task(api, task_id, status="failed")
    body = await post(api, "reactivate", task_id=task_id)
    dataset, rows = await pseudo_input(api, task_id)
    assert body == {
        "success": True,
        "message": f"updated {len(rows)} inputs and task {task_id} was reactivated ",
        "data": 0,
    }
    assert await task_status(api, task_id) == "ready"
    assert {(row["status"], row["attemptNr"]) for row in rows} == {("ready", 0)}
    assert dataset["status"] == "ready"
    assert (dataset["nFilesUsed"], dataset["nFilesFinished"], dataset["nFilesFailed"]) == (0, 0, 0)
    assert dataset["nFilesToBeUsed"] == dataset["nFiles"] == len(rows)


async def test_reactivate_can_keep_attempt_numbers(world) -> None:
    api, task_id = await running_task(world)
    async with api.state.db.transaction() as conn:
        await conn.execute(
            sa.update(task_files).where(task_files.c.jediTaskID == task_id).values(attemptNr=2)
        )
    body = await post(api, "reactivate", task_id=task_id, keep_attempt_nr=True, trigger_job_generation=True)
    assert body["success"] is True
    _, rows = await pseudo_input(api, task_id)
    assert {row["attemptNr"] for row in rows} == {2}


async def test_reactivate_refusals(world) -> None:
    api, task_id = await running_task(world)
    # Upstream does not tell a missing task apart.
    assert await post(api, "reactivate", task_id=MISSING) == {
        "success": True,
        "message": f"updated 0 inputs and task {MISSING} was reactivated ",
        "data": 0,
    }
    assert await post(api, "reactivate", production=False, task_id=task_id) == PRODUCTION_REQUIRED
    assert_type_error(
        await post(api, "reactivate", task_id=task_id, keep_attempt_nr="maybe"), "keep_attempt_nr"
    )
    assert await task_status(api, task_id) == "running"


async def test_increase_attempts_reopens_exhausted_inputs(world) -> None:
    api, task_id = await running_task(world)
    dataset, rows = await pseudo_input(api, task_id)
    exhausted = rows[0]
    async with api.state.db.transaction() as conn:
        await conn.execute(
            sa.update(task_files)
            .where(task_files.c.fileID == exhausted["fileID"])
            .values(status="ready", attemptNr=3, maxAttempt=3)
        )
        await conn.execute(
            sa.update(task_datasets)
            .where(task_datasets.c.datasetID == dataset["datasetID"])
            .values(nFilesFailed=1, nFilesUsed=2)
        )
    assert await post(api, "increase_attempts", task_id=task_id, increase=2) == {
        "success": True,
        "message": "increased attemptNr for 1 inputs (1 reactivated)",
        "data": 0,
    }
    dataset, rows = await pseudo_input(api, task_id)
    assert rows[0]["maxAttempt"] == 5
    assert rows[1]["maxAttempt"] == exhausted["maxAttempt"]  # held by a job: unchanged
    assert (dataset["nFilesFailed"], dataset["nFilesUsed"]) == (0, 1)


async def test_increase_attempts_refusals(world) -> None:
    api, task_id = await running_task(world)
    assert await post(api, "increase_attempts", task_id=task_id, increase=-1) == {
        "success": False,
        "message": "increase must be a positive integer, got -1",
        "data": None,
    }
    assert await post(api, "increase_attempts", task_id=MISSING, increase=1) == {
        "success": False,
        "message": f"jediTaskID={MISSING} not found",
        "data": 1,
    }
    await set_task(api, task_id, status="done", oldStatus="finishing")
    assert await post(api, "increase_attempts", task_id=task_id, increase=1) == {
        "success": False,
        "message": "command rejected since status=done or oldStatus=finishing "
        "not in ['running', 'scouting', 'ready']",
        "data": 2,
    }
    assert await post(api, "increase_attempts", production=False, task_id=task_id, increase=1) == (
        PRODUCTION_REQUIRED
    )
    assert_type_error(await post(api, "increase_attempts", task_id=task_id), "increase")


# --- reads ---------------------------------------------------------------------------------------
async def test_get_datasets_and_files(world) -> None:
    api, task_id = await running_task(world)
    dataset, rows = await pseudo_input(api, task_id)
    body = await get(api, "get_datasets_and_files", task_id=task_id)
    assert body["success"] is True
    assert body["data"] == [
        {
            "dataset": {"name": dataset["datasetName"], "id": dataset["datasetID"]},
            "files": [
                {"lfn": row["lfn"], "scope": row["scope"], "id": row["fileID"], "status": row["status"]}
                for row in rows
            ],
        }
    ]
    logs = (await get(api, "get_datasets_and_files", task_id=task_id, dataset_types=["log"]))["data"]
    assert [entry["dataset"]["name"] for entry in logs] == ["user.testuser.e2e.0001.log/"]
    assert await get(api, "get_datasets_and_files", task_id=MISSING) == {
        "success": False,
        "message": "No data found for the task",
        "data": None,
    }
    assert await get(api, "get_datasets_and_files", task_id="abc") == {
        "success": False,
        "message": "jediTaskID must be an integer",
        "data": None,
    }


async def test_get_job_descriptions(world) -> None:
    api, task_id = await running_task(world)
    body = await get(api, "get_job_descriptions", task_id=task_id)
    assert body["success"] is True
    records = body["data"]
    assert len(records) == 2
    assert [r["PandaID"] for r in records] == sorted(r["PandaID"] for r in records)
    assert {r["extendedProdSourceLabel"] for r in records} == {"user_normal"}
    assert {r["jobDuration"] for r in records} == {None}
    assert all(r["jediTaskID"] == task_id and isinstance(r["Files"], list) for r in records)
    assert (await get(api, "get_job_descriptions", task_id=task_id, unsuccessful_only=True))["data"] == []
    async with api.state.db.transaction() as conn:
        await conn.execute(
            sa.update(jobs).where(jobs.c.PandaID == records[1]["PandaID"]).values(jobStatus="failed")
        )
    failed = (await get(api, "get_job_descriptions", task_id=task_id, unsuccessful_only=True))["data"]
    assert [r["PandaID"] for r in failed] == [records[1]["PandaID"]]
    assert await get(api, "get_job_descriptions", task_id=MISSING) == {
        "success": True,
        "message": "",
        "data": [],
    }
    assert_type_error(await get(api, "get_job_descriptions", task_id="abc"), "task_id")


async def test_get_parent_detailed_info(world) -> None:
    api, _ = world
    parent_id = await submit(api, NO_INPUT_TASK, user=OWNER)
    child_params = {**NO_INPUT_TASK, "taskName": "user.testuser.child/"}
    async with api.client(headers=api.token_headers(OWNER)) as client:
        child_id = envelope(
            await client.post(
                "/api/v1/task/submit", json={"task_parameters": child_params, "parent_tid": parent_id}
            )
        )["data"]
    body = await get(api, "get_parent_detailed_info", task_id=child_id)
    assert body["success"] is True
    assert body["data"]["jediTaskID"] == parent_id and body["data"]["taskName"] == NO_INPUT_TASK["taskName"]
    expected = {
        parent_id: "No parent task found",
        MISSING: "Child task not found",
    }
    for task_id, message in expected.items():
        assert await get(api, "get_parent_detailed_info", task_id=task_id) == {
            "success": False,
            "message": message,
            "data": None,
        }
    await set_task(api, child_id, parent_tid=MISSING)
    assert (await get(api, "get_parent_detailed_info", task_id=child_id))[
        "message"
    ] == "Parent task not found"


async def test_get_tasks_modified_since(world) -> None:
    api, task_id = await running_task(world)
    since = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S")
    body = await get(api, "get_tasks_modified_since", since=since)
    assert body["success"] is True
    record = body["data"][str(task_id)]  # keyed by reqID, which defaults to the task id
    assert record["jediTaskID"] == task_id and record["status"] == "running"
    assert set(record) == {
        "jediTaskID",
        "modificationTime",
        "status",
        "processingType",
        "transUses",
        "transHome",
        "architecture",
        "reqID",
        "creationDate",
        "site",
        "cloud",
        "taskName",
    }
    full = (await get(api, "get_tasks_modified_since", since=since, full=True))["data"][str(task_id)]
    assert len(full["PandaID"]) == 2 and "statistics" in full
    empty = {"success": True, "message": "", "data": {}}
    assert await get(api, "get_tasks_modified_since", since="yesterday") == empty
    assert await get(api, "get_tasks_modified_since", since=since, min_task_id=task_id) == empty
    assert await get(api, "get_tasks_modified_since", since=since, prod_source_label="managed") == empty
    assert await get(api, "get_tasks_modified_since", since=since, dn="/CN=Someone Else") == empty
    assert_type_error(await get(api, "get_tasks_modified_since"), "since")


# --- job cloning and jumbo jobs ------------------------------------------------------------------
async def test_enable_and_disable_job_cloning(world) -> None:
    api, task_id = await running_task(world)
    await set_task(api, task_id, splitRule="NE=2")
    ok = {"success": True, "message": None, "data": None}
    assert await post(api, "enable_job_cloning", jedi_task_id=task_id, mode="storeonce", num_sites=3) == ok
    row = await task_row(api, task_id)
    assert row["splitRule"] == "NE=2,UC=2,ES=1,EC=2,NS=3" and row["eventService"] == 2
    assert await post(api, "disable_job_cloning", jedi_task_id=task_id) == ok
    row = await task_row(api, task_id)
    assert row["splitRule"] == "NE=2" and row["eventService"] == 0


async def test_job_cloning_refusals(world) -> None:
    api, task_id = await running_task(world)
    for name in ("enable_job_cloning", "disable_job_cloning"):
        assert await post(api, name, jedi_task_id=MISSING) == {
            "success": False,
            "message": "task not found",
            "data": None,
        }
        assert await post(api, name, production=False, jedi_task_id=task_id) == PRODUCTION_REQUIRED
        assert await post(api, name, task_id=task_id) == {
            "success": False,
            "message": "Argument error: missing a required argument: 'jedi_task_id'",
            "data": None,
        }
    assert await post(api, "enable_job_cloning", jedi_task_id=task_id, mode="twice") == {
        "success": False,
        "message": "invalid job cloning mode: twice",
        "data": None,
    }


async def test_enable_jumbo_jobs(world) -> None:
    api, task_id = await running_task(world)
    await set_task(api, task_id, splitRule="NE=2")
    done = {"success": True, "message": "done", "data": 0}
    assert await post(api, "enable_jumbo_jobs", task_id=task_id, jumbo_jobs_total=10) == done
    row = await task_row(api, task_id)
    assert row["useJumbo"] == "W" and row["splitRule"] == "NE=2,NJ=10,MJ=10"
    body = await post(api, "enable_jumbo_jobs", task_id=task_id, jumbo_jobs_total=4, jumbo_jobs_per_site=1)
    assert body == done
    assert (await task_row(api, task_id))["splitRule"] == "NE=2,NJ=4,MJ=1"
    assert await post(api, "enable_jumbo_jobs", task_id=task_id, jumbo_jobs_total=0) == done
    assert (await task_row(api, task_id))["useJumbo"] == "D"


async def test_enable_jumbo_jobs_refusals(world) -> None:
    api, task_id = await running_task(world)
    assert await post(api, "enable_jumbo_jobs", task_id=MISSING, jumbo_jobs_total=1) == {
        "success": False,
        "message": "task not found",
        "data": 2,
    }
    assert await post(api, "enable_jumbo_jobs", production=False, task_id=task_id, jumbo_jobs_total=1) == (
        PRODUCTION_REQUIRED
    )
    assert_type_error(await post(api, "enable_jumbo_jobs", task_id=task_id), "jumbo_jobs_total")


@pytest.mark.parametrize(("status", "use_jumbo", "listed"), [("done", "W", True), ("done", "D", False)])
async def test_get_jumbo_job_datasets(world, status: str, use_jumbo: str, listed: bool) -> None:
    api, task_id = await running_task(world)
    await set_task(api, task_id, prodSourceLabel="managed", status=status, useJumbo=use_jumbo)
    now = datetime.now(UTC)
    async with api.state.db.transaction() as conn:
        await conn.execute(
            sa.insert(task_datasets).values(
                jediTaskID=task_id,
                datasetName="mc.jumbo.out",
                type="output",
                status="done",
                creationTime=now,
                modificationTime=now,
            )
        )
    body = await get(api, "get_jumbo_job_datasets", from_offset=1)
    expected = {str(task_id): {"status": status, "datasets": ["mc.jumbo.out"]}} if listed else {}
    assert body == {"success": True, "message": "", "data": expected}
    assert (await get(api, "get_jumbo_job_datasets", from_offset=3, to_offset=1))["data"] == {}
    assert_type_error(await get(api, "get_jumbo_job_datasets"), "from_offset")
