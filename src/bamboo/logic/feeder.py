"""The contents feeder: new files of an open master input become input rows (domain.md §2.2).

A master input is open (dataset status ``toupdate``) while it may still grow: the input of a
child task that runs on its parent's outputs as they are produced (``noWaitParent``), or an input
a ``reload_input`` asked to rescan. Each cycle adds the files the catalog lists beyond the rows
the dataset has, with the same selection and splitting as the refiner used, so the generator makes
jobs for them at once. The input closes (``ready``) once its parent has ended, or after the one
rescan a reload asked for; only then may the finisher end the task.

A master input staged from tape (logic/carousel.py) is open the same way: each cycle adds the files
that reached disk, and it closes once the staging request has ended, the files the tape system gave
up becoming failed rows.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import feeder as feeder_db
from bamboo.db import notify
from bamboo.db import tasks as tasks_db
from bamboo.logic import carousel
from bamboo.logic.catalog import CatalogFile, DataManagement
from bamboo.logic.clock import Clock
from bamboo.logic.errors import InvalidInput
from bamboo.logic.refiner import MAX_ROWS_PER_TASK, master_file_rows, select_files
from bamboo.logic.states import TASK_FINAL
from bamboo.logic.taskparams import DatasetPlan, RefinedTask, refine

log = logging.getLogger(__name__)

BATCH = 50
# Task statuses in which new inputs are still wanted; in any other (ending or ended) the input closes.
_FEEDING = frozenset(
    {"ready", "running", "scouting", "scouted", "pending", "throttled", "paused", "staging", "staged"}
)


async def feed(conn: AsyncConnection, clock: Clock, dm: DataManagement) -> int:
    """Scan a batch of open master inputs. Returns how many rows were added or inputs closed."""
    changed = 0
    for task, dataset in await feeder_db.claim_open_masters(conn, BATCH):
        changed += await _feed_one(conn, clock, dm, task, dataset)
    return changed


async def _feed_one(
    conn: AsyncConnection, clock: Clock, dm: DataManagement, task: dict[str, Any], dataset: dict[str, Any]
) -> int:
    now = clock.now()
    # Read before listing: a parent that ends after this read still gets one more scan.
    staging = await carousel.input_staging(conn, task["jediTaskID"], dataset["datasetName"])
    growing = await parent_active(conn, task) or (staging is not None and staging.active)
    closing = task["status"] not in _FEEDING or not growing
    refined = refine(orjson.loads(task["task_params"]))
    plan = next(p for p in refined.datasets if p.is_master and p.name == dataset["datasetName"])
    listing = await dm.list_files(conn, dataset["datasetName"]) or []
    known, next_event = await feeder_db.known_files(conn, dataset["datasetID"])
    wanted = task["status"] in _FEEDING
    selected = [f for f in select_files(listing, plan, refined.n_files) if wanted and f.lfn not in known]
    given_up = [f for f in selected if staging is not None and f.lfn in staging.given_up]
    # Files of a staged input are used once on disk; other inputs are read as listed.
    new_files = [f for f in selected if f not in given_up and (staging is None or f.on_disk)]
    added = 0
    if given_up:
        added += await _add_given_up(conn, clock, task, refined, plan, dataset, given_up, next_event)
        # The failed rows took event numbers: the new rows continue after them.
        _, next_event = await feeder_db.known_files(conn, dataset["datasetID"])
    if new_files:
        try:
            rows = master_file_rows(
                task,
                refined,
                plan,
                dataset["datasetID"],
                new_files,
                plan.type,
                now,
                next_event or refined.first_event,
            )
            if dataset["nFiles"] + len(rows) > MAX_ROWS_PER_TASK:
                raise InvalidInput(f"input dataset {plan.name} grew beyond {MAX_ROWS_PER_TASK} rows")
        except InvalidInput as exc:
            log.warning("task %s: new input files not added: %s", task["jediTaskID"], exc.message)
            rows = []
            closing = True
        if rows:
            await tasks_db.add_files(conn, rows)
            events = sum(row["nEvents"] or 0 for row in rows)
            await tasks_db.bump_dataset(
                conn,
                dataset["datasetID"],
                now,
                nFiles=len(rows),
                nFilesToBeUsed=len(rows),
                nEvents=events,
                nEventsToBeUsed=events,
            )
            await notify.announce(conn, "generator")
            log.info("task %s: %d new input rows from %s", task["jediTaskID"], len(rows), plan.name)
            added += len(rows)
    values: dict[str, Any] = {"modificationTime": now}
    if closing:
        values["status"] = "ready"
        await notify.announce(conn, "finisher")
        log.info("task %s: input %s closed", task["jediTaskID"], plan.name)
    await tasks_db.update_dataset(conn, dataset["datasetID"], **values)
    return added + (1 if closing else 0)


async def _add_given_up(
    conn: AsyncConnection,
    clock: Clock,
    task: dict[str, Any],
    refined: RefinedTask,
    plan: DatasetPlan,
    dataset: dict[str, Any],
    files: list[CatalogFile],
    next_event: int,
) -> int:
    """Rows for files the tape system gave up, already failed, so the task counts them as lost."""
    now = clock.now()
    rows = master_file_rows(
        task, refined, plan, dataset["datasetID"], files, plan.type, now, next_event or refined.first_event
    )
    for row in rows:
        row["status"] = "failed"
    await tasks_db.add_files(conn, rows)
    events = sum(row["nEvents"] or 0 for row in rows)
    await tasks_db.bump_dataset(
        conn,
        dataset["datasetID"],
        now,
        nFiles=len(rows),
        nFilesToBeUsed=len(rows),
        nFilesFailed=len(rows),
        nEvents=events,
        nEventsToBeUsed=events,
    )
    log.warning("task %s: %d input files given up by the tape system", task["jediTaskID"], len(rows))
    return len(rows)


async def parent_active(conn: AsyncConnection, task: dict[str, Any]) -> bool:
    """Whether the task has a parent that has not ended yet."""
    parent_id = task["parent_tid"]
    if parent_id is None or parent_id == task["jediTaskID"]:
        return False
    status = await tasks_db.status_of(conn, parent_id)
    return status is not None and status not in TASK_FINAL
