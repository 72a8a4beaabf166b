"""Killing jobs with PanDA's kill codes (api-v1.md §3.6).

A killed job ends at once in ``cancelled`` or ``closed`` with the code's taskBufferErrorCode and
diagnostic, and ``commandToPilot = tobekilled``, so a pilot still running it is told to stop at its
next heartbeat. (Upstream leaves non-forced running jobs running until the pilot reacts; ending
them at once means no job outlives a killed task and nothing waits on a pilot that is gone.)
The input rows a killed job held go back to ``ready`` with their attempt unchanged, so the task
can process them again (for a merge job, the unmerged files it was merging); its planned outputs
are ``cancelled``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import commands as commands_db
from bamboo.db import tasks as tasks_db
from bamboo.logic import es_lifecycle
from bamboo.logic.clock import Clock
from bamboo.logic.states import COMMAND_KILL, JOB_FINAL

log = logging.getLogger(__name__)

# Jobs not yet handed to a pilot: a soft finish or a soft reassignment kills only these.
QUEUED_JOB_STATUSES = ("pending", "defined", "assigned", "waiting", "activated", "throttled")


@dataclass(frozen=True, slots=True)
class KillCode:
    status: str
    error_code: int
    diag: str


def kill_code(code: int | None, requester: str) -> KillCode:
    """The job status, taskBufferErrorCode and diagnostic of a kill code (§3.6)."""
    if code in (None, 9, 91, 99):
        return KillCode("cancelled", 100, f"killed by {requester}")
    if code in (2, 4):
        return KillCode("closed", 102, "expired")
    if code == 3:
        return KillCode("cancelled", 103, "aborted by ExtIF")
    if code == 7:
        return KillCode("failed", 106, f"retrying at another site. new {requester}")
    if code == 8:
        return KillCode("cancelled", 105, f"reassigned to another site by rebrokerage. new {requester}")
    if code == 10:
        return KillCode("closed", 130, "fast rebrokerage due to Nq/Nr overshoot")
    if code in (50, 52):
        return KillCode("cancelled", 100, requester)
    if code == 51:
        return KillCode("closed", 100, "reassigned by JEDI")
    if code == 55:
        return KillCode("closed", 100, "killed since task is (almost) done")
    if code == 60:
        return KillCode("closed", 100, "closed by the pilot")
    raise ValueError(f"unknown kill code {code}")


KILL_CODES = (None, 2, 3, 4, 7, 8, 9, 10, 50, 51, 52, 55, 60, 91, 99)


async def kill(
    conn: AsyncConnection,
    clock: Clock,
    jobs: Sequence[dict[str, Any]],
    code: int | None,
    requester: str,
    *,
    merge_when_finishing: bool = True,
) -> list[int]:
    """Kill the given jobs (rows with PandaID and jobStatus); returns the PandaIDs killed.

    Jobs already in a final status are left as they are. ``merge_when_finishing`` false (a hard
    finish, which kills merge jobs too): an event-service jobset of a finishing task left without
    consumers is not merged (logic/es_lifecycle.py).
    """
    killable = [job["PandaID"] for job in jobs if job["jobStatus"] not in JOB_FINAL]
    if not killable:
        return []
    effect = kill_code(code, requester)
    now = clock.now()
    await commands_db.kill_jobs(
        conn,
        killable,
        {
            "jobStatus": effect.status,
            "commandToPilot": COMMAND_KILL,
            "taskBufferErrorCode": effect.error_code,
            "taskBufferErrorDiag": effect.diag[:300],
            "modificationTime": now,
            "stateChangeTime": now,
            "endTime": now,
            "reported_status": None,
        },
    )
    released = await _release_rows(conn, killable)
    # Event-service jobs end their ranges and jobsets (logic/es_lifecycle.py); the dataset rows
    # are taken last, in datasetID order, with the jobsets' own changes.
    settler = await es_lifecycle.killed(conn, killable, now, merge_when_finishing=merge_when_finishing)
    if settler is not None:
        await es_lifecycle.settle_alone(conn, settler, released, now=now)
    else:
        for dataset_id in sorted(released.counters):
            await tasks_db.bump_dataset(conn, dataset_id, now, **dict(released.counters[dataset_id]))
    log.info("killed %d jobs (code %s) for %s", len(killable), code, requester)
    return killable


async def _release_rows(conn: AsyncConnection, panda_ids: list[int]) -> es_lifecycle.FileChanges:
    """Free what the killed jobs held; returns the dataset counters to change."""
    held = await commands_db.rows_held_by(conn, panda_ids)
    # A planned output belongs to no job but its producer; an unmerged file a merge job holds is
    # that merge job's input (logic/merge_jobs.py), whoever produced it.
    inputs = [row for row in held if row["PandaID"] in panda_ids]
    outputs = [row["fileID"] for row in held if row["outPandaID"] in panda_ids and row["PandaID"] is None]
    await tasks_db.update_files(
        conn, [row["fileID"] for row in inputs], status="ready", proc_status="cancelled"
    )
    await tasks_db.update_files(conn, outputs, status="cancelled")
    released = es_lifecycle.FileChanges()
    for dataset_id, count in Counter(row["datasetID"] for row in inputs).items():
        released.count(dataset_id, nFilesUsed=-count)
    return released
