"""The job generator agent: ready file rows -> activated jobs at a brokered queue (domain.md §4).

Each cycle takes tasks that have rows a new job may use, asks brokerage for a queue, groups the
rows with the task's split rule, and inserts the jobs (``activated``, so pilots can take them at
once) with their files, the planned output rows and the updated counters, in one transaction per
batch. A task for which no queue qualifies goes ``pending`` with the reasons in ``errorDialog``
and is brokered again on the next cycles, so it starts as soon as a queue appears.
"""

from __future__ import annotations

import logging
import random
import re
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import jobs as jobs_db
from bamboo.db import sequences
from bamboo.db import tasks as tasks_db
from bamboo.logic import queues as queues_logic
from bamboo.logic import resource_types
from bamboo.logic.brokerage import QueueLoad, TaskNeeds, choose_queue, job_core_count, job_memory
from bamboo.logic.catalog import scope_of
from bamboo.logic.clock import Clock
from bamboo.logic.errors import InvalidInput
from bamboo.logic.jobparams import JobContext, output_file_name, render
from bamboo.logic.splitting import Row, group_rows
from bamboo.logic.states import TASK_GENERATING
from bamboo.logic.taskparams import RefinedTask, refine

log = logging.getLogger(__name__)

# One cycle is one transaction: bounded so it never holds SQLite's write lock (or PostgreSQL row
# locks) for long while pilots wait, and spread over tasks so a huge one does not starve the rest.
TASKS_PER_CYCLE = 10
JOBS_PER_TASK = 200
JOBS_PER_CYCLE = 400
ROWS_PER_TASK = 5000
_OUTPUT_TYPES = ("output", "log")
_HOME_VERSION = re.compile(r"-(\d+\.)")


async def generate(conn: AsyncConnection, clock: Clock, rng: random.Random | None = None) -> int:
    """Generate jobs for a batch of tasks. Returns how many jobs were made."""
    candidates = await tasks_db.claim_generating(conn, sorted(TASK_GENERATING), TASKS_PER_CYCLE)
    if not candidates:
        return 0
    queue_specs = await queues_logic.list_specs(conn)
    loads = _loads(await jobs_db.status_counts_by_site(conn, ["activated", "defined", "running"]))
    rt_rows = await resource_types.resource_type_list(conn)
    made = 0
    for task in candidates:
        if made >= JOBS_PER_CYCLE:
            break
        try:
            async with conn.begin_nested():
                made += await _generate_for_task(
                    conn,
                    clock,
                    task,
                    queue_specs,
                    loads,
                    rt_rows,
                    rng,
                    min(JOBS_PER_TASK, JOBS_PER_CYCLE - made),
                )
        except Exception:
            # A task that trips a bug waits with a pointer to the log instead of blocking the others.
            log.exception("task %s: job generation failed", task["jediTaskID"])
            await _set_pending(conn, clock, task, "internal error while generating jobs; see the server log")
    return made


def _loads(counts: dict[tuple[str, str], int]) -> dict[str, QueueLoad]:
    sites = {site for site, _ in counts}
    return {
        site: QueueLoad(
            activated=counts.get((site, "activated"), 0),
            defined=counts.get((site, "defined"), 0),
            running=counts.get((site, "running"), 0),
        )
        for site in sites
    }


def _needs(task: dict[str, Any], refined: RefinedTask) -> TaskNeeds:
    unit = (task["ramUnit"] or "MBPerCore").lower()
    return TaskNeeds(
        site=task["site"],
        prod_source_label=task["prodSourceLabel"],
        core_count=refined.core_count,
        ram_count=refined.ram_count,
        ram_per_core=unit.startswith("mbpercore"),
        base_ram_count=refined.base_ram_count,
        walltime=refined.walltime,
    )


