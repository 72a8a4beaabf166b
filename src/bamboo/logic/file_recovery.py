"""Lost-file recovery (file_server/upload_file_recovery_request): re-create lost output files.

A request is stored as it arrives (:func:`accept`); the recovery agent works through it in steps,
one transaction each (:func:`work`), recording its progress on the request row, so a step killed
half-way is simply done again and a file row is never recovered twice for one request.

1. **plan**: find the task (given, or the task writing ``dataset``) and the lost files: the named
   output/log files of the task (or every file of ``dataset``) that are ``finished``. With
   ``reproduce_parent`` / ``reproduce_upto_nth_gen`` the walk goes up ``parent_tid``: the input
   files the lost files were made from are lost too, in the parent that produced them, and so on
   for N generations. A dry run writes this plan to the log and stops.
2. **reopen** one generation, oldest first: its lost rows become ``lost`` (out of the output
   counters, out of the catalog), the master input rows the producing jobs read go back to
   ``ready`` (attempts given back if needed), inputs the previous generation re-produced are
   renamed to their replacements, and a finished task goes back to ``ready`` (as task/retry does),
   so the generator makes new jobs for exactly those inputs.
3. **wait** until that task has ended again; the new files of the new jobs are the replacements
   of the lost ones (new serial numbers: output names are never reused). Then the next generation.
4. **children** (unless ``no_child_retry``): child tasks whose inputs named a lost file they had
   not processed successfully get the replacement files instead and run again.

The agent writes what it did, line by line, to the JEDI log named in the answer
(``<cache dir>/jedilog/lost_file_recovery.<uuid>.log``).
"""

from __future__ import annotations

import io
import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import catalog as catalog_db
from bamboo.db import commands as commands_db
from bamboo.db import file_recovery as recovery_db
from bamboo.db import notify
from bamboo.db import tasks as tasks_db
from bamboo.logic import task_status
from bamboo.logic.catalog import scope_of
from bamboo.logic.clock import Clock
from bamboo.logic.errors import BambooError, InvalidInput
from bamboo.logic.files import JEDI_LOG_AREA, JEDI_LOG_LIMIT
from bamboo.storage import FileStore

log = logging.getLogger(__name__)

ACCEPTED_MESSAGE = "The request was accepted and will be processed in a few minutes"
MISSING_TARGET = "Either task_id or dataset must be provided"
NOT_OWNER = "not the task owner or no production role"
QUEUED = "queued"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
BATCH = 20
MAX_FILES = 10_000
MAX_NAME = 255
# How far up parent_tid a request may reach: a task chain longer than this is a loop or a mistake.
MAX_GENERATIONS = 10
# A finished task runs again; one still processing takes the reopened inputs as it goes.
_RERUN_FROM = frozenset({"done", "finished", "failed"})
_PROCESSING = frozenset({"ready", "running", "scouting", "pending", "throttled"})
_ENDED = frozenset({"done", "finished", "failed", "broken", "aborted"})


@dataclass(frozen=True, slots=True)
class RecoveryRequest:
    """The parameters of a request as the endpoint takes them (api-v1.md §2.6)."""

    task_id: int | None
    dataset: str | None
    files: list[str] | None
    dry_run: bool
    no_child_retry: bool
    resurrect_datasets: bool
    force: bool
    reproduce_parent: bool
    reproduce_upto_nth_gen: int


@dataclass
class StepResult:
    """What a step did: how many requests moved, and the log lines to append after the commit."""

    progress: int = 0
    log_lines: dict[str, list[str]] = field(default_factory=dict)

    def write(self, name: str, line: str) -> None:
        self.log_lines.setdefault(name, []).append(line)


# --- the JEDI log ---------------------------------------------------------------------------------
def log_file_name() -> str:
    return f"lost_file_recovery.{uuid.uuid4()}.log"


async def append_jedilog(store: FileStore, name: str, lines: list[str]) -> None:
    """Append lines to the JEDI log ``jedilog/<name>`` of the file cache (created empty when none).

    Raises:
        UnsafeName: ``name`` is not a plain file name (it is ours, a uuid, never the client's).
        TooLarge: the log would pass the JEDI log size limit.
    """
    text = "".join(f"{line}\n" for line in lines).encode()
    await store.append(f"{JEDI_LOG_AREA}/{name}", io.BytesIO(text), max_total_bytes=JEDI_LOG_LIMIT)


