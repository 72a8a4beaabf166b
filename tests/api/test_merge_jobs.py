"""Merge jobs (domain.md §4.8) through the API and the real agents, on both databases.

A task with ``mergeOutput`` writes unmerged ``panda.um.*`` files; each successful run job waits in
``merging`` until a merge job (``pmerge``, priority 5000) has merged its files at the same site, and
then takes over the merge job's result.
"""

from __future__ import annotations

from typing import Any

import pytest

from bamboo.db import jobs as jobs_db
from bamboo.db import tasks as tasks_db
from tests.api.conftest import ApiServer
from tests.api.test_task_flow import acquire, envelope, run_job, submit, task_status
from tests.api.test_task_shapes import DATASET, data_files, datasets_of, register, world
from tests.tasks import input_task

__all__ = ["world"]

MERGE_TEMPLATE = "-r . ${TRN_OUTPUT:OUTPUT} ${TRN_LOG:LOG}"


def merging_task(name: str, **overrides: Any) -> dict[str, Any]:
    return {
        **input_task(DATASET, name, n_files_per_job=1),
        "mergeOutput": True,
        "mergeSpec": {"transPath": "runMerge", "jobParameters": MERGE_TEMPLATE, "useLocalIO": 1},
        "nFilesPerMergeJob": 2,
        **overrides,
    }


def run_names(name: str, task_id: int, serial: int) -> list[str]:
    return [
        f"panda.um.{name}.{task_id}._{serial:06d}.out.root",
        f"panda.um.{name}.log.{task_id}.{serial:06d}.log.tgz",
    ]


def merged_names(name: str, task_id: int, serial: int) -> list[str]:
    return [f"{name}.{task_id}._{serial:06d}.out.root", f"{name}.log.{task_id}.{serial:06d}.log.tgz"]


async def job_rows(api: ApiServer, panda_ids: list[int]) -> list[dict[str, Any]]:
    async with api.state.db.transaction() as conn:
        found = await jobs_db.get_many(conn, panda_ids)
    return [found[panda_id] for panda_id in panda_ids]


async def statuses(api: ApiServer, jobs: list[dict]) -> list[str]:
    return [row["jobStatus"] for row in await job_rows(api, [job["PandaID"] for job in jobs])]


async def start(api: ApiServer, runner, name: str, n_files: int, **overrides: Any) -> tuple[int, list[dict]]:
    await register(api, DATASET, data_files(n_files))
    task_id = await submit(api, merging_task(name, **overrides))
    await runner.drain()
    assert await task_status(api, task_id) == "running"
    return task_id, await acquire(api, n_jobs=100)


async def test_run_jobs_write_unmerged_files_and_merge_jobs_merge_them_per_boundary(world) -> None:
    api, runner = world
    name = "user.testuser.merge.v1"
    task_id, runs = await start(api, runner, name, 5)
    datasets = await datasets_of(api, task_id)
    assert {n: (d["type"], d["streamName"]) for n, d in datasets.items() if "panda.um." in n} == {
        f"panda.um.{name}_out/": ("trn_output", "TRN_OUTPUT0"),
        f"panda.um.{name}.log/": ("trn_log", "TRN_LOG0"),
    }
    assert [job["outFiles"].split(",") for job in runs] == [run_names(name, task_id, n) for n in range(1, 6)]
    assert runs[0]["jobPars"] == f"-i \"['data.00.root']\" --outputFile={run_names(name, task_id, 1)[0]}"
    assert runs[0]["destinationDblock"] == f"panda.um.{name}_out/,panda.um.{name}.log/"
    assert [job["currentPriority"] for job in runs] != [5000] * 5

    # Two pre-merge jobs fill the first merge job; the third waits while more may come.
    for job in runs[:3]:
        await run_job(api, job)
    await runner.drain()
    assert await statuses(api, runs) == ["merging"] * 3 + ["sent"] * 2
    (first_merge,) = await acquire(api, n_jobs=100)
    assert first_merge["processingType"] == "pmerge" and first_merge["currentPriority"] == 5000
    assert first_merge["transformation"] == "runMerge" and first_merge["attemptNr"] == 1
    um1, um2 = run_names(name, task_id, 1), run_names(name, task_id, 2)
    out1 = merged_names(name, task_id, 1)
    assert first_merge["inFiles"].split(",") == [um1[0], um1[1], um2[0], um2[1]]
    assert first_merge["prodDBlockToken"].split(",") == ["local"] * 4
    assert first_merge["outFiles"].split(",") == out1
    assert first_merge["jobPars"] == f"-r . {um1[0]},{um2[0]}:{out1[0]} {um1[1]},{um2[1]}:{out1[1]}"

    # The last run jobs end the input: the partial group is merged as well.
    for job in runs[3:]:
        await run_job(api, job)
    await runner.drain()
    second_merge, third_merge = await acquire(api, n_jobs=100)
    assert second_merge["inFiles"].split(",") == run_names(name, task_id, 3) + run_names(name, task_id, 4)
    assert third_merge["inFiles"].split(",") == run_names(name, task_id, 5)
    assert third_merge["outFiles"].split(",") == merged_names(name, task_id, 3)

    await run_job(api, first_merge)
    await runner.drain()
    assert await statuses(api, runs) == ["finished"] * 2 + ["merging"] * 3
    assert await task_status(api, task_id) == "running"
    for job in (second_merge, third_merge):
        await run_job(api, job)
    await runner.drain()
    assert await statuses(api, runs) == ["finished"] * 5
    assert await task_status(api, task_id) == "done"
    datasets = await datasets_of(api, task_id)
    output, twin = datasets[f"{name}_out/"], datasets[f"panda.um.{name}_out/"]
    assert (output["status"], output["nFiles"], output["nFilesFinished"]) == ("done", 3, 3)
    assert (twin["status"], twin["nFiles"], twin["nFilesUsed"], twin["nFilesFinished"]) == ("done", 5, 5, 5)


