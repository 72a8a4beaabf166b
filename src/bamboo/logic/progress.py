"""A task's progress for people: status, master-input counters and job counts by status."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import jobs as jobs_db
from bamboo.db import tasks as tasks_db
from bamboo.logic.states import TASK_FINAL


@dataclass(frozen=True)
class TaskProgress:
    task_id: int
    name: str
    status: str
    user_name: str
    error_dialog: str | None
    n_files: int
    n_files_finished: int
    n_files_failed: int
    jobs_by_status: dict[str, int] = field(default_factory=dict)

    @property
    def is_final(self) -> bool:
        return self.status in TASK_FINAL


async def progress(conn: AsyncConnection, task_id: int) -> TaskProgress | None:
    task = await tasks_db.get(conn, task_id)
    if task is None:
        return None
    masters = [
        d
        for d in await tasks_db.datasets(conn, task_id)
        if d["masterID"] is None and d["type"] in ("input", "pseudo_input")
    ]
    return TaskProgress(
        task_id=task_id,
        name=task["taskName"],
        status=task["status"],
        user_name=task["userName"],
        error_dialog=task["errorDialog"],
        n_files=sum(d["nFiles"] for d in masters),
        n_files_finished=sum(d["nFilesFinished"] for d in masters),
        n_files_failed=sum(d["nFilesFailed"] for d in masters),
        jobs_by_status=await jobs_db.status_counts_of_task(conn, task_id),
    )