def log_url(base_url: str, name: str) -> str:
    """Where clients read the log: ``<base url>/cache/jedilog/<name>``, as JEDI log uploads answer."""
    return f"{base_url}/cache/{JEDI_LOG_AREA}/{name}"


# --- accepting a request --------------------------------------------------------------------------
async def accept(
    conn: AsyncConnection,
    clock: Clock,
    request: RecoveryRequest,
    *,
    log_name: str,
    requester: str,
    requester_dn: str,
    production: bool,
) -> int:
    """Store a request for the recovery agent, writing its log ``log_name``; returns its id.

    The owner rule of the endpoint covers ``task_id``; a request naming only ``dataset`` is
    checked here against the task writing it.

    Raises:
        InvalidInput: neither task nor dataset, or a parameter out of bounds.
        BambooError: the caller neither owns the dataset's task nor has the production role.
    """
    if not request.task_id and not request.dataset:
        raise InvalidInput(MISSING_TARGET)
    if request.dataset is not None and (len(request.dataset) > MAX_NAME or not request.dataset.strip()):
        raise InvalidInput(f"dataset must be 1-{MAX_NAME} characters")
    if request.files is not None:
        if len(request.files) > MAX_FILES:
            raise InvalidInput(f"at most {MAX_FILES} files per request")
        if any(not name or len(name) > MAX_NAME for name in request.files):
            raise InvalidInput(f"file names must be 1-{MAX_NAME} characters")
    if not 0 <= request.reproduce_upto_nth_gen <= MAX_GENERATIONS:
        raise InvalidInput(f"reproduce_upto_nth_gen must be between 0 and {MAX_GENERATIONS}")
    if not request.task_id and not production:
        task_id = await recovery_db.producing_task(conn, request.dataset or "")
        owner = await tasks_db.get(conn, task_id) if task_id is not None else None
        if owner is None or owner["userName"] != requester:
            raise BambooError(NOT_OWNER)
    now = clock.now()
    request_id = await recovery_db.insert_request(
        conn,
        {
            "requester": requester,
            "requester_dn": requester_dn,
            "production": production,
            "jediTaskID": request.task_id or None,
            "dataset": request.dataset,
            "files": request.files,
            "dry_run": bool(request.dry_run),
            "no_child_retry": request.no_child_retry,
            "resurrect_datasets": request.resurrect_datasets,
            "force": request.force,
            "reproduce_parent": request.reproduce_parent,
            "reproduce_upto_nth_gen": request.reproduce_upto_nth_gen,
            "status": QUEUED,
            "log_name": log_name,
            "created_at": now,
            "modified_at": now,
        },
    )
    await notify.announce(conn, "file_recovery")
    log.info(
        "file recovery request %s by %s: task %s dataset %s",
        request_id,
        requester,
        request.task_id,
        request.dataset,
    )
    return request_id


# --- the agent ------------------------------------------------------------------------------------
async def work(conn: AsyncConnection, clock: Clock) -> StepResult:
    """One step of each request in a batch (queued or running), in this one transaction."""
    result = StepResult()
    for request in await recovery_db.claim_requests(conn, [QUEUED, RUNNING], BATCH):
        try:
            if request["status"] == QUEUED:
                moved = await _plan(conn, clock, request, result)
            else:
                moved = await _advance(conn, clock, request, result)
        except _Refused as exc:
            await _end(conn, clock, request, FAILED, exc.reason, result)
            moved = True
        result.progress += int(moved)
    return result


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def _end(
    conn: AsyncConnection,
    clock: Clock,
    request: dict[str, Any],
    status: str,
    message: str,
    result: StepResult,
) -> None:
    await recovery_db.update_request(
        conn, request["request_id"], status=status, message=message[:1000], modified_at=clock.now()
    )
    result.write(request["log_name"], f"{clock.now().isoformat()} request {status}: {message}")


def _generations_wanted(request: dict[str, Any]) -> int:
    if request["reproduce_upto_nth_gen"]:
        return int(request["reproduce_upto_nth_gen"])
    return 1 if request["reproduce_parent"] else 0


