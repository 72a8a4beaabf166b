"""The task finisher agent: tasks whose master input is fully processed -> final status.

It also judges the scouts of tasks in ``scouting`` (:mod:`bamboo.logic.scouting`), as upstream's
post-processor does.

The final status follows domain.md §2.5 (:func:`bamboo.logic.states.final_task_status`); the
task's datasets get their end statuses too. Tasks marked ``tobroken``/``toabort`` end as
``broken``/``aborted``.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import tasks as tasks_db
from bamboo.logic import scouting, task_status
from bamboo.logic.clock import Clock
from bamboo.logic.merge_jobs import TRANSIENT_TYPES
from bamboo.logic.states import (
    TASK_FINAL_OF,
    TASK_PASSED,
    TASK_PROCESSING,
    check_task_transition,
    completeness,
    final_task_status,
)

BATCH = 50


async def finish_tasks(conn: AsyncConnection, clock: Clock) -> int:
    """Judge scouts, then give final statuses to a batch of tasks. Returns how many changed."""
    changed = await scouting.evaluate(conn, clock)
    for task in await tasks_db.claim(conn, sorted(TASK_FINAL_OF), BATCH):
        await _end(conn, clock, task, TASK_FINAL_OF[task["status"]])
        changed += 1
    for task in await tasks_db.claim(conn, [TASK_PASSED], BATCH):
        await _end(conn, clock, task, await _final_status(conn, task))
        changed += 1
    for task in await tasks_db.claim_completed(conn, sorted(TASK_PROCESSING), BATCH):
        datasets = await tasks_db.datasets(conn, task["jediTaskID"])
        await _end(conn, clock, task, await _final_status(conn, task, datasets), datasets)
        changed += 1
    return changed


async def _final_status(
    conn: AsyncConnection, task: dict[str, Any], datasets: list[dict[str, Any]] | None = None
) -> str:
    if datasets is None:
        datasets = await tasks_db.datasets(conn, task["jediTaskID"])
    master = next(d for d in datasets if d["masterID"] is None and d["type"] in ("input", "pseudo_input"))
    parent_status = (
        await tasks_db.status_of(conn, task["parent_tid"])
        if task["parent_tid"] not in (None, task["jediTaskID"])
        else None
    )
    params = orjson.loads(task["task_params"])
    status = final_task_status(
        n_files=master["nFiles"],
        n_files_finished=master["nFilesFinished"],
        parent_status=parent_status,
        done_per_mille=completeness(
            n_files=master["nFiles"],
            n_files_finished=master["nFilesFinished"],
            n_events=master["nEvents"] or 0,
            n_events_used=master["nEventsUsed"] or 0,
        ),
        goal=task["goal"],
        fail_goal_unreached=bool(params.get("failWhenGoalUnreached")),
    )
    # Work whose merge finally failed is not done: the task is only partly so.
    not_merged = any(d["nFilesFailed"] for d in datasets if d["type"] in TRANSIENT_TYPES)
    return "finished" if status == "done" and not_merged else status


def _dataset_status(final: str, dataset: dict[str, Any]) -> str:
    if dataset["type"] in TRANSIENT_TYPES:
        # Unmerged twins are scratch space: they end done whatever became of the task.
        return "done"
    if final in ("failed", "broken", "aborted"):
        return "failed"
    if dataset["nFilesFinished"] < dataset["nFiles"]:
        return "finished"
    return "done"


async def _end(
    conn: AsyncConnection,
    clock: Clock,
    task: dict[str, Any],
    status: str,
    datasets: list[dict[str, Any]] | None = None,
) -> None:
    if task["status"] in TASK_PROCESSING:
        # The rule's intermediate step (all master inputs processed) is not kept as a row status.
        check_task_transition(task["status"], "prepared")
    now = clock.now()
    for dataset in datasets if datasets is not None else await tasks_db.datasets(conn, task["jediTaskID"]):
        await tasks_db.update_dataset(
            conn, dataset["datasetID"], status=_dataset_status(status, dataset), modificationTime=now
        )
    passing = {**task, "status": "prepared"} if task["status"] in TASK_PROCESSING else task
    await task_status.change(conn, clock, passing, status, endTime=now)
