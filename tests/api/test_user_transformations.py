"""The /trf/user/ route and the default transformations prun's tasks get (logic/transformations.py),
through the API and the real agents, on both databases."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bamboo import trf
from bamboo.agents.runner import AgentContext, AgentRunner
from bamboo.logic import queues
from bamboo.logic.catalog import CatalogFile
from tests.api.conftest import ApiServer
from tests.api.test_task_flow import acquire, envelope, run_job, submit, task_status
from tests.tasks import NO_INPUT_TASK, input_task

SOURCE_URL = "https://bamboo.example.org:25443"
DATASET = "user.testuser.trf.input.v1"


async def test_transformations_are_served_to_anyone_and_cacheable(api: ApiServer) -> None:
    scripts = trf.scripts()
    async with api.client(https=False) as client:
        run_gen = await client.get("/trf/user/runGen-00-00-02")
        build_gen = await client.get("/trf/user/buildGen-00-00-01")
        head = await client.head("/trf/user/runGen-00-00-02")
        again = await client.get(
            "/trf/user/runGen-00-00-02", headers={"If-None-Match": run_gen.headers["etag"]}
        )
        unknown = await client.get("/trf/user/runAthena-00-00-11")
        outside = await client.get("/trf/user/..%2Fcache%2Fx")
        posted = await client.post("/trf/user/runGen-00-00-02")
    assert (run_gen.status_code, run_gen.content) == (200, scripts[trf.RUN_GEN])
    assert (build_gen.status_code, build_gen.content) == (200, scripts[trf.BUILD_GEN])
    assert run_gen.content.startswith(b"#!/usr/bin/env python3\n")
    assert run_gen.headers["content-type"] == "text/x-python; charset=utf-8"
    assert run_gen.headers["cache-control"] == "public, max-age=3600"
    assert run_gen.headers["etag"] != build_gen.headers["etag"]
    assert (head.status_code, head.content, head.headers["content-length"]) == (
        200,
        b"",
        str(len(scripts[trf.RUN_GEN])),
    )
    assert (again.status_code, again.content) == (304, b"")
    assert (unknown.status_code, unknown.text) == (404, "ERROR : no such transformation")
    assert outside.status_code == 404
    assert posted.status_code == 405


@pytest.fixture
def world(api_factory: Callable[..., ApiServer]) -> Callable[..., Any]:
    async def make(**settings: Any) -> tuple[ApiServer, AgentRunner]:
        api = api_factory(**settings)
        async with api.state.db.transaction() as conn:
            await queues.put(conn, api.state.clock, {"name": "TEST_PQ", "type": "unified", "corecount": 1})
            await api.state.dm.register_files(
                conn, api.state.clock, DATASET, [CatalogFile(lfn=f"d.{i}.root", fsize=100) for i in range(2)]
            )
        return api, AgentRunner(
            AgentContext(api.state.db, api.state.clock, api.state.dm, settings=api.state.settings)
        )

    return make


def prun_task(name: str, **overrides: Any) -> dict[str, Any]:
    """An input task as prun sends it: no transPath, a sourceURL, a buildSpec without transPath."""
    params = {**input_task(DATASET, name, 1), "sourceURL": SOURCE_URL, **overrides}
    del params["transPath"]
    return params


BUILD_SPEC = {
    "prodSourceLabel": "panda",
    "archiveName": "sources.0a1b2c3d.tar.gz",
    "jobParameters": "-i ${IN} -o ${OUT} --sourceURL ${SURL} -r .",
}


async def task_parameters(api: ApiServer, task_id: int) -> dict[str, Any]:
    async with api.client(headers=api.token_headers("test user")) as client:
        reply = await client.get("/api/v1/task/get_task_parameters", params={"task_id": task_id})
    return envelope(reply)["data"]


async def test_prun_task_runs_the_served_run_and_build_transformations_of_its_source_server(world) -> None:
    api, runner = await world()
    task_id = await submit(api, prun_task("user.testuser.trf.v1", buildSpec=BUILD_SPEC))
    await runner.drain()
    (build,) = await acquire(api, n_jobs=10)
    assert build["transformation"] == f"{SOURCE_URL}/trf/user/buildGen-00-00-01"
    await run_job(api, build)
    await runner.drain()
    jobs = await acquire(api, n_jobs=10)
    assert [job["transformation"] for job in jobs] == [f"{SOURCE_URL}/trf/user/runGen-00-00-02"] * 2
    params = await task_parameters(api, task_id)
    assert params["transPath"] == f"{SOURCE_URL}/trf/user/runGen-00-00-02"
    assert params["buildSpec"] == {**BUILD_SPEC, "transPath": f"{SOURCE_URL}/trf/user/buildGen-00-00-01"}


async def test_public_url_setting_wins_and_given_transformations_stay(world) -> None:
    api, runner = await world(public_url="https://panda.example.org/bamboo/")
    await submit(api, prun_task("user.testuser.trf.v2"))
    await submit(api, {**NO_INPUT_TASK, "taskName": "user.testuser.trf.v3/", "transPath": "my-own-trf"})
    await runner.drain()
    jobs = await acquire(api, n_jobs=10)
    assert sorted({job["transformation"] for job in jobs}) == [
        "https://panda.example.org/bamboo/trf/user/runGen-00-00-02",
        "my-own-trf",
    ]


async def test_no_default_without_a_server_url_or_for_production_tasks(world) -> None:
    api, runner = await world()
    no_source = prun_task("user.testuser.trf.v4")
    del no_source["sourceURL"]
    user_task = await submit(api, no_source)
    file_url = await submit(api, prun_task("user.testuser.trf.v5", sourceURL="file:///tmp/cache"))
    async with api.client(headers=api.token_headers("Prod Manager", role="production")) as client:
        body = envelope(
            await client.post(
                "/api/v1/task/submit",
                json={
                    "task_parameters": {
                        **prun_task("mc.trf.v6", prodSourceLabel="managed", taskType="prod"),
                        "userName": "prod",
                    },
                    "parent_tid": None,
                },
            )
        )
    assert body["success"] is True, body
    await runner.drain()
    for task_id in (user_task, file_url, body["data"]):
        # Refined (so the defaults were considered), yet still naming no transformation.
        assert await task_status(api, task_id) == "running"
        assert "transPath" not in await task_parameters(api, task_id)


async def test_prun_sequence_numbers_count_from_the_offset(world) -> None:
    """prun's ``--exec "gen.py %RNDM:10"``: ``${SEQNUMBER}`` over the pseudo dataset seq_number."""
    api, runner = await world()
    params = {
        **NO_INPUT_TASK,
        "taskName": "user.testuser.trf.v7/",
        "nEvents": 3,
        "nEventsPerJob": 1,
        "jobParameters": [
            {"type": "constant", "value": '-p "', "padding": False},
            {"type": "constant", "value": "python3%20gen.py%20", "padding": False},
            {
                "type": "template",
                "value": "${SEQNUMBER}",
                "param_type": "pseudo_input",
                "dataset": "seq_number",
                "offset": 10,
                "padding": False,
            },
            {"type": "constant", "value": '"'},
        ],
    }
    task_id = await submit(api, params)
    await runner.drain()
    jobs = await acquire(api, n_jobs=10)
    assert sorted(job["jobPars"] for job in jobs) == [f'-p "python3%20gen.py%20{n}"' for n in (11, 12, 13)]
    await run_job(api, jobs[0], final="failed")
    await runner.drain()
    (retry,) = await acquire(api, n_jobs=10)
    assert retry["jobPars"] == '-p "python3%20gen.py%2014"'
    assert await task_status(api, task_id) == "running"