async def _plan(conn: AsyncConnection, clock: Clock, request: dict[str, Any], result: StepResult) -> bool:
    name = request["log_name"]
    stamp = clock.now().isoformat()
    task_id = request["jediTaskID"] or await recovery_db.producing_task(conn, request["dataset"])
    if task_id is None:
        raise _Refused(f"dataset {request['dataset']} is not written by any task")
    task = await tasks_db.get(conn, task_id)
    if task is None:
        raise _Refused(f"jediTaskID={task_id} not found")
    result.write(
        name, f"{stamp} recovery of lost files of jediTaskID={task_id} requested by {request['requester']}"
    )
    rows = await recovery_db.output_rows(conn, task_id, lfns=request["files"], dataset=request["dataset"])
    if request["dataset"] is not None and not rows and request["files"] is None:
        raise _Refused(f"dataset {request['dataset']} has no file of jediTaskID={task_id}")
    for lfn in sorted(set(request["files"] or []) - {row["lfn"] for row in rows}):
        result.write(name, f"  {lfn}: not an output of jediTaskID={task_id}, skipped")
    lost = [row for row in rows if row["status"] == "finished"]
    for row in rows:
        if row["status"] != "finished":
            result.write(name, f"  {row['lfn']}: {row['status']}, not a finished output, skipped")
    if not lost and not request["force"]:
        raise _Refused("no lost file to recover (force re-runs the task anyway)")
    await _check_catalog(conn, request, lost, result)
    generations = [await _generation(conn, task, lost)]
    for _ in range(_generations_wanted(request)):
        parent = await _parent_generation(conn, generations[0])
        if parent is None:
            break
        generations.insert(0, parent)
    plan = {"generations": generations, "stage": 0, "phase": "reopen"}
    for generation in generations:
        _describe(generation, result, name, dry=request["dry_run"])
    if request["dry_run"]:
        children = [] if request["no_child_retry"] else await _children_to_retry(conn, generations[-1])
        for child_id, lfns in children:
            result.write(name, f"  would retry child jediTaskID={child_id} on {', '.join(lfns)}")
        total = sum(len(g["lost"]) for g in generations)
        await recovery_db.update_request(conn, request["request_id"], plan=plan)
        await _end(
            conn,
            clock,
            request,
            DONE,
            f"dry run: {total} lost files in {len(generations)} tasks, nothing changed",
            result,
        )
        return True
    await recovery_db.update_request(
        conn, request["request_id"], status=RUNNING, plan=plan, jediTaskID=task_id, modified_at=clock.now()
    )
    return True


async def _check_catalog(
    conn: AsyncConnection, request: dict[str, Any], lost: list[dict[str, Any]], result: StepResult
) -> None:
    """A dataset gone from the catalog is re-created only with ``resurrect_datasets``."""
    for dataset in sorted({row["datasetName"] for row in lost}):
        if await catalog_db.dataset_exists(conn, dataset):
            continue
        if not request["resurrect_datasets"]:
            raise _Refused(f"dataset {dataset} is not in the catalog (resurrect_datasets re-creates it)")
        result.write(request["log_name"], f"  dataset {dataset} will be re-created in the catalog")


async def _generation(
    conn: AsyncConnection, task: dict[str, Any], lost: list[dict[str, Any]]
) -> dict[str, Any]:
    """One task of the plan: its lost rows and the master input rows of the jobs that made them."""
    producers = sorted({row["outPandaID"] for row in lost if row["outPandaID"] is not None})
    inputs = await recovery_db.master_rows_of_jobs(conn, task["jediTaskID"], producers)
    lost_items = [
        {
            "fileID": row["fileID"],
            "lfn": row["lfn"],
            "datasetID": row["datasetID"],
            "dataset": row["datasetName"],
            "producer": row["outPandaID"],
        }
        for row in lost
    ]
    input_items = [
        {
            "fileID": row["fileID"],
            "lfn": row["lfn"],
            "dataset": row["datasetName"],
            "producer": row["PandaID"],
        }
        for row in inputs
        if row["status"] == "finished"
    ]
    return {
        "task": task["jediTaskID"],
        "parent": task["parent_tid"] if task["parent_tid"] != task["jediTaskID"] else None,
        "lost": lost_items,
        "inputs": input_items,
        "replacements": {},
    }


