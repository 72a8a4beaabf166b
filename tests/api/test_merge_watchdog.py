"""The job watchdog's merge rule (domain.md §10.3): a merge job whose pre-merge jobs are all gone is
killed with code 52 once it is 30 minutes old, and its unmerged files are not merged again."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from bamboo.db.schema import task_files
from bamboo.logic.job_watchdog import ORPHAN_MERGE_DIAG
from tests.api.test_job_watchdog import job_row, watch
from tests.api.test_merge_jobs import start, statuses
from tests.api.test_task_flow import acquire, envelope, run_job
from tests.api.test_task_shapes import world

__all__ = ["world"]


async def kill(api, panda_ids: list[int]) -> None:
    """The task's owner kills jobs (job/kill)."""
    async with api.client(headers=api.token_headers("test user")) as client:
        body = envelope(await client.post("/api/v1/job/kill", json={"job_ids": panda_ids}))
    assert body["success"] is True, body


async def merge_ready(api, runner, name: str) -> tuple[list[dict], int]:
    """Two run jobs finished and waiting in merging for one merge job (not yet dispatched)."""
    _, runs = await start(api, runner, name, 2)
    for job in runs:
        await run_job(api, job)
    await runner.drain()
    assert await statuses(api, runs) == ["merging", "merging"]
    async with api.state.db.transaction(write=False) as conn:
        merge_ids = (
            await conn.execute(
                sa.select(task_files.c.PandaID).where(
                    task_files.c.type == "trn_output", task_files.c.status == "running"
                )
            )
        ).scalars()
        (merge_id,) = set(merge_ids)
    assert (await job_row(api, merge_id))["processingType"] == "pmerge"
    return runs, merge_id


async def unmerged_rows(api, merge_id: int) -> list[dict]:
    async with api.state.db.transaction(write=False) as conn:
        result = await conn.execute(
            sa.select(task_files).where(
                task_files.c.PandaID == merge_id, task_files.c.type.in_(["trn_output", "trn_log"])
            )
        )
        return [dict(row) for row in result.mappings()]


async def test_a_merge_job_whose_pre_merge_jobs_are_gone_is_killed_after_30_minutes(world) -> None:
    api, runner = world
    runs, merge_id = await merge_ready(api, runner, "user.testuser.orphan.v1")
    await kill(api, [job["PandaID"] for job in runs])
    assert await statuses(api, runs) == ["cancelled", "cancelled"]
    assert await watch(api, timedelta(minutes=29)) == 0
    assert (await job_row(api, merge_id))["jobStatus"] == "activated"
    assert await watch(api, timedelta(minutes=31)) == 1
    merge = await job_row(api, merge_id)
    assert (merge["jobStatus"], merge["taskBufferErrorCode"], merge["taskBufferErrorDiag"]) == (
        "cancelled",
        100,
        ORPHAN_MERGE_DIAG,
    )
    assert merge["commandToPilot"] == "tobekilled"
    rows = await unmerged_rows(api, merge_id)
    assert len(rows) == 4 and {row["status"] for row in rows} == {"notmerged"}
    # The files are not merged again: no new merge job comes.
    await runner.drain()
    assert await acquire(api, n_jobs=10) == []
    assert await watch(api, timedelta(minutes=31)) == 0


async def test_a_merge_job_with_a_pre_merge_job_still_waiting_is_left_alone(world) -> None:
    api, runner = world
    runs, merge_id = await merge_ready(api, runner, "user.testuser.halforphan.v1")
    await kill(api, [runs[0]["PandaID"]])
    assert await statuses(api, runs) == ["cancelled", "merging"]
    assert await watch(api, timedelta(minutes=31)) == 0
    assert (await job_row(api, merge_id))["jobStatus"] == "activated"
    (merge,) = await acquire(api)
    assert merge["PandaID"] == merge_id
    await run_job(api, merge)
    await runner.drain()
    assert await statuses(api, runs) == ["cancelled", "finished"]
