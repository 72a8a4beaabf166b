"""Exact jobs for each task shape, through the API and the real agents, on both databases.

Every test submits one shape of task, lets the refiner and the generator run, acquires the jobs as
a pilot does and checks their exact number, input files, event ranges, job parameters and output
names with their serial numbers (domain.md §1.4, §3.4, §4.2, §4.4, §4.5).
"""

from __future__ import annotations

from typing import Any

import pytest

from bamboo.agents.runner import AgentContext, AgentRunner
from bamboo.db import tasks as tasks_db
from bamboo.logic import queues
from bamboo.logic.catalog import CatalogFile
from bamboo.logic.splitting import GIB
from tests.api.conftest import ApiServer
from tests.api.test_task_flow import acquire, run_job, submit, task_status
from tests.tasks import NO_INPUT_TASK, input_task

DATASET = "user.testuser.shapes.input.v1"
SECONDARY = "user.testuser.shapes.minbias.v1"


@pytest.fixture
async def world(api: ApiServer) -> tuple[ApiServer, AgentRunner]:
    async with api.state.db.transaction() as conn:
        await queues.put(conn, api.state.clock, {"name": "TEST_PQ", "type": "unified", "corecount": 1})
    runner = AgentRunner(AgentContext(api.state.db, api.state.clock, api.state.dm))
    return api, runner


async def register(api: ApiServer, dataset: str, files: list[CatalogFile]) -> None:
    async with api.state.db.transaction() as conn:
        await api.state.dm.register_files(conn, api.state.clock, dataset, files)


def data_files(n: int, *, prefix: str = "data", n_events: int | None = None, size: int = 1000) -> list:
    return [CatalogFile(lfn=f"{prefix}.{i:02d}.root", fsize=size + i, n_events=n_events) for i in range(n)]


async def run_shape(
    api: ApiServer,
    runner: AgentRunner,
    params: dict[str, Any],
    *,
    site: str = "TEST_PQ",
    status: str = "running",
) -> tuple[int, list[dict]]:
    # Scouting (another part's business) would hold back and resize the first jobs.
    task_id = await submit(api, {"skipScout": True, **params})
    await runner.drain()
    assert await task_status(api, task_id) == status
    jobs = await acquire(api, n_jobs=100, site=site)
    assert await acquire(api, n_jobs=100, site=site) == []
    return task_id, jobs


async def finish_all(api: ApiServer, runner: AgentRunner, task_id: int, jobs: list[dict]) -> None:
    for job in jobs:
        await run_job(api, job)
    await runner.drain()
    assert await task_status(api, task_id) == "done"


async def datasets_of(api: ApiServer, task_id: int) -> dict[str, dict[str, Any]]:
    async with api.state.db.transaction() as conn:
        return {d["datasetName"]: d for d in await tasks_db.datasets(conn, task_id)}


def in_files(jobs: list[dict]) -> list[list[str]]:
    return [job["inFiles"].split(",") if job["inFiles"] else [] for job in jobs]


def out_files(jobs: list[dict]) -> list[list[str]]:
    return [job["outFiles"].split(",") for job in jobs]


def analysis(name: str, **overrides: Any) -> dict[str, Any]:
    """An analysis task over DATASET without a sizing rule unless ``overrides`` gives one."""
    params = input_task(DATASET, name)
    del params["nFilesPerJob"]
    return {**params, **overrides}


def names(name: str, task_id: int, serials: list[int]) -> list[list[str]]:
    """Output then log file of each job, as input_task names them."""
    return [
        [f"{name}.{task_id}._{serial:06d}.out.root", f"{name}.log.{task_id}.{serial:06d}.log.tgz"]
        for serial in serials
    ]


def event_task(name: str, n_events_per_job: int, **overrides: Any) -> dict[str, Any]:
    params = analysis(name, nEventsPerJob=n_events_per_job, **overrides)
    params["jobParameters"] = [
        {"type": "template", "param_type": "input", "value": '-i "${IN/T}"', "dataset": DATASET},
        {"type": "template", "param_type": "number", "value": "--skipEvents=${SKIPEVENTS}"},
        {"type": "template", "param_type": "number", "value": "--maxEvents=${MAXEVENTS}"},
        {"type": "template", "param_type": "number", "value": "--firstEvent=${FIRSTEVENT}"},
        params["jobParameters"][1],
    ]
    return params