async def _parent_generation(conn: AsyncConnection, child: dict[str, Any]) -> dict[str, Any] | None:
    """The parent's share: the files the child's producing jobs read, if the parent wrote them."""
    if child["parent"] is None or not child["inputs"]:
        return None
    parent = await tasks_db.get(conn, child["parent"])
    if parent is None:
        return None
    rows = []
    for dataset in sorted({item["dataset"] for item in child["inputs"]}):
        names = [item["lfn"] for item in child["inputs"] if item["dataset"] == dataset]
        rows += await recovery_db.output_rows(conn, parent["jediTaskID"], lfns=names, dataset=dataset)
    lost = [row for row in rows if row["status"] == "finished"]
    return await _generation(conn, parent, lost) if lost else None


def _describe(generation: dict[str, Any], result: StepResult, name: str, *, dry: bool) -> None:
    verb = "would" if dry else "will"
    task_id = generation["task"]
    for item in generation["lost"]:
        result.write(name, f"  jediTaskID={task_id}: {item['lfn']} ({item['dataset']}) {verb} be re-produced")
    jobs = sorted({item["producer"] for item in generation["inputs"]})
    if jobs:
        names = ", ".join(item["lfn"] for item in generation["inputs"])
        result.write(
            name, f"  jediTaskID={task_id}: the inputs of jobs {jobs} {verb} be processed again: {names}"
        )
    elif not generation["lost"]:
        result.write(name, f"  jediTaskID={task_id}: nothing lost, the task {verb} be retried (force)")


async def _advance(conn: AsyncConnection, clock: Clock, request: dict[str, Any], result: StepResult) -> bool:
    plan = request["plan"]
    generations = plan["generations"]
    if plan["stage"] >= len(generations):
        await _retry_children(conn, clock, request, plan, result)
        return True
    generation = generations[plan["stage"]]
    if plan["phase"] == "reopen":
        previous = generations[plan["stage"] - 1] if plan["stage"] else None
        await _reopen(conn, clock, request, generation, previous, result)
        plan = {**plan, "phase": "wait"}
    else:
        task_status_now = await tasks_db.status_of(conn, generation["task"])
        if task_status_now not in _ENDED:
            return False
        await _collect_replacements(conn, generation, request["log_name"], result, clock)
        last = plan["stage"] + 1 >= len(generations)
        plan = {**plan, "stage": plan["stage"] + 1, "phase": "reopen"}
        if last and request["no_child_retry"]:
            await recovery_db.update_request(conn, request["request_id"], plan=plan)
            total = sum(len(g["lost"]) for g in generations)
            await _end(conn, clock, request, DONE, f"{total} lost files re-produced or retried", result)
            return True
    await recovery_db.update_request(conn, request["request_id"], plan=plan, modified_at=clock.now())
    return True


async def _reopen(
    conn: AsyncConnection,
    clock: Clock,
    request: dict[str, Any],
    generation: dict[str, Any],
    previous: dict[str, Any] | None,
    result: StepResult,
) -> None:
    name = request["log_name"]
    stamp = clock.now().isoformat()
    task = await commands_db.lock_task(conn, generation["task"])
    if task is None:
        raise _Refused(f"jediTaskID={generation['task']} not found")
    if task["status"] not in _RERUN_FROM | _PROCESSING:
        raise _Refused(
            f"jediTaskID={task['jediTaskID']} is {task['status']}: lost files are recovered only for "
            "tasks that are done, finished, failed or still processing"
        )
    now = clock.now()
    # Lost outputs: out of the task's counters and out of the catalog.
    lost_rows = await recovery_db.files_by_id(conn, [item["fileID"] for item in generation["lost"]])
    lost_rows = [row for row in lost_rows if row["status"] == "finished"]
    per_dataset: Counter[int] = Counter(row["datasetID"] for row in lost_rows)
    await tasks_db.update_files(conn, [row["fileID"] for row in lost_rows], status="lost")
    for dataset_id, count in per_dataset.items():
        await tasks_db.bump_dataset(
            conn, dataset_id, now, nFiles=-count, nFilesFinished=-count, nFilesMissing=count
        )
    by_dataset: dict[str, list[str]] = {}
    for item in generation["lost"]:
        by_dataset.setdefault(item["dataset"], []).append(item["lfn"])
    for dataset, lfns in by_dataset.items():
        if request["resurrect_datasets"] and not await catalog_db.dataset_exists(conn, dataset):
            await catalog_db.ensure_dataset(conn, dataset, scope_of(dataset), now)
            result.write(name, f"{stamp} dataset {dataset} re-created in the catalog")
        await recovery_db.forget_catalog_files(conn, dataset, lfns)
        result.write(name, f"{stamp} jediTaskID={task['jediTaskID']}: marked lost: {', '.join(lfns)}")
    # The inputs of the producing jobs: renamed to what the parent re-produced, then reopened.
    renames = previous["replacements"] if previous else {}
    inputs = await recovery_db.files_by_id(conn, [item["fileID"] for item in generation["inputs"]])
    inputs = [row for row in inputs if row["status"] == "finished"]
    if request["force"]:
        # force: the task is retried whatever was found lost, its failed inputs included.
        inputs += await commands_db.exhausted_master_rows(conn, task["jediTaskID"])
    reopened = await _reopen_inputs(conn, clock, task["jediTaskID"], inputs, renames, name, result)
    result.write(name, f"{stamp} jediTaskID={task['jediTaskID']}: {reopened} input files to process again")
    await _rerun(conn, clock, task)
    result.write(name, f"{stamp} jediTaskID={task['jediTaskID']}: {task['status']} -> processing again")


