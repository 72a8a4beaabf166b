"""file_server/upload_event_picking_request and the event-picking agent, on both databases."""

from __future__ import annotations

import orjson
import pytest
import sqlalchemy as sa

from bamboo.agents.runner import AgentContext, AgentRunner
from bamboo.db import catalog as catalog_db
from bamboo.db import event_picking as picking_db
from bamboo.db import tasks as tasks_db
from bamboo.db.schema import event_picking_requests, task_files
from bamboo.logic import queues
from bamboo.logic.catalog import CatalogFile
from tests.api.conftest import ApiServer
from tests.api.test_task_flow import acquire, envelope, run_job, task_status

URL = "/api/v1/file_server/upload_event_picking_request"
RUN_A = "data18_13TeV.00348885.physics_Main.merge.AOD.f937_m1972"
RUN_B = "data18_13TeV.00348886.physics_Main.merge.AOD.f937_m1972"
# Same run, another data type: selected out by data_type.
RUN_A_ESD = "data18_13TeV.00348885.physics_Main.merge.ESD.f937"
USER = "pick user"


@pytest.fixture
async def world(api: ApiServer) -> tuple[ApiServer, AgentRunner]:
    async with api.state.db.transaction() as conn:
        await queues.put(conn, api.state.clock, {"name": "TEST_PQ", "type": "unified", "corecount": 1})
        for dataset, count in ((RUN_A, 3), (RUN_B, 2), (RUN_A_ESD, 1)):
            files = [
                CatalogFile(
                    lfn=f"{dataset}._{i:04d}.pool.root",
                    guid=f"guid-{dataset.split('.')[1]}-{dataset.split('.')[4]}-{i}",
                    fsize=10,
                    n_events=100,
                )
                for i in range(1, count + 1)
            ]
            await api.state.dm.register_files(conn, api.state.clock, dataset, files)
    context = AgentContext(api.state.db, api.state.clock, api.state.dm, settings=api.state.settings)
    return api, AgentRunner(context)


async def pick(api: ApiServer, body: dict, user: str = USER) -> dict:
    async with api.client(headers=api.token_headers(user)) as client:
        return envelope(await client.post(URL, json=body))


async def last_request(api: ApiServer) -> dict:
    async with api.state.db.transaction(write=False) as conn:
        request_id = (
            await conn.execute(sa.select(sa.func.max(event_picking_requests.c.request_id)))
        ).scalar()
        return await picking_db.get_request(conn, request_id)


async def master_files(api: ApiServer, task_id: int) -> list[str]:
    async with api.state.db.transaction(write=False) as conn:
        master = next(d for d in await tasks_db.datasets(conn, task_id) if d["type"] == "input")
        query = (
            sa.select(task_files.c.lfn)
            .where(task_files.c.datasetID == master["datasetID"])
            .order_by(task_files.c.fileID)
        )
        return list((await conn.execute(query)).scalars())


async def test_picked_events_become_a_task_over_exactly_their_files(world) -> None:
    api, runner = world
    events = "\n".join(["348885 150", "348885 250", "348885 260", "348886 5", "not a pick", "1 2 3", ""])
    body = await pick(api, {"run_event_list": events, "data_type": "AOD", "parameters": "-o out.root"})
    assert body == {"success": True, "message": "", "data": None}
    request = await last_request(api)
    assert (request["status"], request["requester"], request["run_event_list"]) == (
        "queued",
        "Pick User",
        events,
    )
    assert (request["data_type"], request["parameters"], request["include_guids"]) == (
        "AOD",
        "-o out.root",
        False,
    )
    await runner.drain()
    request = await last_request(api)
    task_id = request["jediTaskID"]
    dataset = f"user.PickUser.eventpick.{request['request_id']}"
    assert (request["status"], request["message"]) == (
        "done",
        f"jediTaskID={task_id} over 3 files of {dataset}",
    )
    expected = [f"{RUN_A}._0002.pool.root", f"{RUN_A}._0003.pool.root", f"{RUN_B}._0001.pool.root"]
    async with api.state.db.transaction(write=False) as conn:
        assert [row["lfn"] for row in await catalog_db.files(conn, dataset)] == expected
        task = await tasks_db.get(conn, task_id)
    assert task["userName"] == "Pick User"
    assert await master_files(api, task_id) == expected
    jobs = await acquire(api, n_jobs=10)
    assert sorted(job["inFiles"] for job in jobs) == expected
    assert all(
        job["jobPars"].startswith("-o out.root ")
        and "--eventPickEvtList=348885:150,348885:250,348885:260,348886:5" in job["jobPars"]
        for job in jobs
    )
    for job in jobs:
        await run_job(api, job)
    await runner.drain()
    assert await task_status(api, task_id) == "done"


