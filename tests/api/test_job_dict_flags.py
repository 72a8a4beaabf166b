"""The conditional keys of the acquire_jobs job dict (api-v1.md §2.3) that task parameters, dataset
flags and the queue ask for: each travels from the task's parameters (split rule) or its output
dataset (``an``) or the queue (``use_vp``) into the job (specialHandling, file rows) and out to the
pilot, on both databases; a task without them sends none of them."""

from __future__ import annotations

import sqlalchemy as sa

from bamboo.agents.runner import AgentContext, AgentRunner
from bamboo.db.schema import jobs, tasks
from bamboo.logic import queues
from bamboo.logic.catalog import CatalogFile
from tests.api.conftest import ApiServer
from tests.api.test_legacy_pilot import get_job_params, read_as_pilot, request2, robot
from tests.api.test_task_flow import acquire, submit
from tests.tasks import input_task

DATASET = "user.testuser.flags.in"
NAME = "user.testuser.flags"
INPUTS = ["flags.1.root", "flags.2.root"]
FLAG_KEYS = (
    "loopingCheck",
    "writeToFile",
    "allowNoOutput",
    "altStageOut",
    "putLogToOS",
    "noExecStrCnv",
    "inFilePosEvtNum",
    "usePrefetcher",
    "container_name",
    "isHPO",
    "useVP",
    "onSiteMerging",
    "debug",
)
ALL_FLAGS = {
    "noLoopingCheck": True,
    "writeInputToFile": True,
    "putLogToOS": True,
    "noExecStrCnv": True,
    "inFilePosEvtNum": True,
    "usePrefetcher": True,
    "hpoWorkflow": True,
    "onSiteMerging": True,
    "altStageOut": "force",
    "container_name": "docker://example/payload:1",
}


async def world(api: ApiServer, *, use_vp: bool) -> AgentRunner:
    spec = {"name": "TEST_PQ", "type": "unified", "corecount": 1}
    if use_vp:
        spec["use_vp"] = True
    async with api.state.db.transaction() as conn:
        await queues.put(conn, api.state.clock, spec)
        files = [CatalogFile(lfn=lfn, fsize=100, n_events=10) for lfn in INPUTS]
        await api.state.dm.register_files(conn, api.state.clock, DATASET, files)
    return AgentRunner(AgentContext(api.state.db, api.state.clock, api.state.dm))


def flagged_task() -> dict:
    params = {**input_task(DATASET, NAME, n_files_per_job=2), **ALL_FLAGS}
    first, output = params["jobParameters"]
    # ${IN/F} is what writeInputToFile is for: the pilot writes the list to the file it names.
    params["jobParameters"] = [{**first, "value": "--inputList=${IN/F}"}, {**output, "allowNoOutput": True}]
    return params


async def test_a_task_with_every_flag_sends_every_key(api_factory) -> None:
    api = api_factory()
    runner = await world(api, use_vp=True)
    task_id = await submit(api, flagged_task())
    await runner.drain()
    async with api.state.db.transaction(write=False) as conn:
        split_rule = (await conn.execute(sa.select(tasks.c.splitRule))).scalar_one()
        handling = (await conn.execute(sa.select(jobs.c.specialHandling))).scalar_one()
    tags = {"LC=1", "WF=1", "PO=1", "NC=1", "IF=1", "UT=1", "HO=1", "OM=1", "AT=3"}
    assert tags <= set(split_rule.split(","))
    assert handling == "lc,wf,po,nc,if,up,ho,om,ao:force,vp"
    (job,) = await acquire(api)
    assert job["taskID"] == task_id
    output, log = job["outFiles"].split(",")
    assert job["jobPars"].startswith(f"--inputList=tmpin_{DATASET} ")
    assert {key: job[key] for key in FLAG_KEYS if key in job} == {
        "loopingCheck": False,
        "writeToFile": f"tmpin_{DATASET}:{','.join(INPUTS)}",
        "allowNoOutput": output,
        "altStageOut": "force",
        "putLogToOS": "True",
        "noExecStrCnv": "True",
        "inFilePosEvtNum": "True",
        "usePrefetcher": "True",
        "container_name": "docker://example/payload:1",
        "isHPO": "True",
        "useVP": "True",
        "onSiteMerging": "True",
    }
    assert log.endswith(".log.tgz")


async def test_a_task_without_flags_sends_none_and_get_job_agrees(api_factory) -> None:
    api = api_factory()
    runner = await world(api, use_vp=False)
    await submit(api, input_task(DATASET, NAME, n_files_per_job=1))
    await runner.drain()
    (job,) = await acquire(api)
    assert [key for key in FLAG_KEYS if key in job] == []
    legacy = read_as_pilot(await request2(api, "getJob", get_job_params(), robot(api)))
    assert int(legacy["StatusCode"]) == 0 and legacy["PandaID"] != job["PandaID"]
    assert [key for key in FLAG_KEYS if key in legacy] == []


async def test_write_to_file_lists_every_input_dataset(api_factory) -> None:
    api = api_factory()
    runner = await world(api, use_vp=False)
    async with api.state.db.transaction() as conn:
        extra = [CatalogFile(lfn="minbias.1.root", fsize=100, n_events=10)]
        await api.state.dm.register_files(conn, api.state.clock, "mc:user.testuser.minbias/", extra)
    params = flagged_task()
    secondary = {
        "type": "template",
        "param_type": "input",
        "value": "--minbias=${MB/F}",
        "dataset": "mc:user.testuser.minbias/",
        "nFilesPerJob": 1,
    }
    params["jobParameters"] = [params["jobParameters"][0], secondary, *params["jobParameters"][1:]]
    await submit(api, params)
    await runner.drain()
    (job,) = await acquire(api)
    assert "--minbias=tmpin_user.testuser.minbias " in job["jobPars"]
    master_list = f"tmpin_{DATASET}:{','.join(INPUTS)}"
    assert job["writeToFile"] == f"{master_list}^tmpin_user.testuser.minbias:minbias.1.root"


async def test_get_job_sends_the_flags_too(api_factory) -> None:
    api = api_factory()
    runner = await world(api, use_vp=False)
    await submit(api, {**flagged_task(), "altStageOut": "off"})
    await runner.drain()
    job = read_as_pilot(await request2(api, "getJob", get_job_params(), robot(api)))
    assert job["loopingCheck"] is False and job["altStageOut"] == "off" and job["isHPO"] == "True"
    assert job["writeToFile"] == f"tmpin_{DATASET}:{','.join(INPUTS)}" and "useVP" not in job