async def _reopen_inputs(
    conn: AsyncConnection,
    clock: Clock,
    task_id: int,
    rows: list[dict[str, Any]],
    renames: dict[str, list[str]],
    log_name: str,
    result: StepResult,
) -> int:
    """Give master rows back to the generator: finished ones and failed ones (out of attempts) go
    back to ``ready`` with one attempt more. A row reading a file the parent re-produced reads the
    replacement instead (several replacements: one row each; none: the row stays as it was)."""
    now = clock.now()
    datasets = {d["datasetID"]: d for d in await tasks_db.datasets(conn, task_id)}
    deltas: dict[int, Counter[str]] = {}
    reopened = 0
    taken: set[tuple[int, str]] = set()
    for row in rows:
        if row["status"] not in ("finished", "ready"):
            continue
        names = [row["lfn"]]
        if row["lfn"] in renames:
            names = [n for n in renames[row["lfn"]] if (row["datasetID"], n) not in taken]
            if not names:
                result.write(log_name, f"  {row['lfn']}: not re-produced by the parent task, left as it was")
                continue
        dataset_name = datasets[row["datasetID"]]["datasetName"]
        entries = (
            await recovery_db.catalog_entries(conn, dataset_name, names) if row["lfn"] in renames else {}
        )
        delta = deltas.setdefault(row["datasetID"], Counter())
        if row["status"] == "finished":
            delta.update(nFilesFinished=-1, nFilesUsed=-1, nEventsUsed=-(row["nEvents"] or 0))
        elif _out_of_attempts(row):
            delta.update(nFilesFailed=-1, nFilesUsed=-1)
        for index, lfn in enumerate(names):
            taken.add((row["datasetID"], lfn))
            values = _reopened_values(row)
            if lfn != row["lfn"]:
                entry = entries.get(lfn, {})
                values.update(
                    lfn=lfn, GUID=entry.get("guid"), fsize=entry.get("fsize"), checksum=entry.get("checksum")
                )
                result.write(log_name, f"  {row['lfn']} is read as its replacement {lfn}")
            if index == 0:
                await tasks_db.update_file(conn, row["fileID"], **values)
            else:
                copy = {k: v for k, v in row.items() if k not in ("fileID", "datasetName")}
                await tasks_db.insert_files(conn, [{**copy, **values}])
                delta.update(nFiles=1, nFilesToBeUsed=1, nEvents=row["nEvents"] or 0)
            reopened += 1
    for dataset_id, delta in deltas.items():
        await tasks_db.bump_dataset(conn, dataset_id, now, **{k: v for k, v in delta.items() if v})
        await tasks_db.update_dataset(conn, dataset_id, status="ready", modificationTime=now)
    return reopened


def _out_of_attempts(row: dict[str, Any]) -> bool:
    return (row["maxAttempt"] is not None and row["attemptNr"] >= row["maxAttempt"]) or (
        row["maxFailure"] is not None and row["failedAttempt"] >= row["maxFailure"]
    )


