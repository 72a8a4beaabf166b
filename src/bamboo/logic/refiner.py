"""The refiner agent: submitted task parameters -> task record, datasets and file rows.

A task arrives ``registered``. Refining parses its parameters, checks its parent, creates its
datasets (input, pseudo input, outputs, log), looks its input up in the data catalog and inserts one
row per input file or event chunk; the task is then ``ready`` for the job generator
(domain.md §2.2, registered -> defined -> ready in one transaction). A task whose parent is still
running waits in ``pending`` and is looked at again every cycle. A task whose master input is on
tape waits in ``staging`` for the data carousel (logic/carousel.py), its input open.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import feeder as feeder_db
from bamboo.db import tasks as tasks_db
from bamboo.logic import build_jobs, carousel, job_rows, merge_jobs, secondary, task_status, transformations
from bamboo.logic.catalog import CatalogFile, DataManagement, scope_of
from bamboo.logic.clock import Clock
from bamboo.logic.errors import InvalidInput
from bamboo.logic.splitting import FileInfo, cut_events
from bamboo.logic.states import TASK_FINAL
from bamboo.logic.taskparams import SEQUENCE_STREAM, DatasetPlan, RefinedTask, refine

log = logging.getLogger(__name__)


class InputNotThereYet(InvalidInput):
    """The master input a parent task produces has no file yet: the child waits in pending."""


BATCH = 20
# A task is cut into at most this many input rows (files or event chunks): beyond it one refinement
# would take minutes and millions of rows; such work belongs in several tasks.
MAX_ROWS_PER_TASK = 100_000
PSEUDO_LFN = "pseudo_dataset"
_BAD_PARENT_END = frozenset({"failed", "broken", "aborted"})


async def refine_registered(
    conn: AsyncConnection, clock: Clock, dm: DataManagement, *, public_url: str | None = None
) -> int:
    """Refine a batch of registered tasks (and re-check those waiting for their parent).

    ``public_url`` is the base of the default transformations of analysis tasks that name none
    (logic/transformations.py); without it, each task's sourceURL.

    Returns:
        How many tasks changed status.
    """
    changed = 0
    for task in await tasks_db.claim(conn, ["registered"], BATCH, old_statuses=["registered"]):
        try:
            async with conn.begin_nested():
                refined = await _refine_one(conn, clock, dm, task, public_url)
        except Exception:
            # One task that trips a bug must not stop the others: it breaks, with a pointer to the log.
            log.exception("task %s: refining failed", task["jediTaskID"])
            await task_status.change(
                conn, clock, task, "tobroken", errorDialog="internal error while refining; see the server log"
            )
            refined = True
        if refined:
            changed += 1
    return changed


async def _refine_one(
    conn: AsyncConnection, clock: Clock, dm: DataManagement, task: dict[str, Any], public_url: str | None
) -> bool:
    task_id = task["jediTaskID"]
    params = orjson.loads(task["task_params"])
    try:
        refined = refine(params)
        filled = transformations.with_defaults(params, public_url)
    except InvalidInput as exc:
        await task_status.change(conn, clock, task, "tobroken", errorDialog=exc.message[:500])
        return True
    if filled is not None:
        # Stored, so the generator's build jobs and get_task_parameters see what the jobs run.
        params = filled
        task_params = orjson.dumps(filled).decode()
        await tasks_db.update(conn, task_id, transPath=filled["transPath"], task_params=task_params)
        task = {**task, "transPath": filled["transPath"], "task_params": task_params}
    parent_id = task["parent_tid"]
    # With noWaitParent the child runs on its parent's outputs as they appear: its input stays open.
    growing = False
    if parent_id is not None and parent_id != task_id:
        parent_status = await tasks_db.status_of(conn, parent_id)
        if parent_status in _BAD_PARENT_END:
            await task_status.change(
                conn, clock, task, "tobroken", errorDialog=f"parent task {parent_id} ended {parent_status}"
            )
            return True
        if parent_status is None:
            await task_status.change(
                conn, clock, task, "tobroken", errorDialog=f"parent task {parent_id} not found"
            )
            return True
        growing = parent_status not in TASK_FINAL
        if growing and not params.get("noWaitParent"):
            return await _wait(conn, clock, task, f"pending until parent task {parent_id} is done")
    try:
        # Its own savepoint: a refusal leaves no half-made datasets behind (a waiting task is
        # refined again on the next cycle).
        async with conn.begin_nested():
            staging = await _create_datasets(conn, clock, dm, task, params, refined, growing=growing)
    except InputNotThereYet as exc:
        return await _wait(conn, clock, task, exc.message)
    except InvalidInput as exc:
        await task_status.change(conn, clock, task, "tobroken", errorDialog=exc.message[:500])
        return True
    await task_status.change(
        conn,
        clock,
        task,
        "staging" if staging else "ready",
        # A staging task keeps where it came from (domain.md §9.3).
        oldStatus=task["status"] if staging else None,
        errorDialog=staging,
        job_params_template=refined.job_params_template,
        splitRule=_split_rule_text(refined),
        **_event_service_columns(refined),
    )
    return True


async def _wait(conn: AsyncConnection, clock: Clock, task: dict[str, Any], dialog: str) -> bool:
    """Park the task in pending (refined again every cycle); False when it already waits so."""
    if task["status"] == "pending" and task["errorDialog"] == dialog:
        return False
    await task_status.change(conn, clock, task, "pending", oldStatus="registered", errorDialog=dialog)
    return True


def _split_rule_text(refined: RefinedTask) -> str | None:
    tokens = {
        **refined.split.size_tags(),
        "UB": "1" if refined.build is not None else None,
        job_rows.USE_SECRETS_TAG: "1" if refined.use_secrets else None,
        **dict(refined.pilot_tags),
    }
    if refined.event_service is not None:
        tokens.update(refined.event_service.split_tags())
    return ",".join(f"{key}={value}" for key, value in tokens.items() if value is not None) or None


def _event_service_columns(refined: RefinedTask) -> dict[str, Any]:
    """The task's ``eventService`` (0 normal, 1 ES, 2 job cloning) and, when the parameters ask for
    jumbo jobs, ``useJumbo`` ``W`` (waiting, as ``task/enable_jumbo_jobs`` sets it)."""
    spec = refined.event_service
    if spec is None:
        return {}
    columns: dict[str, Any] = {"eventService": spec.task_event_service}
    if spec.n_jumbo_jobs:
        columns["useJumbo"] = "W"
    return columns


async def _create_datasets(
    conn: AsyncConnection,
    clock: Clock,
    dm: DataManagement,
    task: dict[str, Any],
    params: dict[str, Any],
    refined: RefinedTask,
    *,
    growing: bool,
) -> str | None:
    """Insert the task's datasets and the rows of its master input, all or nothing.

    A ``growing`` master input (its parent still produces it) is left open for the feeder, as is
    one being staged from tape (only its files on disk get rows now).

    Returns:
        Why the task must wait in ``staging``, or None when its input is on disk.

    Raises:
        InputNotThereYet: ``growing`` and the input has no usable file yet.
        InvalidInput: the input cannot be used.
    """
    now = clock.now()
    task_id = task["jediTaskID"]
    master_id: int | None = None
    master_rows: list[dict[str, Any]] = []
    staging: str | None = None
    secondary_rows: dict[int, list[dict[str, Any]]] = {}
    for plan in refined.datasets:
        is_input = plan.type in ("input", "pseudo_input")
        dataset_id = await tasks_db.insert_dataset(
            conn,
            {
                "jediTaskID": task_id,
                "datasetName": plan.name,
                "containerName": plan.container,
                "type": plan.type,
                "creationTime": now,
                "modificationTime": now,
                "vo": task["vo"],
                "masterID": None if plan.is_master or not is_input else master_id,
                "status": "defined",
                "streamName": plan.stream,
                "storageToken": plan.token,
                "destination": plan.destination,
                "attributes": secondary.attributes_text(plan, secondary=is_input and not plan.is_master),
                "filename_template": plan.filename_template,
                "serial_nr": plan.offset + 1,
                **tasks_db.EMPTY_DATASET_COUNTERS,
            },
        )
        if is_input and plan.is_master:
            master_id = dataset_id
            master_rows, staging = await _master_rows(
                conn, clock, dm, task, params, refined, plan, dataset_id, now, growing
            )
        elif plan.type == "input":
            secondary_rows[dataset_id] = await _secondary_rows(conn, dm, task, refined, plan, dataset_id, now)
        elif is_input and plan.stream != SEQUENCE_STREAM:
            # Sequence numbers come from the dataset's serial counter (logic/generator.py); other
            # secondary pseudo inputs have no rows, and their placeholders stay unresolved.
            log.warning("task %s: secondary pseudo input %s is not used by jobs", task_id, plan.name)
    if master_id is None:
        raise InvalidInput("the task has no master input")
    await build_jobs.create_lib_dataset(conn, task, now)
    merge_jobs.check_template(refined, task_id)
    await tasks_db.add_files(conn, master_rows)
    await tasks_db.add_files(conn, [row for rows in secondary_rows.values() for row in rows])
    n_events = sum(row["nEvents"] or 0 for row in master_rows)
    for dataset in await tasks_db.datasets(conn, task_id):
        values: dict[str, Any] = {"status": "ready", "modificationTime": now}
        if dataset["datasetID"] == master_id:
            values.update(
                status=feeder_db.OPEN if growing or staging else "ready",
                nFiles=len(master_rows),
                nFilesToBeUsed=len(master_rows),
                nEvents=n_events,
                nEventsToBeUsed=n_events,
            )
        elif dataset["datasetID"] in secondary_rows:
            rows = secondary_rows[dataset["datasetID"]]
            values.update(
                nFiles=len(rows), nFilesToBeUsed=len(rows), nEvents=sum(r["nEvents"] or 0 for r in rows)
            )
        await tasks_db.update_dataset(conn, dataset["datasetID"], **values)
    return staging


async def _master_rows(
    conn: AsyncConnection,
    clock: Clock,
    dm: DataManagement,
    task: dict[str, Any],
    params: dict[str, Any],
    refined: RefinedTask,
    plan: DatasetPlan,
    dataset_id: int,
    now: Any,
    growing: bool,
) -> tuple[list[dict[str, Any]], str | None]:
    """The rows of the master input and, when it is being staged, why the task waits."""
    staging = None
    if refined.no_input:
        files = [CatalogFile(lfn=PSEUDO_LFN, n_events=refined.n_events)]
        row_type = "pseudo_input"
    else:
        listing = await dm.list_files(conn, plan.name)
        files = select_files(listing or [], plan, refined.n_files)
        if not files and growing:
            raise InputNotThereYet(f"pending until input dataset {plan.name} has files")
        if listing is None:
            raise InvalidInput(f"input dataset {plan.name} is not known to the data catalog")
        if not files:
            raise InvalidInput(f"input dataset {plan.name} has no usable files")
        if len(files) > MAX_ROWS_PER_TASK:
            raise InvalidInput(
                f"input dataset {plan.name} has more than {MAX_ROWS_PER_TASK} files; use nFiles"
            )
        row_type = plan.type
        if listing is not None and not growing and carousel.eligible(params, refined):
            request = await carousel.request_for_task(conn, clock, dm, task, plan.name, listing)
            if request is not None and request["status"] in carousel.REQUEST_ACTIVE:
                staging = f"staging input {plan.name} from tape (request {request['request_id']})"
                files = [f for f in files if f.on_disk]
    rows = master_file_rows(task, refined, plan, dataset_id, files, row_type, now, refined.first_event)
    return rows, staging


def master_file_rows(
    task: dict[str, Any],
    refined: RefinedTask,
    plan: DatasetPlan,
    dataset_id: int,
    files: list[CatalogFile],
    row_type: str,
    now: Any,
    first_event: int,
) -> list[dict[str, Any]]:
    """The master input rows of ``files``: one per file, or one per event chunk (and file it
    touches) when the task splits by events, numbering events from ``first_event``.

    Raises:
        InvalidInput: the chunks would make more rows than a task may have.
    """
    base = {
        "jediTaskID": task["jediTaskID"],
        "datasetID": dataset_id,
        "creationDate": now,
        "type": row_type,
        "status": "ready",
        "attemptNr": 0,
        "maxAttempt": refined.max_attempt,
        "failedAttempt": 0,
        "maxFailure": refined.max_failure,
        "keepTrack": 1,
    }
    events_per_job = refined.split.n_events_per_job or (refined.n_events if refined.no_input else None)
    if events_per_job:
        infos = [FileInfo(lfn=f.lfn, size=f.fsize or 0, n_events=events_of(f, refined)) for f in files]
        total_events = sum(info.n_events or 0 for info in infos)
        # Each chunk is one row, plus one more wherever a chunk runs on into the next file.
        if -(-total_events // events_per_job) + len(infos) - 1 > MAX_ROWS_PER_TASK:
            raise InvalidInput(
                f"{total_events} events in chunks of {events_per_job} make more than {MAX_ROWS_PER_TASK} "
                "input rows; raise nEventsPerJob or split the task"
            )
        rows = []
        for segment in cut_events(infos, events_per_job, first_event=first_event):
            source = files[segment.file_index]
            rows.append(
                {
                    **base,
                    **file_columns(source, plan),
                    "nEvents": segment.n_events,
                    "startEvent": segment.start_event,
                    "endEvent": segment.end_event,
                    "firstEvent": segment.first_event,
                }
            )
        return rows
    return [{**base, **file_columns(f, plan), "nEvents": events_of(f, refined)} for f in files]


async def _secondary_rows(
    conn: AsyncConnection,
    dm: DataManagement,
    task: dict[str, Any],
    refined: RefinedTask,
    plan: DatasetPlan,
    dataset_id: int,
    now: Any,
) -> list[dict[str, Any]]:
    """One row per file of a secondary input; the task's nFiles caps only the master."""
    listing = await dm.list_files(conn, plan.name)
    if listing is None:
        raise InvalidInput(f"secondary input dataset {plan.name} is not known to the data catalog")
    files = select_files(listing, plan, None)
    if not files:
        raise InvalidInput(f"secondary input dataset {plan.name} has no usable files")
    if len(files) > MAX_ROWS_PER_TASK:
        raise InvalidInput(f"secondary input dataset {plan.name} has more than {MAX_ROWS_PER_TASK} files")
    use = secondary.SecondaryUse.from_attributes(secondary.attributes_text(plan, secondary=True))
    base = {
        "jediTaskID": task["jediTaskID"],
        "datasetID": dataset_id,
        "creationDate": now,
        "type": plan.type,
        "status": "ready",
        "attemptNr": 0,
        "failedAttempt": 0,
        **secondary.row_defaults(use, refined.max_attempt, refined.max_failure),
    }
    return [{**base, **file_columns(f, plan), "nEvents": f.n_events} for f in files]