def with_secondary(params: dict[str, Any], **item: Any) -> dict[str, Any]:
    secondary = {
        "type": "template",
        "param_type": "input",
        "value": '--minbias "${IN2/T}"',
        "dataset": SECONDARY,
        **item,
    }
    items = params["jobParameters"]
    return {**params, "jobParameters": [items[0], secondary, *items[1:]]}


# --- no input -------------------------------------------------------------------------------


async def test_no_input_with_seeds_first_event_and_output_offset(world) -> None:
    api, runner = world
    params = {
        **NO_INPUT_TASK,
        "taskName": "user.testuser.gen.v1/",
        "nEvents": 10,
        "nEventsPerJob": 3,
        "jobParameters": [
            *NO_INPUT_TASK["jobParameters"],
            {
                "type": "template",
                "param_type": "number",
                "value": "--firstEvent=${FIRSTEVENT}",
                "offset": 100,
            },
            {"type": "template", "param_type": "number", "value": "--seed=${RNDMSEED}", "offset": 1000},
            {
                "type": "template",
                "param_type": "output",
                "dataset": "user.testuser.gen.v1_EVNT/",
                "offset": 10,
                "value": "--outputFile=user.testuser.gen.$JEDITASKID._${SN/P}.EVNT.root",
            },
        ],
    }
    task_id, jobs = await run_shape(api, runner, params)
    assert len(jobs) == 4
    assert [job["inFiles"] for job in jobs] == [""] * 4
    assert [job["jobPars"] for job in jobs] == [
        f'-p "echo hello" --maxEvents={n} --skipEvents={skip} --firstEvent={first} --seed={seed} '
        f"--outputFile=user.testuser.gen.{task_id}._{serial:06d}.EVNT.root"
        for n, skip, first, seed, serial in [
            (3, 0, 101, 1001, 11),
            (3, 3, 104, 1002, 12),
            (3, 6, 107, 1003, 13),
            (1, 9, 110, 1004, 14),
        ]
    ]
    assert out_files(jobs) == [
        [
            f"user.testuser.gen.{task_id}._{serial + 10:06d}.EVNT.root",
            f"user.testuser.e2e.0001.log.{task_id}.{serial:06d}.log.tgz",
        ]
        for serial in (1, 2, 3, 4)
    ]
    await finish_all(api, runner, task_id, jobs)


# --- split rules ----------------------------------------------------------------------------


async def test_n_files_per_job(world) -> None:
    api, runner = world
    await register(api, DATASET, data_files(7))
    task_id, jobs = await run_shape(api, runner, analysis("user.testuser.nf.v1", nFilesPerJob=3))
    assert in_files(jobs) == [
        ["data.00.root", "data.01.root", "data.02.root"],
        ["data.03.root", "data.04.root", "data.05.root"],
        ["data.06.root"],
    ]
    assert [job["fsize"] for job in jobs] == ["1000,1001,1002", "1003,1004,1005", "1006"]
    assert out_files(jobs) == names("user.testuser.nf.v1", task_id, [1, 2, 3])
    assert jobs[2]["jobPars"] == (
        f"-i \"['data.06.root']\" --outputFile=user.testuser.nf.v1.{task_id}._000003.out.root"
    )
    await finish_all(api, runner, task_id, jobs)


async def test_n_events_per_job_of_whole_files_becomes_files_per_job(world) -> None:
    api, runner = world
    await register(api, DATASET, data_files(5))
    params = analysis("user.testuser.nefile.v1", nEventsPerJob=250, nEventsPerFile=100)
    task_id, jobs = await run_shape(api, runner, params)
    # 250 // 100 = 2 whole files per job, no event ranges
    assert in_files(jobs) == [
        ["data.00.root", "data.01.root"],
        ["data.02.root", "data.03.root"],
        ["data.04.root"],
    ]
    assert out_files(jobs) == names("user.testuser.nefile.v1", task_id, [1, 2, 3])
    assert jobs[0]["jobPars"] == (
        f"-i \"['data.00.root', 'data.01.root']\" "
        f"--outputFile=user.testuser.nefile.v1.{task_id}._000001.out.root"
    )
    await finish_all(api, runner, task_id, jobs)


