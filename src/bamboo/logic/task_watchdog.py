"""The task watchdog: the time-based rules of domain.md §2.4.

* a task ``pending`` for longer than :data:`PENDING_TIMEOUT` (its parent not running) is
  ``exhausted``: nobody is going to fix it by waiting;
* an ``exhausted`` task nobody touched for :data:`EXHAUSTED_AUTO_FINISH` is finished softly, unless
  its split rule says ``DF`` (disableAutoFinish); it then ends through the usual finish command;
* a running task that has reached its ``goal`` (below 100 %) is finished softly;
* a running production task whose remaining inputs failed on average
  ``THROTTLE_FAILED_ATTEMPTS * (numThrottled + 1)`` times is ``throttled`` (no new jobs) for
  ``THROTTLE_WAIT * n**2``, n being the new ``numThrottled``, and goes back when that time has passed
  or nothing is left to process.

Pending tasks need no periodic return to their old status here: the refiner and the generator look
at every pending task on each of their cycles and move it on as soon as its reason is gone.
Each step is one transaction; every change goes through :mod:`bamboo.logic.task_status`.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import commands as commands_db
from bamboo.db import notify
from bamboo.db import task_watchdog as watchdog_db
from bamboo.db.schema import tasks as tasks_table
from bamboo.logic import feeder, task_status
from bamboo.logic.clock import Clock
from bamboo.logic.states import completeness
from bamboo.logic.task_admin import parse_split_rule
from bamboo.logic.taskparams import PRODUCTION_SOURCE_LABELS

log = logging.getLogger(__name__)

PENDING_TIMEOUT = timedelta(days=7)
EXHAUSTED_AUTO_FINISH = timedelta(hours=48)
THROTTLE_FAILED_ATTEMPTS = 5
THROTTLE_WAIT = timedelta(minutes=120)
BATCH = 200
AUTO_FINISH_REQUESTER = "bamboo watchdog"
_DISABLE_AUTO_FINISH = "DF"


async def watch(conn: AsyncConnection, clock: Clock) -> int:
    """Apply every rule once. Returns how many tasks changed."""
    return (
        await _time_out_pending(conn, clock)
        + await _finish_exhausted(conn, clock)
        + await _release_throttled(conn, clock)
        + await _throttle(conn, clock)
        + await _finish_at_goal(conn, clock)
    )


async def _time_out_pending(conn: AsyncConnection, clock: Clock) -> int:
    now = clock.now()
    changed = 0
    for task in await watchdog_db.claim_stale(
        conn, "pending", tasks_table.c.frozenTime, now - PENDING_TIMEOUT, BATCH
    ):
        if await feeder.parent_active(conn, task):
            continue
        since = task["frozenTime"].strftime("%Y-%m-%d %H:%M:%S")
        await task_status.change(
            conn, clock, task, "exhausted", errorDialog=f"timeout while in pending since {since}"
        )
        changed += 1
    return changed


async def _finish_exhausted(conn: AsyncConnection, clock: Clock) -> int:
    now = clock.now()
    changed = 0
    for task in await watchdog_db.claim_stale(
        conn, "exhausted", tasks_table.c.modificationTime, now - EXHAUSTED_AUTO_FINISH, BATCH
    ):
        if _DISABLE_AUTO_FINISH in parse_split_rule(task["splitRule"]):
            continue
        if await _command_pending(conn, task):
            continue
        hours = int(EXHAUSTED_AUTO_FINISH.total_seconds() // 3600)
        await commands_db.replace(
            conn,
            task["jediTaskID"],
            "finish",
            f"soft finish: exhausted for more than {hours} h",
            AUTO_FINISH_REQUESTER,
            now,
        )
        # Until the commando moves the task on, its queued command keeps this rule from firing again.
        await notify.announce(conn, "commando")
        log.info("task %s: exhausted for %d h, finishing it", task["jediTaskID"], hours)
        changed += 1
    return changed


async def _finish_at_goal(conn: AsyncConnection, clock: Clock) -> int:
    changed = 0
    for task in await watchdog_db.claim_with_goal(conn, ["running"], BATCH):
        reached = completeness(
            n_files=task["nFiles"],
            n_files_finished=task["nFilesFinished"],
            n_events=task["nEvents"] or 0,
            n_events_used=task["nEventsUsed"] or 0,
        )
        if reached < task["goal"] or await _command_pending(conn, task):
            continue
        await commands_db.replace(
            conn,
            task["jediTaskID"],
            "finish",
            f"soft finish: goal of {task['goal'] / 10:g}% reached",
            AUTO_FINISH_REQUESTER,
            clock.now(),
        )
        await notify.announce(conn, "commando")
        log.info("task %s: goal reached (%d per mille), finishing it", task["jediTaskID"], reached)
        changed += 1
    return changed


async def _command_pending(conn: AsyncConnection, task: dict[str, Any]) -> bool:
    command = await commands_db.get(conn, task["jediTaskID"])
    return command is not None and command["status"] in (commands_db.QUEUED, commands_db.IN_PROGRESS)


async def _release_throttled(conn: AsyncConnection, clock: Clock) -> int:
    now = clock.now()
    changed = 0
    after = 0
    while True:
        batch = await watchdog_db.claim_in_status(conn, "throttled", None, after, BATCH)
        if not batch:
            return changed
        after = batch[-1]["jediTaskID"]
        remaining = await watchdog_db.remaining_attempts(conn, [task["jediTaskID"] for task in batch])
        for task in batch:
            expired = task["throttledTime"] is None or task["throttledTime"] <= now
            if expired or task["jediTaskID"] not in remaining:
                back = task["oldStatus"] or "running"
                await task_status.change(conn, clock, task, back, oldStatus=None, errorDialog=None)
                await notify.announce(conn, "generator")
                changed += 1


async def _throttle(conn: AsyncConnection, clock: Clock) -> int:
    now = clock.now()
    changed = 0
    after = 0
    while True:
        batch = await watchdog_db.claim_in_status(
            conn, "running", sorted(PRODUCTION_SOURCE_LABELS), after, BATCH
        )
        if not batch:
            return changed
        after = batch[-1]["jediTaskID"]
        remaining = await watchdog_db.remaining_attempts(conn, [task["jediTaskID"] for task in batch])
        for task in batch:
            if task["jediTaskID"] not in remaining:
                continue
            _, average = remaining[task["jediTaskID"]]
            times = task["numThrottled"] or 0
            if average < THROTTLE_FAILED_ATTEMPTS * (times + 1):
                continue
            times += 1
            until = now + THROTTLE_WAIT * times**2
            await task_status.change(
                conn,
                clock,
                task,
                "throttled",
                oldStatus="running",
                numThrottled=times,
                throttledTime=until,
                errorDialog=(
                    f"throttled until {until:%Y-%m-%d %H:%M:%S}: inputs failed {average:.1f} times on average"
                ),
            )
            changed += 1