async def _set_pending(conn: AsyncConnection, clock: Clock, task: dict[str, Any], dialog: str) -> None:
    if task["status"] == "pending" and task["errorDialog"] == dialog:
        return
    now = clock.now()
    await tasks_db.update(
        conn,
        task["jediTaskID"],
        status="pending",
        superStatus="pending",
        oldStatus=task["oldStatus"] if task["status"] == "pending" else task["status"],
        errorDialog=dialog[:510],
        modificationTime=now,
        stateChangeTime=now,
    )
    log.info("task %s pending: %s", task["jediTaskID"], dialog)


async def _generate_for_task(
    conn: AsyncConnection,
    clock: Clock,
    task: dict[str, Any],
    queue_specs: list[dict[str, Any]],
    loads: dict[str, QueueLoad],
    rt_rows: list[dict[str, Any]],
    rng: random.Random | None,
    max_jobs: int,
) -> int:
    task_id = task["jediTaskID"]
    params = orjson.loads(task["task_params"])
    refined = refine(params)
    datasets = await tasks_db.datasets(conn, task_id)
    master = next(d for d in datasets if d["masterID"] is None and d["type"] in ("input", "pseudo_input"))
    outputs = [d for d in datasets if d["type"] in _OUTPUT_TYPES]
    seeds = next((d for d in datasets if d["type"] == "random_seed"), None)
    needs = _needs(task, refined)
    choice = choose_queue(needs, queue_specs, loads, rng)
    if choice.queue is None:
        await _set_pending(conn, clock, task, choice.explain())
        return 0
    queue = choice.queue
    rows = await tasks_db.eligible_rows(conn, master["datasetID"], ROWS_PER_TASK)
    groups = group_rows(
        [Row(key=row, size=row["fsize"] or 0, n_events=row["nEvents"]) for row in rows], refined.split
    )
    groups = groups[:max_jobs]
    if not groups:
        return 0
    count = len(groups)
    first_serials = {
        d["datasetID"]: await tasks_db.reserve_serials(conn, d["datasetID"], count) for d in outputs
    }
    first_seed = await tasks_db.reserve_serials(conn, seeds["datasetID"], count) if seeds else None
    previous = await jobs_db.get_many(conn, sorted({r["PandaID"] for r in rows if r["PandaID"] is not None}))
    now = clock.now()
    cores = job_core_count(needs, queue)
    memory = job_memory(needs, cores)
    resource_type = resource_types.match_job(rt_rows, cores, memory)
    plans = []
    for index, group in enumerate(groups):
        inputs = [row.key for row in group]
        planned = []
        for dataset in outputs:
            serial = first_serials[dataset["datasetID"]] + index
            planned.append(
                (dataset, serial, output_file_name(dataset["filename_template"], serial, task_id=task_id))
            )
        attempt = 1 + max(row["attemptNr"] for row in inputs)
        seed = first_seed + refined.random_seed_offset + index if first_seed is not None else None
        plans.append((inputs, planned, attempt, seed))
    panda_ids = await sequences.allocate(conn, sequences.PANDA_ID, count)
    rendered = []
    for panda_id, (inputs, planned, attempt, seed) in zip(panda_ids, plans, strict=True):
        context = _context(
            task, refined, inputs, planned, seed, attempt, panda_id, master["type"] == "pseudo_input"
        )
        try:
            rendered.append(render(task["job_params_template"] or "", context))
        except InvalidInput as exc:
            # Nothing is inserted: the task waits with the reason until someone fixes it.
            await _set_pending(conn, clock, task, exc.message)
            return 0
    job_rows: list[dict[str, Any]] = []
    job_files: list[dict[str, Any]] = []
    used_ids: list[int] = []
    for panda_id, (inputs, planned, attempt, _), parameters in zip(panda_ids, plans, rendered, strict=True):
        used_ids.extend(row["fileID"] for row in inputs)
        output_ids = await tasks_db.insert_files(
            conn,
            [
                {
                    "jediTaskID": task_id,
                    "datasetID": dataset["datasetID"],
                    "creationDate": now,
                    "lfn": lfn,
                    "type": dataset["type"],
                    "status": "running",
                    "scope": scope_of(dataset["datasetName"]),
                    "attemptNr": 0,
                    "failedAttempt": 0,
                    "keepTrack": 1,
                    "outPandaID": panda_id,
                }
                for dataset, _, lfn in planned
            ],
        )
        origin = _origin(inputs, previous) or panda_id
        job_rows.append(
            _job_row(
                task,
                queue,
                master,
                outputs,
                panda_id,
                origin,
                attempt,
                inputs,
                cores,
                memory,
                resource_type,
                parameters,
                now,
            )
        )
        job_files.extend(_input_files(task, master, panda_id, inputs))
        produced = [
            (dataset, lfn, file_id) for (dataset, _, lfn), file_id in zip(planned, output_ids, strict=True)
        ]
        job_files.extend(_output_files(task, queue, panda_id, attempt, produced))
        await tasks_db.update_files(
            conn,
            [row["fileID"] for row in inputs],
            status="running",
            PandaID=panda_id,
            proc_status="queued",
            lastAttemptTime=now,
        )
    await jobs_db.insert(conn, job_rows, job_files)
    await tasks_db.bump_dataset(conn, master["datasetID"], now, nFilesUsed=len(used_ids))
    await tasks_db.update(
        conn,
        task_id,
        status="running",
        superStatus="running",
        oldStatus=None,
        errorDialog=None,
        startTime=task["startTime"] or now,
        modificationTime=now,
        stateChangeTime=now if task["status"] != "running" else task["stateChangeTime"],
    )
    log.info("task %s: %d jobs activated at %s", task_id, count, queue["name"])
    return count