async def test_event_level_splitting_across_files(world) -> None:
    api, runner = world
    await register(api, DATASET, data_files(3, n_events=100))
    task_id, jobs = await run_shape(api, runner, event_task("user.testuser.evt.v1", 40))
    # 300 events in chunks of 40: the third chunk straddles the first two files
    expected = [
        (["data.00.root"], 0, 40, 1),
        (["data.00.root"], 40, 40, 41),
        (["data.00.root", "data.01.root"], 80, 40, 81),
        (["data.01.root"], 20, 40, 121),
        (["data.01.root"], 60, 40, 161),
        (["data.02.root"], 0, 40, 201),
        (["data.02.root"], 40, 40, 241),
        (["data.02.root"], 80, 20, 281),
    ]
    assert len(jobs) == 8
    assert in_files(jobs) == [files for files, *_ in expected]
    assert [job["jobPars"] for job in jobs] == [
        f'-i "{files!r}" --skipEvents={skip} --maxEvents={n} --firstEvent={first} '
        f"--outputFile=user.testuser.evt.v1.{task_id}._{serial:06d}.out.root"
        for serial, (files, skip, n, first) in enumerate(expected, start=1)
    ]
    assert out_files(jobs) == names("user.testuser.evt.v1", task_id, list(range(1, 9)))
    await finish_all(api, runner, task_id, jobs)
    master = (await datasets_of(api, task_id))[DATASET]
    # one row per file piece: a straddling chunk is two rows
    assert (master["nFiles"], master["nFilesFinished"], master["nEvents"], master["nEventsUsed"]) == (
        9,
        9,
        300,
        300,
    )


async def test_several_jobs_over_one_file_and_a_retried_range(world) -> None:
    api, runner = world
    await register(api, DATASET, data_files(1, n_events=100))
    task_id, jobs = await run_shape(api, runner, event_task("user.testuser.onefile.v1", 30))
    assert in_files(jobs) == [["data.00.root"]] * 4
    assert [job["jobPars"].split(" --outputFile")[0] for job in jobs] == [
        f"-i \"['data.00.root']\" --skipEvents={skip} --maxEvents={n} --firstEvent={skip + 1}"
        for skip, n in [(0, 30), (30, 30), (60, 30), (90, 10)]
    ]
    await run_job(api, jobs[0])
    await run_job(api, jobs[1], final="failed")
    await run_job(api, jobs[2])
    await run_job(api, jobs[3])
    await runner.drain()
    (retry,) = await acquire(api, n_jobs=10)
    # the same event range again, with a new serial number
    assert retry["attemptNr"] == 2
    assert retry["jobPars"] == (
        "-i \"['data.00.root']\" --skipEvents=30 --maxEvents=30 --firstEvent=31 "
        f"--outputFile=user.testuser.onefile.v1.{task_id}._000005.out.root"
    )
    await finish_all(api, runner, task_id, [retry])


async def test_n_gb_per_job(world) -> None:
    api, runner = world
    sizes = [int(0.6 * GIB), int(0.3 * GIB), int(0.3 * GIB), 2 * GIB, int(0.1 * GIB)]
    await register(
        api, DATASET, [CatalogFile(lfn=f"data.{i:02d}.root", fsize=size) for i, size in enumerate(sizes)]
    )
    task_id, jobs = await run_shape(api, runner, analysis("user.testuser.gb.v1", nGBPerJob=1))
    # a file over the limit still makes a job alone
    assert in_files(jobs) == [
        ["data.00.root", "data.01.root"],
        ["data.02.root"],
        ["data.03.root"],
        ["data.04.root"],
    ]
    assert out_files(jobs) == names("user.testuser.gb.v1", task_id, [1, 2, 3, 4])
    await finish_all(api, runner, task_id, jobs)


async def test_n_max_files_per_job_caps_size_based_jobs(world) -> None:
    api, runner = world
    await register(api, DATASET, data_files(5))
    task_id, jobs = await run_shape(api, runner, analysis("user.testuser.mf.v1", nMaxFilesPerJob=2))
    assert in_files(jobs) == [
        ["data.00.root", "data.01.root"],
        ["data.02.root", "data.03.root"],
        ["data.04.root"],
    ]
    assert out_files(jobs) == names("user.testuser.mf.v1", task_id, [1, 2, 3])
    await finish_all(api, runner, task_id, jobs)


