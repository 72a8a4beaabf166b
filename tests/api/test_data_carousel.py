"""``/api/v1/data_carousel/*`` (api-v1.md §2.11) on both databases: each endpoint's success,
unknown request, caller without the production role, and bad parameters."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bamboo.agents.runner import AgentContext, AgentRunner
from bamboo.db import carousel as carousel_db
from bamboo.db import catalog as catalog_db
from bamboo.logic import queues
from bamboo.logic.catalog import CatalogFile, LocalCatalog
from tests.api.conftest import ApiServer
from tests.api.test_task_flow import submit
from tests.conftest import FixedClock
from tests.tasks import input_task

DATASET = "user.testuser.carousel.input"
ENDPOINTS = ("change_staging_destination", "change_staging_source", "force_to_staging", "retire_unused")
NOT_FOUND = {"success": False, "message": "failed to get corresponding request", "data": None}


@pytest.fixture
async def world(api_factory) -> tuple[ApiServer, AgentRunner, FixedClock]:
    api = api_factory(carousel_destinations=["DISK_A", "DISK_B"], tape_staging_delay_seconds=0.0)
    clock = FixedClock()
    async with api.state.db.transaction() as conn:
        await queues.put(conn, clock, {"name": "TEST_PQ", "type": "unified", "corecount": 1})
        catalog = LocalCatalog()
        await catalog.register_files(
            conn, clock, DATASET, [CatalogFile(lfn=f"c.{i}.root", fsize=100, n_events=1) for i in range(3)]
        )
        await catalog.set_residency(conn, DATASET, "LOCAL_TAPE")
    runner = AgentRunner(AgentContext(api.state.db, clock, api.state.dm, settings=api.state.settings))
    return api, runner, clock


async def call(api: ApiServer, name: str, body: dict, *, role: str | None = "production") -> dict:
    async with api.client(headers=api.token_headers("Carousel Operator", role=role)) as client:
        response = await client.post(f"/api/v1/data_carousel/{name}", json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def queued_request(api: ApiServer, runner: AgentRunner) -> tuple[int, int]:
    """A task over the tape dataset, refined: (task id, its queued request id)."""
    task_id = await submit(api, input_task(DATASET, "user.testuser.carousel", n_files_per_job=1))
    await runner.run_once("refiner")
    request = await stored_of_task(api, task_id)
    assert request["status"] == "queued"
    return task_id, request["request_id"]


async def stored(api: ApiServer, request_id: int) -> dict:
    async with api.state.db.transaction(write=False) as conn:
        request = await carousel_db.get(conn, request_id)
    assert request is not None
    return request


async def stored_of_task(api: ApiServer, task_id: int) -> dict:
    async with api.state.db.transaction(write=False) as conn:
        request = await carousel_db.request_of_task(conn, task_id, DATASET)
    assert request is not None
    return request


async def test_force_to_staging(world) -> None:
    api, runner, _clock = world
    _task_id, request_id = await queued_request(api, runner)
    body = await call(api, "force_to_staging", {"request_id": request_id})
    rule_id = (await stored(api, request_id))["ddm_rule_id"]
    assert rule_id
    assert body == {
        "success": True,
        "message": "status has become staging",
        "data": {"request_id": request_id, "dataset": DATASET, "status": "staging", "ddm_rule_id": rule_id},
    }
    assert (await stored(api, request_id))["destination_rse"] == "DISK_A"
    # By dataset: its newest request, no longer queued.
    assert await call(api, "force_to_staging", {"dataset": DATASET}) == {
        "success": False,
        "message": f"failed to stage request_id={request_id} : status=staging not queued",
        "data": None,
    }


async def test_change_staging_destination(world) -> None:
    api, runner, _clock = world
    task_id, request_id = await queued_request(api, runner)
    await runner.run_once("carousel")
    assert (await stored(api, request_id))["destination_rse"] == "DISK_A"
    body = await call(api, "change_staging_destination", {"request_id": request_id})
    new_id = (await stored_of_task(api, task_id))["request_id"]
    assert new_id != request_id
    assert body == {
        "success": True,
        "message": "new request resubmitted, destination changed; 1 related tasks moved to the new request; "
        "no iDDS here, so no iDDS requests submitted",
        "data": {"request_id": request_id, "new_request_id": new_id, "dataset": DATASET},
    }
    old, new = await stored(api, request_id), await stored(api, new_id)
    assert old["status"] == "cancelled"
    assert (new["status"], new["destination_rse"]) == ("staging", "DISK_B")
    async with api.state.db.transaction(write=False) as conn:
        assert (await catalog_db.rule(conn, old["ddm_rule_id"]))["state"] == "CANCELLED"
    # Every destination has been tried.
    assert await call(api, "change_staging_destination", {"dataset": DATASET}) == {
        "success": False,
        "message": f"failed to resubmit request_id={new_id} : no destination left besides DISK_A,DISK_B",
        "data": None,
    }
    assert await call(api, "change_staging_destination", {"request_id": request_id}) == {
        "success": False,
        "message": f"failed to resubmit request_id={request_id} : status=cancelled not queued or staging",
        "data": None,
    }


async def test_change_staging_source(world) -> None:
    api, runner, _clock = world
    _task_id, request_id = await queued_request(api, runner)
    body = await call(api, "change_staging_source", {"request_id": request_id, "source_rse": "OTHER_TAPE"})
    assert body == {
        "success": True,
        "message": "status=queued changed source_rse from LOCAL_TAPE to OTHER_TAPE",
        "data": {
            "request_id": request_id,
            "dataset": DATASET,
            "source_rse": "OTHER_TAPE",
            "ddm_rule_id": None,
        },
    }
    await runner.run_once("carousel")
    request = await stored(api, request_id)
    async with api.state.db.transaction(write=False) as conn:
        assert (await catalog_db.rule(conn, request["ddm_rule_id"]))["source_rse"] == "OTHER_TAPE"
    body = await call(
        api, "change_staging_source", {"request_id": request_id, "change_src_expr": True, "cancel_fts": True}
    )
    assert body == {
        "success": True,
        "message": "status=staging source replica expression is dropped",
        "data": {
            "request_id": request_id,
            "dataset": DATASET,
            "source_rse": None,
            "ddm_rule_id": request["ddm_rule_id"],
        },
    }
    async with api.state.db.transaction(write=False) as conn:
        rule = await catalog_db.rule(conn, request["ddm_rule_id"])
    assert rule["source_rse"] is None
    # cancel_fts: the transfers start again from now (the API's clock runs after the agents')
    assert rule["started_at"] >= request["start_time"]
    assert await call(api, "change_staging_source", {"request_id": request_id}) == {
        "success": False,
        "message": f"failed to change source request_id={request_id} : "
        "source_rse is required unless change_src_expr is true",
        "data": None,
    }
    bad = await call(api, "change_staging_source", {"request_id": request_id, "source_rse": "../etc"})
    assert bad["success"] is False
    assert bad["message"].startswith(f"failed to change source request_id={request_id} : invalid RSE name")
    await call(api, "change_staging_destination", {"request_id": request_id})
    assert await call(api, "change_staging_source", {"request_id": request_id, "source_rse": "T"}) == {
        "success": False,
        "message": f"request_id={request_id} status=cancelled not queued or staging; skipped",
        "data": None,
    }


async def test_retire_unused(world) -> None:
    api, runner, clock = world
    task_id, request_id = await queued_request(api, runner)
    assert await call(api, "retire_unused", {"request_id": request_id}) == {
        "success": False,
        "message": f"failed to retire request_id={request_id} : status=queued not done",
        "data": None,
    }
    await runner.drain()
    clock.set(clock.now() + timedelta(hours=1))
    await runner.drain()
    request = await stored(api, request_id)
    assert request["status"] == "done"
    assert await call(api, "retire_unused", {"request_id": request_id}) == {
        "success": False,
        "message": f"failed to retire request_id={request_id} : 1 related tasks not finished",
        "data": None,
    }
    async with api.client(headers=api.token_headers("test user")) as client:
        assert (await client.post("/api/v1/task/kill", json={"task_id": task_id})).json()["success"] is True
    await runner.drain()
    assert await call(api, "retire_unused", {"dataset": DATASET}) == {
        "success": True,
        "message": "retired successfully",
        "data": {
            "request_id": request_id,
            "dataset": DATASET,
            "status": "retired",
            "ddm_rule_id": request["ddm_rule_id"],
        },
    }
    assert (await stored(api, request_id))["status"] == "retired"


@pytest.mark.parametrize("name", ENDPOINTS)
@pytest.mark.parametrize(
    "body",
    [
        {},
        {"request_id": 987654321},
        {"request_id": -1},
        {"dataset": "user.nobody.nothing"},
        {"dataset": "x" * 300},
    ],
)
async def test_unknown_request(world, name: str, body: dict) -> None:
    api, _runner, _clock = world
    assert await call(api, name, body) == NOT_FOUND


async def test_request_id_wins_over_dataset(world) -> None:
    api, runner, _clock = world
    _task_id, request_id = await queued_request(api, runner)
    assert await call(api, "force_to_staging", {"request_id": 987654321, "dataset": DATASET}) == NOT_FOUND
    body = await call(api, "force_to_staging", {"request_id": request_id, "dataset": "user.nobody.nothing"})
    assert body["success"] is True


@pytest.mark.parametrize("name", ENDPOINTS)
async def test_needs_the_production_role(world, name: str) -> None:
    api, runner, _clock = world
    _task_id, request_id = await queued_request(api, runner)
    assert await call(api, name, {"request_id": request_id}, role=None) == {
        "success": False,
        "message": "production or pilot role required",
        "data": None,
    }
    assert (await stored(api, request_id))["status"] == "queued"


@pytest.mark.parametrize("name", ENDPOINTS)
async def test_bad_parameters(world, name: str) -> None:
    api, _runner, _clock = world
    typed = await call(api, name, {"request_id": "twelve"})
    assert typed["success"] is False
    assert typed["message"].startswith("Type error: 'request_id'")
    assert await call(api, name, {"request_id": 2**63}) == {
        "success": False,
        "message": "Value error: 'request_id' must be a 64-bit integer.",
        "data": None,
    }
    assert await call(api, name, {"request": 1}) == {
        "success": False,
        "message": "Argument error: got an unexpected keyword argument 'request'",
        "data": None,
    }
    async with api.client(headers=api.token_headers("Carousel Operator", role="production")) as client:
        response = await client.get(f"/api/v1/data_carousel/{name}", params={"request_id": 1})
    assert response.json() == {"success": False, "message": "expecting POST, received GET", "data": None}


async def test_change_staging_source_flags_must_be_booleans(world) -> None:
    api, runner, _clock = world
    _task_id, request_id = await queued_request(api, runner)
    body = await call(api, "change_staging_source", {"request_id": request_id, "cancel_fts": "yes"})
    assert body["success"] is False
    assert body["message"].startswith("Type error: 'cancel_fts'")