async def test_a_merge_that_keeps_failing_fails_its_pre_merge_jobs(world) -> None:
    api, runner = world
    name = "user.testuser.badmerge.v1"
    task_id, runs = await start(api, runner, name, 3, nFilesPerMergeJob=1)
    for job in runs:
        await run_job(api, job)
    await runner.drain()
    merges = await acquire(api, n_jobs=100)
    assert len(merges) == 3
    await run_job(api, merges[0])
    for attempt in (1, 2, 3):
        # The first pre-merge job's files are merged again after each failure, three times in all.
        (merge,) = merges[1:2] if attempt == 1 else await acquire(api, n_jobs=100)
        assert merge["attemptNr"] == attempt
        assert merge["inFiles"].split(",") == run_names(name, task_id, 2)
        await run_job(api, merge, final="failed")
        await runner.drain()
    assert await acquire(api, n_jobs=100) == []
    await run_job(api, merges[2])
    await runner.drain()
    failed = (await job_rows(api, [runs[1]["PandaID"]]))[0]
    assert (failed["jobStatus"], failed["taskBufferErrorCode"], failed["jobSubStatus"]) == (
        "failed",
        113,
        "merge_failed",
    )
    assert failed["taskBufferErrorDiag"] == "merge job failed"
    assert await statuses(api, [runs[0], runs[2]]) == ["finished", "finished"]
    # The inputs were processed, but not all of the work was merged: the task is not done.
    assert await task_status(api, task_id) == "finished"
    async with api.state.db.transaction() as conn:
        twin = next(d for d in await tasks_db.datasets(conn, task_id) if d["type"] == "trn_output")
        counts = await tasks_db.file_status_counts(conn, [twin["datasetID"]])
    assert counts == {(twin["datasetID"], "finished"): 2, (twin["datasetID"], "notmerged"): 1}
    assert (twin["nFiles"], twin["nFilesFinished"], twin["nFilesFailed"]) == (3, 2, 1)


async def test_a_failed_run_job_leaves_nothing_to_merge(world) -> None:
    api, runner = world
    name = "user.testuser.failrun.v1"
    task_id, runs = await start(api, runner, name, 2, maxAttempt=1, nFilesPerMergeJob=2)
    await run_job(api, runs[0], final="failed")
    await run_job(api, runs[1])
    await runner.drain()
    (merge,) = await acquire(api, n_jobs=100)
    assert merge["inFiles"].split(",") == run_names(name, task_id, 2)
    await run_job(api, merge)
    await runner.drain()
    assert await statuses(api, runs) == ["failed", "finished"]
    assert await task_status(api, task_id) == "finished"