async def test_no_sizing_rule_and_n_files_cap_make_one_job(world) -> None:
    api, runner = world
    await register(api, DATASET, data_files(10))
    task_id, jobs = await run_shape(api, runner, analysis("user.testuser.all.v1", nFiles=4))
    assert in_files(jobs) == [["data.00.root", "data.01.root", "data.02.root", "data.03.root"]]
    assert out_files(jobs) == names("user.testuser.all.v1", task_id, [1])
    await finish_all(api, runner, task_id, jobs)


async def test_walltime_sizing_against_the_queue_maxtime(world) -> None:
    api, runner = world
    async with api.state.db.transaction() as conn:
        await queues.put(
            conn, api.state.clock, {"name": "WALL_PQ", "type": "unified", "corecount": 1, "maxtime": 100}
        )
    await register(
        api,
        DATASET,
        [CatalogFile(lfn=f"data.{i:02d}.root", fsize=10, n_events=n) for i, n in enumerate([4, 4, 3, 12, 1])],
    )
    # 10 s per event against 100 s: at most 10 events per job, a longer file alone
    params = analysis("user.testuser.wall.v1", cpuTime=10, site="WALL_PQ")
    task_id, jobs = await run_shape(api, runner, params, site="WALL_PQ")
    assert in_files(jobs) == [
        ["data.00.root", "data.01.root"],
        ["data.02.root"],
        ["data.03.root"],
        ["data.04.root"],
    ]
    assert out_files(jobs) == names("user.testuser.wall.v1", task_id, [1, 2, 3, 4])


# --- secondary inputs -----------------------------------------------------------------------


async def test_secondary_with_files_per_job(world) -> None:
    api, runner = world
    await register(api, DATASET, data_files(3))
    await register(api, SECONDARY, data_files(7, prefix="mb", size=50))
    params = with_secondary(analysis("user.testuser.sec.v1", nFilesPerJob=1), nFilesPerJob=2)
    task_id, jobs = await run_shape(api, runner, params)
    assert in_files(jobs) == [
        ["data.00.root", "mb.00.root", "mb.01.root"],
        ["data.01.root", "mb.02.root", "mb.03.root"],
        ["data.02.root", "mb.04.root", "mb.05.root"],
    ]
    assert [job["realDatasetsIn"] for job in jobs] == [f"{DATASET},{SECONDARY},{SECONDARY}"] * 3
    assert jobs[1]["jobPars"] == (
        "-i \"['data.01.root']\" --minbias \"['mb.02.root', 'mb.03.root']\" "
        f"--outputFile=user.testuser.sec.v1.{task_id}._000002.out.root"
    )
    assert out_files(jobs) == names("user.testuser.sec.v1", task_id, [1, 2, 3])
    secondary = (await datasets_of(api, task_id))[SECONDARY]
    assert (secondary["nFiles"], secondary["nFilesToBeUsed"], secondary["nFilesUsed"]) == (7, 7, 6)
    await finish_all(api, runner, task_id, jobs)
    secondary = (await datasets_of(api, task_id))[SECONDARY]
    assert secondary["nFilesFinished"] == 6


async def test_secondary_ratio_to_master_files(world) -> None:
    api, runner = world
    await register(api, DATASET, data_files(4))
    await register(api, SECONDARY, data_files(8, prefix="mb"))
    params = with_secondary(analysis("user.testuser.ratio.v1", nFilesPerJob=2), ratio=1.5)
    task_id, jobs = await run_shape(api, runner, params)
    # 2 master files x 1.5 = 3 secondary files per job
    assert in_files(jobs) == [
        ["data.00.root", "data.01.root", "mb.00.root", "mb.01.root", "mb.02.root"],
        ["data.02.root", "data.03.root", "mb.03.root", "mb.04.root", "mb.05.root"],
    ]
    assert out_files(jobs) == names("user.testuser.ratio.v1", task_id, [1, 2])
    await finish_all(api, runner, task_id, jobs)


async def test_secondary_retried_with_its_master(world) -> None:
    api, runner = world
    await register(api, DATASET, data_files(2))
    await register(api, SECONDARY, data_files(4, prefix="mb"))
    params = with_secondary(analysis("user.testuser.secretry.v1", nFilesPerJob=1))
    task_id, jobs = await run_shape(api, runner, params)
    assert in_files(jobs) == [["data.00.root", "mb.00.root"], ["data.01.root", "mb.01.root"]]
    await run_job(api, jobs[0], final="failed")
    await run_job(api, jobs[1])
    await runner.drain()
    (retry,) = await acquire(api, n_jobs=10)
    # the failed job's secondary file is ready again and first in file order
    assert in_files([retry]) == [["data.00.root", "mb.00.root"]]
    assert out_files([retry]) == names("user.testuser.secretry.v1", task_id, [3])
    await finish_all(api, runner, task_id, [retry])
    secondary = (await datasets_of(api, task_id))[SECONDARY]
    assert (secondary["nFilesUsed"], secondary["nFilesFinished"]) == (2, 2)


