"""Workflows (api-v1.md §2.13, file_server/upload_workflow_request) and the workflow agent that
turns them into tasks, through the API and the agents, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from bamboo.agents.runner import AgentContext, AgentRunner
from bamboo.db import workflows as workflows_db
from bamboo.logic import queues, workflows
from bamboo.logic.catalog import CatalogFile
from tests.api.conftest import ApiServer
from tests.api.test_task_flow import acquire, envelope, run_job, task_status
from tests.conftest import FixedClock
from tests.tasks import NO_INPUT_TASK, input_task

T0 = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
USER = "test user"
OWNER = "Test User"  # the compact name of a token issued to "test user"
INPUT = "user.testuser.wf.input"
SECURE_REQUIRED = {"success": False, "message": "SSL secure connection is required", "data": None}


@pytest.fixture
async def world(api: ApiServer) -> tuple[ApiServer, AgentRunner]:
    api.state.clock = FixedClock(T0)
    async with api.state.db.transaction() as conn:
        await queues.put(conn, api.state.clock, {"name": "TEST_PQ", "type": "unified", "corecount": 1})
        files = [CatalogFile(lfn=f"wf.{i:02d}.root", fsize=1000 + i, n_events=10) for i in range(4)]
        await api.state.dm.register_files(conn, api.state.clock, INPUT, files)
    runner = AgentRunner(AgentContext(api.state.db, api.state.clock, api.state.dm))
    return api, runner


def step(name: str, depends_on: list[str] | None = None, input_from: str | None = None) -> dict[str, Any]:
    params = input_task(INPUT if input_from is None else "to.be.replaced/", f"user.testuser.wf.{name}", 2)
    result: dict[str, Any] = {"name": name, "task_params": params}
    if depends_on is not None:
        result["depends_on"] = depends_on
    if input_from is not None:
        result["input_from"] = input_from
    return result


# c reads b's output and also waits for a; b reads a's output. Declared out of order on purpose.
DAG = {
    "workflow_name": "three steps",
    "steps": [step("c", ["a", "b"], "b"), step("b", ["a"], "a"), step("a")],
}


async def post(
    api: ApiServer, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> dict:
    async with api.client(headers=headers if headers is not None else api.token_headers(USER)) as client:
        return envelope(await client.post(f"/api/v1/{path}", json=body))


async def submit_workflow(api: ApiServer, definition: dict[str, Any], **token: Any) -> int:
    body = await post(
        api, "workflow/submit_workflow", {"workflow_definition": definition}, api.token_headers(USER, **token)
    )
    assert body == {"success": True, "message": "", "data": {"workflow_id": body["data"]["workflow_id"]}}
    return body["data"]["workflow_id"]


async def workflow_row(api: ApiServer, workflow_id: int) -> dict[str, Any]:
    async with api.state.db.transaction(write=False) as conn:
        row = await workflows_db.get(conn, workflow_id)
    assert row is not None
    return row


async def step_tasks(api: ApiServer, workflow_id: int) -> dict[str, int]:
    async with api.state.db.transaction(write=False) as conn:
        rows = await workflows_db.steps_with_task_status(conn, workflow_id)
    return {row["step_name"]: row["jediTaskID"] for row in rows}


async def task_record(api: ApiServer, task_id: int) -> dict[str, Any]:
    async with api.client(headers=api.token_headers(USER)) as client:
        body = envelope(await client.get("/api/v1/task/get_detailed_info", params={"task_id": task_id}))
    assert body["success"] is True, body
    return body["data"]


async def run_task_jobs(api: ApiServer, runner: AgentRunner) -> None:
    await runner.drain()
    for job in await acquire(api, n_jobs=20):
        await run_job(api, job)
    await runner.drain()


# --- workflow/submit_workflow_raw_request -------------------------------------------------------------


async def test_raw_request_is_stored_with_the_callers_dn(api: ApiServer) -> None:
    raw = {"workflow_name": "raw one", "language": "cwl", "user_dn": "/CN=someone else"}
    first = await post(api, "workflow/submit_workflow_raw_request", {"params": raw})
    second = await post(api, "workflow/submit_workflow_raw_request", {"params": orjson.dumps(raw).decode()})
    assert first["success"] is True and second["success"] is True
    assert first["message"] == "" and set(first["data"]) == {"workflow_id"}
    assert second["data"]["workflow_id"] > first["data"]["workflow_id"]
    row = await workflow_row(api, first["data"]["workflow_id"])
    stored = orjson.loads(row["request"])
    assert (row["label"], row["owner"], row["status"], row["kind"], row["name"]) == (
        "user",
        OWNER,
        "registered",
        "raw",
        "raw one",
    )
    assert stored == {**raw, "user_dn": row["owner_dn"]}
    assert row["owner_dn"].startswith(OWNER)


async def test_raw_request_form_post_as_panda_client_sends_it(api: ApiServer) -> None:
    async with api.client(headers={**api.token_headers(USER), "Accept": "application/json"}) as client:
        body = envelope(
            await client.post("/api/v1/workflow/submit_workflow_raw_request", data={"params": '{"a": 1}'})
        )
    assert body["success"] is True and body["data"]["workflow_id"] >= 1


async def test_raw_request_form_body_without_content_type(api: ApiServer) -> None:
    # panda-client 2.2.0's submit_workflow_tmp URL-encodes the form but names no content type;
    # upstream's form parser reads such a POST body as a URL-encoded form.
    headers = {**api.token_headers(USER), "Accept": "application/json"}
    async with api.client(headers=headers) as client:
        response = await client.post(
            "/api/v1/workflow/submit_workflow_raw_request",
            content=b"params=%7B%22a%22%3A+1%7D&params=ignored",
        )
    assert "content-type" not in response.request.headers
    body = envelope(response)
    assert body["success"] is True, body
    stored = orjson.loads((await workflow_row(api, body["data"]["workflow_id"]))["request"])
    assert stored["a"] == 1


async def test_raw_request_refusals(api: ApiServer) -> None:
    bad_json = await post(api, "workflow/submit_workflow_raw_request", {"params": "{not json"})
    assert bad_json["success"] is False and bad_json["data"] is None
    assert bad_json["message"].startswith("Failed to parse params: {not json ")
    not_object = await post(api, "workflow/submit_workflow_raw_request", {"params": "[1, 2]"})
    assert not_object["message"] == (
        "Failed to parse params: [1, 2] the request must be a JSON object, got list"
    )
    missing = await post(api, "workflow/submit_workflow_raw_request", {})
    assert missing == {
        "success": False,
        "message": "Argument error: missing a required argument: 'params'",
        "data": None,
    }
    wrong_type = await post(api, "workflow/submit_workflow_raw_request", {"params": 3})
    assert wrong_type["message"] == "Type error: 'params' must be of type dict | str, got int."
    anonymous = await post(api, "workflow/submit_workflow_raw_request", {"params": {}}, headers={})
    assert anonymous == SECURE_REQUIRED
    async with api.client(headers=api.token_headers(USER)) as client:
        get = envelope(
            await client.get("/api/v1/workflow/submit_workflow_raw_request", params={"params": "{}"})
        )
    assert get == {"success": False, "message": "expecting POST, received GET", "data": None}


# --- workflow/submit_workflow -----------------------------------------------------------------------


async def test_submit_workflow_labels_by_role(api: ApiServer) -> None:
    user_id = await submit_workflow(api, DAG)
    managed_id = await submit_workflow(api, DAG, role="production")
    user_row = await workflow_row(api, user_id)
    managed_row = await workflow_row(api, managed_id)
    assert (user_row["label"], user_row["kind"], user_row["status"], user_row["name"]) == (
        "user",
        "definition",
        "registered",
        "three steps",
    )
    assert managed_row["label"] == "managed"
    assert orjson.loads(user_row["request"]) == DAG


async def test_submit_workflow_refusals(api: ApiServer) -> None:
    wrong_type = await post(api, "workflow/submit_workflow", {"workflow_definition": "{}"})
    assert wrong_type == {
        "success": False,
        "message": "Type error: 'workflow_definition' must be of type dict, got str.",
        "data": None,
    }
    unexpected = await post(api, "workflow/submit_workflow", {"workflow_definition": {}, "owner": "x"})
    assert unexpected["message"] == "Argument error: got an unexpected keyword argument 'owner'"
    anonymous = await post(api, "workflow/submit_workflow", {"workflow_definition": {}}, headers={})
    assert anonymous == SECURE_REQUIRED
    huge = {"steps": [], "padding": "x" * (workflows.MAX_REQUEST_BYTES + 1)}
    too_large = await post(api, "workflow/submit_workflow", {"workflow_definition": huge})
    assert too_large["success"] is False
    assert too_large["message"] == (
        f"Failed to submit workflow: the request is larger than {workflows.MAX_REQUEST_BYTES} bytes"
    )


# --- the workflow agent ---------------------------------------------------------------------------


async def test_three_step_dag_runs_in_dependency_order(world) -> None:
    api, runner = world
    workflow_id = await submit_workflow(api, DAG)
    assert await runner.run_once("workflow") == 1
    tasks_now = await step_tasks(api, workflow_id)
    assert list(tasks_now) == ["a"]
    assert (await workflow_row(api, workflow_id))["status"] == "running"
    # Rerunning the step finds nothing to do and creates nothing.
    assert await runner.run_once("workflow") == 0
    assert await step_tasks(api, workflow_id) == tasks_now
    a_task = await task_record(api, tasks_now["a"])
    assert a_task["userName"] == OWNER and a_task["parent_tid"] is None

    await run_task_jobs(api, runner)
    assert await task_status(api, tasks_now["a"]) == "done"
    tasks_now = await step_tasks(api, workflow_id)
    assert list(tasks_now) == ["a", "b"]
    b_task = await task_record(api, tasks_now["b"])
    assert b_task["parent_tid"] == tasks_now["a"] and b_task["userName"] == OWNER
    b_input = b_task["raw_task_params"]["jobParameters"][0]
    assert b_input["dataset"] == "user.testuser.wf.a_out/"

    await run_task_jobs(api, runner)
    tasks_now = await step_tasks(api, workflow_id)
    assert list(tasks_now) == ["a", "b", "c"]
    c_task = await task_record(api, tasks_now["c"])
    assert c_task["parent_tid"] == tasks_now["b"]
    assert c_task["raw_task_params"]["jobParameters"][0]["dataset"] == "user.testuser.wf.b_out/"
    assert (await workflow_row(api, workflow_id))["status"] == "running"

    await run_task_jobs(api, runner)
    assert await task_status(api, tasks_now["c"]) == "done"
    row = await workflow_row(api, workflow_id)
    assert (row["status"], row["error_dialog"]) == ("done", None)
    assert row["modification_time"] == T0
    assert await runner.run_once("workflow") == 0


async def test_a_killed_step_rolls_back_and_a_rerun_creates_each_task_once(world) -> None:
    api, runner = world
    workflow_id = await submit_workflow(api, {"steps": [step("a"), step("x")]})

    class Killed(Exception):
        pass

    # The agent's transaction dies before its commit: nothing of it remains.
    with pytest.raises(Killed):
        async with api.state.db.transaction() as conn:
            assert await workflows.advance_batch(conn, api.state.clock) == 1
            raise Killed
    assert await step_tasks(api, workflow_id) == {}
    assert (await workflow_row(api, workflow_id))["status"] == "registered"
    assert await runner.run_once("workflow") == 1
    assert await runner.run_once("workflow") == 0
    created = await step_tasks(api, workflow_id)
    assert sorted(created) == ["a", "x"] and len(set(created.values())) == 2
    async with api.client(headers=api.token_headers(USER)) as client:
        listed = envelope(
            await client.get(
                "/api/v1/task/get_tasks_detailed_info_since",
                params={"filters": orjson.dumps({"taskName": "user.testuser.wf.a"}).decode(), "n_tasks": 10},
            )
        )["data"]
    assert [task["jediTaskID"] for task in listed] == [created["a"]]


async def test_a_failed_step_fails_the_workflow_and_stops_it(world) -> None:
    api, runner = world
    workflow_id = await submit_workflow(api, {"steps": [step("a"), step("b", ["a"], "a")]})
    await runner.run_once("workflow")
    a_id = (await step_tasks(api, workflow_id))["a"]
    killed = await post(api, "task/kill", {"task_id": a_id})
    assert killed["success"] is True, killed
    await runner.drain()
    assert await task_status(api, a_id) == "aborted"
    row = await workflow_row(api, workflow_id)
    assert (row["status"], row["error_dialog"]) == ("failed", f"step 'a' (task {a_id}) ended aborted")
    assert list(await step_tasks(api, workflow_id)) == ["a"]


BAD_DEFINITIONS = [
    (
        {"steps": [step("a", ["b"]), step("b", ["a"])]},
        "the steps 'a', 'b' depend on each other in a cycle",
    ),
    ({"steps": [step("a", ["a"])]}, "the steps 'a' depend on each other in a cycle"),
    ({"steps": [step("a", ["nope"])]}, "step 'a' depends on unknown step 'nope'"),
    ({"steps": [step("a"), step("a")]}, "duplicate step name 'a'"),
    ({"steps": []}, "'steps' must be a non-empty list"),
    ({"steps": [step("a")], "extra": 1}, "unknown workflow key 'extra'"),
    ({"steps": [{"name": "../x", "task_params": {}}]}, "steps[0]: 'name' must be 1 to 64 letters"),
    (
        {"steps": [step("a"), {"name": "b", "task_params": NO_INPUT_TASK, "input_from": "a"}]},
        "step 'b': 'input_from' needs exactly one input item",
    ),
    (
        {"steps": [{"name": "a", "task_params": {**NO_INPUT_TASK, "nEventsPerJob": -1}}]},
        "step 'a': task parameter 'nEventsPerJob'",
    ),
    (
        {"steps": [{"name": "a", "task_params": {**NO_INPUT_TASK, "pad": "x" * 1024 * 1024}}]},
        "step 'a': task parameters larger than 1048576 bytes",
    ),
    ({"language": "cwl"}, "the workflow has no 'steps'"),
]


@pytest.mark.parametrize(("definition", "reason"), BAD_DEFINITIONS)
async def test_a_bad_definition_fails_with_the_reason(world, definition: dict, reason: str) -> None:
    api, runner = world
    workflow_id = await submit_workflow(api, definition)
    assert await runner.run_once("workflow") == 1
    row = await workflow_row(api, workflow_id)
    assert row["status"] == "failed"
    assert row["error_dialog"].startswith(reason)
    assert await step_tasks(api, workflow_id) == {}
    checked = await post(
        api,
        "file_server/upload_workflow_request",
        {"data": orjson.dumps(definition).decode(), "dry_run": True},
    )
    assert checked["success"] is True and checked["data"]["valid"] is False
    assert checked["data"]["error"].startswith(reason)


async def test_a_raw_request_in_the_step_format_runs(world) -> None:
    api, runner = world
    body = await post(api, "workflow/submit_workflow_raw_request", {"params": {"steps": [step("a")]}})
    workflow_id = body["data"]["workflow_id"]
    await runner.run_once("workflow")
    assert list(await step_tasks(api, workflow_id)) == ["a"]


# --- file_server/upload_workflow_request -----------------------------------------------------------


async def test_upload_is_stored_for_the_agent(world) -> None:
    api, runner = world
    body = await post(api, "file_server/upload_workflow_request", {"data": orjson.dumps(DAG).decode()})
    assert body["success"] is True
    assert body["message"] == "The request was accepted and will be processed in a few minutes"
    workflow_id = body["data"]["workflow_id"]
    row = await workflow_row(api, workflow_id)
    assert (row["status"], row["label"], row["owner"]) == ("registered", "user", OWNER)
    assert orjson.loads(row["request"])["user_dn"] == row["owner_dn"]
    await runner.run_once("workflow")
    assert list(await step_tasks(api, workflow_id)) == ["a"]


async def test_upload_dry_run_creates_nothing(world) -> None:
    api, _ = world
    body = await post(
        api, "file_server/upload_workflow_request", {"data": orjson.dumps(DAG).decode(), "dry_run": True}
    )
    assert body == {
        "success": True,
        "message": "",
        "data": {"valid": True, "workflow_name": "three steps", "steps": ["a", "b", "c"]},
    }
    async with api.state.db.transaction(write=False) as conn:
        assert await workflows_db.claim_actionable(conn, workflows.TASK_ENDED, 10) == []


async def test_upload_sync_submits_the_first_steps_at_once(world) -> None:
    api, runner = world
    body = await post(
        api, "file_server/upload_workflow_request", {"data": orjson.dumps(DAG).decode(), "sync": True}
    )
    assert body["success"] is True and body["message"] == ""
    data = body["data"]
    assert data["status"] == "running" and list(data["tasks"]) == ["a"]
    assert await step_tasks(api, data["workflow_id"]) == data["tasks"]
    assert await runner.run_once("workflow") == 0
    assert await task_status(api, data["tasks"]["a"]) == "registered"


async def test_upload_refusals(world) -> None:
    api, _ = world
    bad_json = await post(api, "file_server/upload_workflow_request", {"data": "{oops"})
    assert bad_json["success"] is False
    assert bad_json["message"].startswith("Cannot upload the workflow request: data is not valid JSON: ")
    assert bad_json["message"].endswith(" ")
    not_object = await post(api, "file_server/upload_workflow_request", {"data": "3"})
    assert not_object["message"] == "Cannot upload the workflow request: data must be a JSON object, got int "
    cycle = orjson.dumps({"steps": [step("a", ["a"])]}).decode()
    refused = await post(api, "file_server/upload_workflow_request", {"data": cycle, "sync": True})
    assert refused == {
        "success": False,
        "message": "Cannot upload the workflow request: the steps 'a' depend on each other in a cycle ",
        "data": None,
    }
    async with api.state.db.transaction(write=False) as conn:
        assert await workflows_db.claim_actionable(conn, workflows.TASK_ENDED, 10) == []
    anonymous = await post(api, "file_server/upload_workflow_request", {"data": "{}"}, headers={})
    assert anonymous == SECURE_REQUIRED
    missing = await post(api, "file_server/upload_workflow_request", {"sync": True})
    assert missing["message"] == "Argument error: missing a required argument: 'data'"
    wrong = await post(api, "file_server/upload_workflow_request", {"data": {}})
    assert wrong["message"] == "Type error: 'data' must be of type str, got dict."


async def test_only_a_managed_workflow_submits_production_tasks(world) -> None:
    api, runner = world
    production_step = {"name": "a", "task_params": {**NO_INPUT_TASK, "prodSourceLabel": "managed"}}
    user_id = await submit_workflow(api, {"steps": [production_step]})
    managed_id = await submit_workflow(api, {"steps": [production_step]}, role="production")
    await runner.run_once("workflow")
    user_row = await workflow_row(api, user_id)
    assert (user_row["status"], user_row["error_dialog"]) == (
        "failed",
        "step 'a': prodSourceLabel=managed requires the production role; use user",
    )
    assert await step_tasks(api, user_id) == {}
    managed_task = await task_record(api, (await step_tasks(api, managed_id))["a"])
    assert (managed_task["prodSourceLabel"], managed_task["userName"]) == ("managed", OWNER)
    assert (await workflow_row(api, managed_id))["status"] == "running"
