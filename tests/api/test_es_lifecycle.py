"""Event-service jobs after dispatch (domain.md §7.4, §7.5): consumers end by their ranges, each
jobset ends once in a merge job, a new consumer or a failure, and merge jobs end the jobset."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from bamboo.db import jobs as jobs_db
from bamboo.db import tasks as tasks_db
from bamboo.db.schema import job_files, jobs, task_files
from bamboo.logic import finaliser
from tests.api.test_task_flow import world
from tests.es_world import es_task, ranges_of, report_end, run_ranges

__all__ = ["world"]


async def jobs_of(api, jobset_id: int) -> list[dict[str, Any]]:
    async with api.state.db.transaction(write=False) as conn:
        query = sa.select(jobs).where(jobs.c.jobsetID == jobset_id).order_by(jobs.c.PandaID)
        return [dict(r) for r in (await conn.execute(query)).mappings()]


async def file_rows(api, file_ids: list[int]) -> list[dict[str, Any]]:
    async with api.state.db.transaction(write=False) as conn:
        query = sa.select(task_files).where(task_files.c.fileID.in_(file_ids)).order_by(task_files.c.fileID)
        return [dict(r) for r in (await conn.execute(query)).mappings()]


async def files_of(api, panda_id: int) -> list[dict[str, Any]]:
    async with api.state.db.transaction(write=False) as conn:
        return (await jobs_db.files_of(conn, [panda_id]))[panda_id]


def statuses(ranges: list[dict[str, Any]]) -> list[str]:
    return [r["status"] for r in ranges]


async def finalise(api) -> int:
    async with api.state.db.transaction() as conn:
        return await finaliser.finalise(conn, api.state.clock, api.state.dm)


async def test_all_ranges_done_make_one_merge_job_whose_end_finishes_the_task(world) -> None:
    api, runner = world
    es = await es_task(
        api,
        runner,
        "esmerge",
        n_consumers=2,
        esmerge={"transPath": "Merge_tf.py", "jobParameters": "--in ${IN} --out ${OUTPUT0} --log ${LOG0}"},
    )
    assert es.ranges == 4
    first, second = es.consumers
    await run_ranges(api, first, es.jobset_id, 2)
    await run_ranges(api, second, es.jobset_id, 2)
    async with api.state.db.transaction() as conn:
        await conn.execute(
            sa.insert(job_files),
            [
                {"PandaID": first, "lfn": "zip.1", "type": "zipoutput", "status": "ready", "GUID": "g1",
                 "jediTaskID": es.task_id, "dataset": "zips", "scope": "user.testuser", "attemptNr": 1},
            ],
        )  # fmt: skip
    # Both consumers end in the same batch: the jobset is decided once.
    await report_end(api, first)
    await report_end(api, second)
    assert await finalise(api) == 2
    members = await jobs_of(api, es.jobset_id)
    merges = [j for j in members if j["eventService"] == 2]
    assert len(merges) == 1
    (merge,) = merges
    assert [(j["jobStatus"], j["taskBufferErrorCode"]) for j in members if j["eventService"] == 1] == [
        ("finished", 112),
        ("finished", 112),
    ]
    assert merge["jobStatus"] == "activated"
    assert (merge["currentPriority"], merge["attemptNr"], merge["maxAttempt"]) == (5000, 1, 1)
    assert merge["transformation"] == "Merge_tf.py"
    assert merge["computingSite"] == "TEST_PQ"
    files = await files_of(api, merge["PandaID"])
    inputs = [f for f in files if f["type"] == "input"]
    assert [f["fileID"] for f in inputs if f["fileID"]] == es.file_ids
    assert "zip.1" in [f["lfn"] for f in inputs]
    outputs = {f["type"]: f["lfn"] for f in files if f["type"] in ("output", "log")}
    assert set(outputs) == {"output", "log"}
    # ${IN} names the jobset's input files (rendered as any template renders a file list).
    assert merge["jobParameters"] == f"--in esmerge.[00,01].root --out {outputs['output']} --log {outputs['log']}"
    assert statuses(await ranges_of(api, es.jobset_id)) == ["done"] * 4
    assert {r["PandaID"] for r in await file_rows(api, es.file_ids)} == {merge["PandaID"]}
    # Nothing left to decide: another finaliser run makes no second merge job.
    assert await finalise(api) == 0

    await report_end(api, merge["PandaID"])
    assert await finalise(api) == 1
    assert statuses(await ranges_of(api, es.jobset_id)) == ["merged"] * 4
    assert {r["status"] for r in await file_rows(api, es.file_ids)} == {"finished"}
    assert await runner.run_once("finisher") == 1
    async with api.state.db.transaction(write=False) as conn:
        task = await tasks_db.get(conn, es.task_id)
        datasets = {d["type"]: d for d in await tasks_db.datasets(conn, es.task_id)}
    assert task["status"] == "done"
    assert datasets["input"]["nFilesFinished"] == 2
    assert datasets["output"]["nFilesFinished"] == 1