async def test_secondary_repeated_in_every_job(world) -> None:
    api, runner = world
    await register(api, DATASET, data_files(3))
    await register(api, SECONDARY, data_files(2, prefix="dbr"))
    params = with_secondary(analysis("user.testuser.dbr.v1", nFilesPerJob=1), attributes="repeat,nosplit")
    task_id, jobs = await run_shape(api, runner, params)
    assert in_files(jobs) == [[f"data.0{i}.root", "dbr.00.root", "dbr.01.root"] for i in range(3)]
    await finish_all(api, runner, task_id, jobs)
    secondary = (await datasets_of(api, task_id))[SECONDARY]
    # shared files are not consumed
    assert (secondary["nFilesUsed"], secondary["nFilesFinished"]) == (0, 0)


async def test_reusable_secondary_starts_again(world) -> None:
    api, runner = world
    await register(api, DATASET, data_files(3))
    await register(api, SECONDARY, data_files(3, prefix="mb"))
    params = with_secondary(analysis("user.testuser.reuse.v1", nFilesPerJob=1), nFilesPerJob=2, reusable=True)
    task_id, jobs = await run_shape(api, runner, params)
    assert in_files(jobs) == [[f"data.0{i}.root", "mb.00.root", "mb.01.root"] for i in range(3)]
    await finish_all(api, runner, task_id, jobs)


# --- outputs and chaining -------------------------------------------------------------------


async def test_two_outputs_with_their_own_serial_numbers(world) -> None:
    api, runner = world
    await register(api, DATASET, data_files(4))
    name = "user.testuser.twoout.v1"
    params = analysis(name, nFilesPerJob=2)
    params["jobParameters"].append(
        {
            "type": "template",
            "param_type": "output",
            "dataset": f"{name}_hist/",
            "offset": 100,
            "value": f"--histFile={name}.$JEDITASKID._${{SN/P}}.hist.root",
        }
    )
    task_id, jobs = await run_shape(api, runner, params)
    assert out_files(jobs) == [
        [
            f"{name}.{task_id}._{serial:06d}.out.root",
            f"{name}.{task_id}._{serial + 100:06d}.hist.root",
            f"{name}.log.{task_id}.{serial:06d}.log.tgz",
        ]
        for serial in (1, 2)
    ]
    assert jobs[0]["jobPars"].endswith(
        f"--outputFile={name}.{task_id}._000001.out.root --histFile={name}.{task_id}._000101.hist.root"
    )
    await finish_all(api, runner, task_id, jobs)


async def test_chained_task_reads_its_parents_outputs(world) -> None:
    api, runner = world
    await register(api, DATASET, data_files(4))
    parent_id, parent_jobs = await run_shape(api, runner, analysis("user.testuser.parent.v1", nFilesPerJob=2))
    await finish_all(api, runner, parent_id, parent_jobs)
    child = input_task("user.testuser.parent.v1_out/", "user.testuser.child.v1", n_files_per_job=1)
    child_id, child_jobs = await run_shape(api, runner, {**child, "parent_tid": parent_id})
    assert in_files(child_jobs) == [
        [f"user.testuser.parent.v1.{parent_id}._{serial:06d}.out.root"] for serial in (1, 2)
    ]
    assert out_files(child_jobs) == names("user.testuser.child.v1", child_id, [1, 2])
    await finish_all(api, runner, child_id, child_jobs)


# --- build jobs -----------------------------------------------------------------------------

BUILD_SPEC = {
    "prodSourceLabel": "panda",
    "archiveName": "sources.0a1b2c3d.tar.gz",
    "jobParameters": "-i ${IN} -o ${OUT} --sourceURL ${SURL} -r .",
    "transPath": "buildGen-00-00-01",
}


def build_task(name: str) -> dict[str, Any]:
    params = analysis(name, nFilesPerJob=2, buildSpec=BUILD_SPEC, sourceURL="https://cache.example.org")
    params["jobParameters"] = [{"type": "constant", "value": "-l ${LIB}"}, *params["jobParameters"]]
    return params