def _origin(inputs: Sequence[dict[str, Any]], previous: dict[int, dict[str, Any]]) -> int | None:
    for row in inputs:
        old = previous.get(row["PandaID"]) if row["PandaID"] is not None else None
        if old is not None:
            return old["origin_panda_id"] or old["PandaID"]
    return None


def _context(
    task: dict[str, Any],
    refined: RefinedTask,
    inputs: Sequence[dict[str, Any]],
    planned: Sequence[tuple[dict[str, Any], int, str]],
    seed: int | None,
    attempt: int,
    panda_id: int,
    pseudo: bool,
) -> JobContext:
    streams: dict[str, list[str]] = {}
    if not pseudo:
        streams["IN"] = list(dict.fromkeys(row["lfn"] for row in inputs))
    for dataset, _, lfn in planned:
        streams[dataset["streamName"]] = [lfn]
    event_split = inputs[0]["startEvent"] is not None
    total_events = sum(row["nEvents"] or 0 for row in inputs)
    return JobContext(
        streams=streams,
        serial=planned[0][1] if planned else None,
        random_seed=seed,
        max_events=(total_events or -1) if event_split else None,
        skip_events=inputs[0]["startEvent"] if event_split else None,
        first_event=inputs[0]["firstEvent"] if event_split else None,
        source_url=refined.source_url,
        attempt_nr=attempt,
        task_id=task["jediTaskID"],
        jobset_id=task["reqID"],
        panda_id=panda_id,
    )