async def test_guids_name_the_files_and_the_names_of_the_request_are_used(world) -> None:
    api, runner = world
    guid = "guid-00348886-AOD-2"
    body = await pick(
        api,
        {
            "run_event_list": f"348886 7 {guid}\n348886 8 no-such-guid\n348886 9\n",
            "include_guids": True,
            "user_dataset_name": "user.pick.mine",
            "user_task_name": "user.pick.mytask/",
        },
    )
    assert body["success"] is True, body
    await runner.drain()
    request = await last_request(api)
    assert (
        request["message"]
        == f"jediTaskID={request['jediTaskID']} over 1 files of user.pick.mine; 1 picked events not found"
    )
    async with api.state.db.transaction(write=False) as conn:
        task = await tasks_db.get(conn, request["jediTaskID"])
    assert task["taskName"] == "user.pick.mytask/"
    assert await master_files(api, request["jediTaskID"]) == [f"{RUN_B}._0002.pool.root"]
    assert "--eventPickEvtList=348886:7" in orjson.loads(task["task_params"])["jobParameters"][1]["value"]


async def test_picks_that_match_nothing_fail_with_a_reason(world) -> None:
    api, runner = world
    assert (await pick(api, {"run_event_list": "348885 999\n1 1\n"}))["success"] is True
    await runner.drain()
    request = await last_request(api)
    assert (request["status"], request["jediTaskID"]) == ("failed", None)
    assert request["message"] == "none of the 2 picked events is in a file of the catalog"
    # Filters that exclude the run's datasets match nothing either.
    assert (await pick(api, {"run_event_list": "348885 1", "stream_name": "physics_Other"}))["success"]
    await runner.drain()
    assert (await last_request(api))["message"] == "none of the 1 picked events is in a file of the catalog"
    # The dataset the picked files would go to exists already.
    assert (await pick(api, {"run_event_list": "348885 1", "user_dataset_name": RUN_B}))["success"]
    await runner.drain()
    assert (await last_request(api))["message"] == f"dataset {RUN_B} already exists"
    # A task the submission would refuse: nothing is registered.
    body = {"run_event_list": "348885 1", "user_task_name": "t" * 300, "user_dataset_name": "user.pick.x"}
    assert (await pick(api, body))["success"]
    await runner.drain()
    request = await last_request(api)
    assert (request["status"], request["message"]) == (
        "failed",
        "task submission refused: task parameter 'taskName' must be at most 256 characters",
    )
    async with api.state.db.transaction(write=False) as conn:
        assert not await catalog_db.dataset_exists(conn, "user.pick.x")


async def test_bad_requests_get_the_contract_messages(world) -> None:
    api, _runner = world
    assert await pick(api, {"run_event_list": "hello\n"}) == {
        "success": False,
        "message": "ERROR: Cannot upload the Event Picking request: no 'run event' line in run_event_list",
        "data": None,
    }
    assert (await pick(api, {"run_event_list": "1 2", "include_guids": True}))["message"] == (
        "ERROR: Cannot upload the Event Picking request: no 'run event guid' line in run_event_list"
    )
    assert (await pick(api, {"run_event_list": 5}))["message"] == (
        "Type error: 'run_event_list' must be of type str, got int."
    )
    headers = {**api.token_headers(USER), "Content-Type": "application/json", "Accept": "application/json"}

    async def chunks():
        yield b'{"run_event_list": "1 2"}'

    async with api.client(headers=headers) as client:
        body = envelope(await client.post(URL, content=chunks()))
    assert body == {
        "success": False,
        "message": "ERROR: Cannot get content-length from HTTP request.",
        "data": None,
    }
    huge = orjson.dumps({"run_event_list": "348885 1\n" * (1_200_000)})
    async with api.client(headers=headers) as client:
        body = envelope(await client.post(URL, content=huge))
    assert body == {
        "success": False,
        "message": f"ERROR: Run/event list is too large. Exceeded size limit {len(huge)}>10485760.",
        "data": None,
    }
    async with api.client(https=False) as client:
        body = envelope(await client.post(URL, json={"run_event_list": "1 2"}))
    assert body == {"success": False, "message": "SSL secure connection is required", "data": None}
    async with api.client(headers=api.token_headers(USER)) as client:
        body = envelope(await client.get(URL, params={"run_event_list": "1 2"}))
    assert body == {"success": False, "message": "expecting POST, received GET", "data": None}
    async with api.state.db.transaction(write=False) as conn:
        assert (
            await conn.execute(sa.select(sa.func.count()).select_from(event_picking_requests))
        ).scalar() == 0