async def test_build_job_runs_before_the_run_jobs_that_read_its_lib(world) -> None:
    api, runner = world
    await register(api, DATASET, data_files(3))
    name = "user.testuser.build.v1"
    task_id, (build,) = await run_shape(api, runner, build_task(name), status="ready")
    lib_ds = next(n for n in await datasets_of(api, task_id) if ".lib._" in n)
    async with api.client(headers=api.token_headers("test user")) as client:
        info = (await client.get("/api/v1/task/get_detailed_info", params={"task_id": task_id})).json()[
            "data"
        ]
    assert info["splitRule"] == "NF=2,MF=200,UB=1"
    assert lib_ds.startswith("panda.") and lib_ds.endswith(f".lib._{task_id:06d}")
    lib_lfn, log_lfn = build["outFiles"].split(",")
    assert lib_lfn.startswith(f"{lib_ds}.") and lib_lfn.endswith(".lib.tgz")
    assert log_lfn == lib_lfn.replace(".lib.tgz", ".log.tgz") and build["logFile"] == log_lfn
    assert build["prodSourceLabel"] == "panda" and build["transformation"] == "buildGen-00-00-01"
    assert build["inFiles"] == "" and build["destinationDblock"] == f"{lib_ds},{lib_ds}"
    assert (
        build["jobPars"]
        == f"-i sources.0a1b2c3d.tar.gz -o {lib_lfn} --sourceURL https://cache.example.org -r ."
    )
    # nothing else runs before the build finished
    await runner.drain()
    assert await acquire(api, n_jobs=10) == []
    await run_job(api, build)
    await runner.drain()
    jobs = await acquire(api, n_jobs=10)
    assert in_files(jobs) == [["data.00.root", "data.01.root", lib_lfn], ["data.02.root", lib_lfn]]
    assert [job["realDatasetsIn"].split(",")[-1] for job in jobs] == [lib_ds, lib_ds]
    assert [job["prodDBlockToken"].split(",")[-1] for job in jobs] == ["local", "local"]
    assert jobs[0]["jobPars"] == (
        f"-l {lib_lfn} -i \"['data.00.root', 'data.01.root']\" --outputFile={name}.{task_id}._000001.out.root"
    )
    assert out_files(jobs) == names(name, task_id, [1, 2])
    await finish_all(api, runner, task_id, jobs)


async def test_failed_build_is_retried_then_the_task_waits(world) -> None:
    api, runner = world
    await register(api, DATASET, data_files(1))
    task_id, (first,) = await run_shape(
        api, runner, {**build_task("user.testuser.badbuild.v1"), "maxAttempt": 2}, status="ready"
    )
    await run_job(api, first, final="failed")
    await runner.drain()
    (second,) = await acquire(api, n_jobs=10)
    assert second["attemptNr"] == 2 and second["outFiles"] != first["outFiles"]
    await run_job(api, second, final="failed")
    await runner.drain()
    assert await acquire(api, n_jobs=10) == []
    async with api.client(headers=api.token_headers("test user")) as client:
        info = (await client.get("/api/v1/task/get_detailed_info", params={"task_id": task_id})).json()[
            "data"
        ]
    assert info["status"] == "pending"
    assert info["errorDialog"].startswith("build job failed 2 times")


async def test_jobs_wait_while_a_secondary_has_run_out(world) -> None:
    api, runner = world
    await register(api, DATASET, data_files(3))
    await register(api, SECONDARY, data_files(2, prefix="mb"))
    params = with_secondary(analysis("user.testuser.short.v1", nFilesPerJob=1), nFilesPerJob=1)
    task_id, jobs = await run_shape(api, runner, params)
    # the third master file has no secondary file left: no job for it yet
    assert in_files(jobs) == [["data.00.root", "mb.00.root"], ["data.01.root", "mb.01.root"]]
    for job in jobs:
        await run_job(api, job)
    await runner.drain()
    async with api.client(headers=api.token_headers("test user")) as client:
        info = (await client.get("/api/v1/task/get_detailed_info", params={"task_id": task_id})).json()[
            "data"
        ]
    assert info["status"] == "pending"
    assert "unresolved placeholder ${IN2/T}" in info["errorDialog"]
    assert (await datasets_of(api, task_id))[DATASET]["nFilesFinished"] == 2