async def test_merged_log_and_unmerged_names_at_the_end(world) -> None:
    api, runner = world
    name = "user.testuser.mergelog.v1"
    base = merging_task(name, umNameAtEnd=True, nFilesPerMergeJob=2)
    merged_log = {**base["log"], "dataset": f"{name}.merge_log/", "value": f"{name}.merge_log.${{SN}}.tgz"}
    params = {
        **base,
        "log_merge": merged_log,
        "mergeSpec": {"jobParameters": "${TRN_OUTPUT:OUTPUT} ${TRN_LOG_MERGE:LOG_MERGE} --log=${LOG0}"},
    }
    await register(api, DATASET, data_files(2))
    task_id = await submit(api, params)
    await runner.drain()
    runs = await acquire(api, n_jobs=100)
    # Run jobs write no merged log: only merge jobs do.
    assert runs[0]["outFiles"].split(",") == [
        f"{name}.{task_id}._000001.out.root.panda.um",
        f"{name}.log.{task_id}.000001.log.tgz.panda.um",
    ]
    for job in runs:
        await run_job(api, job)
    await runner.drain()
    (merge,) = await acquire(api, n_jobs=100)
    unmerged_logs = ",".join(job["outFiles"].split(",")[1] for job in runs)
    unmerged_outputs = ",".join(job["outFiles"].split(",")[0] for job in runs)
    merged_out, own_log, merged = merge["outFiles"].split(",")
    assert merged == f"{name}.merge_log.000001.tgz" and own_log == f"{name}.log.{task_id}.000001.log.tgz"
    assert merge["transformation"] == "runAna"
    assert merge["jobPars"] == f"{unmerged_outputs}:{merged_out} {unmerged_logs}:{merged} --log={own_log}"
    await run_job(api, merge)
    await runner.drain()
    assert await task_status(api, task_id) == "done"


async def test_a_soft_finish_lets_the_merges_run(world) -> None:
    api, runner = world
    name = "user.testuser.softmerge.v1"
    task_id, runs = await start(api, runner, name, 3, nFilesPerMergeJob=3)
    await run_job(api, runs[0])
    await runner.drain()
    async with api.client(headers=api.token_headers("test user")) as client:
        body = envelope(await client.post("/api/v1/task/finish", json={"task_id": task_id, "soft": True}))
    assert body["success"] is True, body
    await run_job(api, runs[1])
    await runner.drain()
    # runs[2] was handed to a pilot already and runs on; once it ends, the group is merged.
    await run_job(api, runs[2], final="failed")
    await runner.drain()
    (merge,) = await acquire(api, n_jobs=100)
    assert merge["inFiles"].split(",") == run_names(name, task_id, 1) + run_names(name, task_id, 2)
    await run_job(api, merge)
    await runner.drain()
    assert await statuses(api, runs) == ["finished", "finished", "failed"]
    assert await task_status(api, task_id) == "finished"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mergeSpec": None}, "task parameter 'mergeSpec' must be an object when mergeOutput is set"),
        (
            {"mergeSpec": {"transPath": "x"}},
            "task parameter 'mergeSpec': 'jobParameters' must be a non-empty string",
        ),
        ({"nFilesPerMergeJob": 0}, "task parameter 'nFilesPerMergeJob' must be a positive integer, got 0"),
        (
            {"nGBPerMergeJob": "lots"},
            "task parameter 'nGBPerMergeJob' must be a positive number or \"MAX\", got 'lots'",
        ),
    ],
)
async def test_bad_merge_parameters_are_refused(world, overrides: dict, message: str) -> None:
    api, _ = world
    async with api.client(headers=api.token_headers("test user")) as client:
        body = envelope(
            await client.post(
                "/api/v1/task/submit",
                json={"task_parameters": merging_task("user.testuser.badparams.v1", **overrides)},
            )
        )
    assert body["success"] is False
    assert message in body["message"]


async def test_a_merge_template_naming_an_unknown_stream_breaks_the_task(world) -> None:
    api, runner = world
    await register(api, DATASET, data_files(1))
    params = merging_task("user.testuser.badtemplate.v1")
    params["mergeSpec"] = {"jobParameters": "${TRN_OUTPUT:OUTPUT} --extra=${EXTRA}"}
    task_id = await submit(api, params)
    await runner.drain()
    assert await task_status(api, task_id) == "broken"
    async with api.client(headers=api.token_headers("test user")) as client:
        info = envelope(await client.get("/api/v1/task/get_detailed_info", params={"task_id": task_id}))
    assert "EXTRA" in info["data"]["errorDialog"]