def _job_row(
    task: dict[str, Any],
    queue: dict[str, Any],
    master: dict[str, Any],
    outputs: Sequence[dict[str, Any]],
    panda_id: int,
    origin: int,
    attempt: int,
    inputs: Sequence[dict[str, Any]],
    cores: int,
    memory: int,
    resource_type: str,
    parameters: str,
    now: Any,
) -> dict[str, Any]:
    data_outputs = [d for d in outputs if d["type"] == "output"]
    real_inputs = [row for row in inputs if row["type"] != "pseudo_input"]
    home = task["transHome"]
    return {
        "PandaID": panda_id,
        "jobDefinitionID": task["reqID"],
        "creationTime": now,
        "creationHost": "bamboo",
        "modificationTime": now,
        "AtlasRelease": task["transUses"],
        "transformation": task["transPath"],
        # PanDA ships "Pkg-1.2.3" cache names as "Pkg/1.2.3".
        "homepackage": _HOME_VERSION.sub(r"/\1", home) if home else home,
        "prodSourceLabel": task["prodSourceLabel"],
        "prodUserID": task["submitter_dn"],
        "assignedPriority": task["currentPriority"],
        "currentPriority": task["currentPriority"],
        "attemptNr": attempt,
        "maxAttempt": attempt,
        "jobStatus": "activated",
        "jobName": f"{task['taskName']}.{origin}",
        "maxCpuCount": 0,
        "maxDiskCount": 0,
        "minRamCount": memory,
        "minRamUnit": "MB",
        "computingSite": queue["name"],
        "jobParameters": parameters,
        "prodDBlock": master["datasetName"],
        "destinationDBlock": (data_outputs or list(outputs) or [{"datasetName": None}])[0]["datasetName"],
        "destinationSE": queue["name"],
        "nEvents": 0,
        "cloud": queue.get("cloud"),
        "taskID": task["jediTaskID"],
        "cmtConfig": task["architecture"],
        "stateChangeTime": now,
        "lockedby": "jedi",
        "relocationFlag": 0,
        "VO": task["vo"],
        "workingGroup": task["workingGroup"],
        "processingType": task["processingType"],
        "prodUserName": task["userName"],
        "nInputFiles": len(real_inputs),
        "countryGroup": task["countryGroup"],
        "jobsetID": task["reqID"],
        "coreCount": cores,
        "nInputDataFiles": len(real_inputs),
        "inputFileBytes": sum(row["fsize"] or 0 for row in real_inputs),
        "jediTaskID": task["jediTaskID"],
        "reqID": task["reqID"],
        "maxWalltime": queue.get("maxtime") or 0,
        "eventService": 0,
        "failedAttempt": max(row["failedAttempt"] for row in inputs),
        "gshare": task["gshare"],
        "resource_type": resource_type,
        "container_name": task["container_name"],
        "job_label": "user" if task["taskType"] == "anal" else "managed",
        "origin_panda_id": origin,
    }


def _input_files(
    task: dict[str, Any], master: dict[str, Any], panda_id: int, inputs: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    files: dict[str, dict[str, Any]] = {}
    for row in inputs:
        if row["type"] == "pseudo_input" or row["lfn"] in files:
            continue
        files[row["lfn"]] = {
            "PandaID": panda_id,
            "GUID": row["GUID"],
            "lfn": row["lfn"],
            "type": "input",
            "dataset": master["containerName"] or master["datasetName"],
            "status": "ready",
            "prodDBlock": master["datasetName"],
            "fsize": row["fsize"],
            "checksum": row["checksum"],
            "scope": row["scope"],
            "jediTaskID": task["jediTaskID"],
            "datasetID": row["datasetID"],
            "fileID": row["fileID"],
            "attemptNr": row["attemptNr"],
        }
    return list(files.values())


def _output_files(
    task: dict[str, Any],
    queue: dict[str, Any],
    panda_id: int,
    attempt: int,
    planned: Sequence[tuple[dict[str, Any], str, int]],
) -> list[dict[str, Any]]:
    return [
        {
            "PandaID": panda_id,
            "GUID": str(uuid.uuid4()),
            "lfn": lfn,
            "type": dataset["type"],
            "dataset": dataset["containerName"] or dataset["datasetName"],
            "status": "unknown",
            "destinationDBlock": dataset["datasetName"],
            "destinationDBlockToken": dataset["storageToken"],
            "destinationSE": queue["name"],
            "scope": scope_of(dataset["datasetName"]),
            "jediTaskID": task["jediTaskID"],
            "datasetID": dataset["datasetID"],
            "fileID": file_id,
            "attemptNr": attempt,
        }
        for dataset, lfn, file_id in planned
    ]