def _reopened_values(row: dict[str, Any]) -> dict[str, Any]:
    """``ready`` with room for one more attempt (and failure) if the row had none left."""
    values: dict[str, Any] = {"status": "ready", "proc_status": "ready"}
    if row["maxAttempt"] is not None and row["attemptNr"] >= row["maxAttempt"]:
        values["maxAttempt"] = row["attemptNr"] + 1
    if row["maxFailure"] is not None and row["failedAttempt"] >= row["maxFailure"]:
        values["maxFailure"] = row["failedAttempt"] + 1
    return values


async def _rerun(conn: AsyncConnection, clock: Clock, task: dict[str, Any]) -> None:
    """A finished task processes again (as task/retry makes it, domain.md §2.3); one still
    processing takes the reopened rows as it goes."""
    if task["status"] in _RERUN_FROM:
        await task_status.change(conn, clock, task, "toretry", oldStatus=task["status"])
        await task_status.change(
            conn,
            clock,
            {**task, "status": "toretry"},
            "ready",
            oldStatus=None,
            attemptNr=(task["attemptNr"] or 0) + 1,
            endTime=None,
            startTime=None,
            currentPriority=task["taskPriority"],
        )
    await notify.announce(conn, "generator")


async def _collect_replacements(
    conn: AsyncConnection, generation: dict[str, Any], log_name: str, result: StepResult, clock: Clock
) -> None:
    """Which new files replace each lost one: the outputs, in the same dataset, of the new jobs
    that processed the inputs the lost file was made from."""
    stamp = clock.now().isoformat()
    inputs = await recovery_db.files_by_id(conn, [item["fileID"] for item in generation["inputs"]])
    new_jobs_of: dict[int, set[int]] = {}
    for item in generation["inputs"]:
        row = next((r for r in inputs if r["fileID"] == item["fileID"]), None)
        if row is not None and row["status"] == "finished" and row["PandaID"] is not None:
            new_jobs_of.setdefault(item["producer"], set()).add(row["PandaID"])
    replacements: dict[str, list[str]] = {}
    for item in generation["lost"]:
        jobs = sorted(new_jobs_of.get(item["producer"], set()))
        made = await recovery_db.finished_outputs_of_jobs(conn, item["datasetID"], jobs)
        replacements[item["lfn"]] = [row["lfn"] for row in made]
        if made:
            names = ", ".join(replacements[item["lfn"]])
            result.write(
                log_name, f"{stamp} jediTaskID={generation['task']}: {item['lfn']} re-produced as {names}"
            )
        else:
            result.write(
                log_name, f"{stamp} jediTaskID={generation['task']}: {item['lfn']} was not re-produced"
            )
    generation["replacements"] = replacements


async def _children_to_retry(
    conn: AsyncConnection, generation: dict[str, Any]
) -> list[tuple[int, list[str]]]:
    """Child tasks whose inputs named a lost file they had not processed successfully."""
    names = [item["lfn"] for item in generation["lost"]]
    children = []
    for child_id in await recovery_db.child_tasks(conn, generation["task"]):
        rows = await recovery_db.master_rows_by_name(conn, child_id, names)
        pending = sorted({row["lfn"] for row in rows if row["status"] != "finished"})
        if pending:
            children.append((child_id, pending))
    return children


async def _retry_children(
    conn: AsyncConnection, clock: Clock, request: dict[str, Any], plan: dict[str, Any], result: StepResult
) -> None:
    name = request["log_name"]
    stamp = clock.now().isoformat()
    generation = plan["generations"][-1]
    for child_id, lfns in await _children_to_retry(conn, generation):
        child = await commands_db.lock_task(conn, child_id)
        if child is None or child["status"] not in _RERUN_FROM | _PROCESSING:
            result.write(
                name, f"{stamp} child jediTaskID={child_id} is {child and child['status']}: not retried"
            )
            continue
        rows = await recovery_db.master_rows_by_name(conn, child_id, lfns)
        # Rows a job holds right now are left to it; the others read the replacements.
        waiting = [row for row in rows if row["status"] == "ready"]
        reopened = await _reopen_inputs(
            conn, clock, child_id, waiting, generation["replacements"], name, result
        )
        await _rerun(conn, clock, child)
        result.write(name, f"{stamp} child jediTaskID={child_id}: {reopened} input files to process again")
    total = sum(len(g["lost"]) for g in plan["generations"])
    await _end(conn, clock, request, DONE, f"{total} lost files re-produced or retried", result)