def events_of(item: CatalogFile, refined: RefinedTask) -> int | None:
    return item.n_events if item.n_events is not None else refined.n_events_per_file


def file_columns(item: CatalogFile, plan: DatasetPlan) -> dict[str, Any]:
    return {
        "lfn": item.lfn,
        "GUID": item.guid,
        "fsize": item.fsize,
        "checksum": item.checksum,
        "scope": item.scope or (scope_of(plan.name) if plan.type != "pseudo_input" else None),
    }


def select_files(listing: list[CatalogFile], plan: DatasetPlan, n_files: int | None) -> list[CatalogFile]:
    """Apply the input item's ``files``, ``include``/``exclude`` regexes and ``offset``, then the
    task's ``nFiles`` cap, keeping catalog order."""
    selected = listing
    if plan.files:
        wanted = set(plan.files)
        selected = [f for f in selected if f.lfn in wanted]
    if plan.include:
        patterns = [_compile(p) for p in plan.include.split(",") if p]
        selected = [f for f in selected if any(p.search(f.lfn) for p in patterns)]
    if plan.exclude:
        patterns = [_compile(p) for p in plan.exclude.split(",") if p]
        selected = [f for f in selected if not any(p.search(f.lfn) for p in patterns)]
    selected = selected[plan.offset :]
    return selected[:n_files] if n_files else selected


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise InvalidInput(f"invalid include/exclude pattern {pattern!r}: {exc}") from exc
