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
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import archive as archive_db
from bamboo.db import brokerage as brokerage_db
from bamboo.db import harvester_commands as steering_db
from bamboo.db import jobs as jobs_db
from bamboo.db import sequences
from bamboo.db import tasks as tasks_db
from bamboo.logic import (
    build_jobs,
    es_generation,
    merge_jobs,
    resource_types,
    retry_rules,
    scouting,
    secondary,
    target_slots,
    task_status,
)
from bamboo.logic import queues as queues_logic
from bamboo.logic.brokerage import (
    Choice,
    QueueLoad,
    TaskNeeds,
    choose_queue,
    job_core_count,
    job_memory,
    pseudo_queues,
    rejection,
)
from bamboo.logic.clock import Clock
from bamboo.logic.errors import InvalidInput
from bamboo.logic.job_rows import output_files, planned_output_row, planned_outputs, task_job_row
from bamboo.logic.jobparams import JobContext, render
from bamboo.logic.rebrokerage import RebrokerageLimits
from bamboo.logic.splitting import Row, SplitRule, group_rows
from bamboo.logic.states import TASK_MAKING_JOBS
from bamboo.logic.taskparams import SEQUENCE_STREAM, RefinedTask, refine

log = logging.getLogger(__name__)

# One cycle is one transaction: bounded so it never holds SQLite's write lock (or PostgreSQL row
# locks) for long while pilots wait, and spread over tasks so a huge one does not starve the rest.
# A job costs a few tenths of a millisecond (its rows go in a few statements per batch), so a full
# cycle takes a few hundred milliseconds; the per-cycle work (claiming, queue loads) is spread over
# enough jobs that a 100,000-job task is generated in well under a minute.
TASKS_PER_CYCLE = 10
JOBS_PER_TASK = 500
JOBS_PER_CYCLE = 1000
ROWS_PER_TASK = 5000
DEFAULT_PILOT_ACTIVITY = RebrokerageLimits().pilot_activity


async def generate(
    conn: AsyncConnection,
    clock: Clock,
    rng: random.Random | None = None,
    *,
    pilot_activity: timedelta = DEFAULT_PILOT_ACTIVITY,
) -> int:
    """Generate jobs for a batch of tasks. Returns how many jobs were made.

    Args:
        pilot_activity: how recent a pilot's visit must be for a queue to count as active in
            brokerage (settings ``brokerage_pilot_activity_hours``).
    """
    # A soft-finishing task still merges what its finished jobs wrote (logic/merge_jobs.py).
    candidates = await tasks_db.claim_generating(
        conn, sorted(TASK_MAKING_JOBS), TASKS_PER_CYCLE, merge_statuses=["finishing"]
    )
    if not candidates:
        return 0
    # Every dataset row the cycle changes (serial numbers, counters) belongs to these tasks: taking
    # them all now, in datasetID order, is the one lock order the finaliser follows too.
    await tasks_db.lock_datasets_of_tasks(conn, [task["jediTaskID"] for task in candidates])
    queue_specs = await queues_logic.list_specs(conn)
    rt_rows = await resource_types.resource_type_list(conn)
    loads = _CycleLoads(rt_rows, clock.now(), pilot_activity)
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


class _CycleLoads:
    """The queue loads and pilot activity of one cycle, gathered at most once and only for a task
    that has a choice.

    Counting groups every queued and running job: with 100,000 of them that cost as much as making
    a few hundred jobs, every cycle, and a task that only one queue can take does not need it.
    """

    def __init__(self, rt_rows: list[dict[str, Any]], now: datetime, pilot_activity: timedelta) -> None:
        self.rt_rows = rt_rows
        self._now = now
        self._active_since = now - pilot_activity
        self._loads: dict[str, QueueLoad] | None = None
        self._active: frozenset[str] | None = None
        # Harvester's target slots (a small table, read whole) and worker reports.
        self._slots: dict[str, tuple[target_slots.SlotRow, ...]] | None = None
        self._waiting: dict[str, int] | None = None

    async def choose(
        self,
        conn: AsyncConnection,
        needs: TaskNeeds,
        queue_specs: Sequence[dict[str, Any]],
        rng: random.Random | None,
    ) -> Choice:
        """Brokerage for one task (logic/brokerage.py) with this cycle's loads and activity."""
        if self._slots is None:
            self._slots = target_slots.live_by_queue(await steering_db.all_slots(conn), self._now)
        candidates = sum(
            any(rejection(needs, spec) is None for spec in pseudo_queues(queue, self.rt_rows))
            for queue in queue_specs
        )
        if candidates < 2:
            return choose_queue(needs, queue_specs, {}, rng, rt_rows=self.rt_rows, slots=self._slots)
        if self._loads is None:
            self._loads = _loads(
                await jobs_db.status_counts_by_site(conn, ["activated", "defined", "running"])
            )
            self._active = frozenset(await brokerage_db.sites_with_pilot_activity(conn, self._active_since))
            since = self._now - target_slots.WORKER_STATS_WINDOW
            self._waiting = target_slots.waiting_workers(await steering_db.worker_stats(conn, since))
        return choose_queue(
            needs,
            queue_specs,
            self._loads,
            rng,
            rt_rows=self.rt_rows,
            active=self._active,
            slots=self._slots,
            waiting=self._waiting,
        )


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


def _megabytes(count: int | None, unit: str | None) -> int:
    """A task's disk count in MB; per-event counts (scouts measure those) are not a per-job size."""
    unit = (unit or "MB").lower()
    if not count or "perevent" in unit:
        return 0
    if unit.startswith("gb"):
        return count * 1024
    if unit.startswith("kb"):
        return -(-count // 1024)
    return count


async def _needs(
    conn: AsyncConnection,
    task: dict[str, Any],
    refined: RefinedTask,
    master: dict[str, Any],
    queue_specs: Sequence[dict[str, Any]],
) -> TaskNeeds:
    """What the next jobs need: the task row's values (which scouts and change_attribute update),
    else the submitted parameters."""
    unit = (task["ramUnit"] or "MBPerCore").lower()

    def current(column: str, submitted: int) -> int:
        return submitted if task[column] is None else task[column]

    # The largest input file only matters where scratch space is limited.
    largest = 0
    if master["type"] == "input" and any((queue.get("maxwdir") or 0) > 0 for queue in queue_specs):
        largest = -(
            -(await brokerage_db.largest_ready_file(conn, task["jediTaskID"], master["datasetID"])) // 2**20
        )
    return TaskNeeds(
        site=task["site"],
        prod_source_label=task["prodSourceLabel"],
        core_count=current("coreCount", refined.core_count),
        ram_count=current("ramCount", refined.ram_count),
        ram_per_core=unit.startswith("mbpercore"),
        base_ram_count=current("baseRamCount", refined.base_ram_count),
        walltime=current("walltime", refined.walltime),
        disk=_megabytes(task["outDiskCount"], task["outDiskUnit"])
        + _megabytes(task["workDiskCount"], task["workDiskUnit"]),
        largest_input=largest,
        processing_type=task["processingType"],
        gshare=task["gshare"],
    )


async def _set_pending(conn: AsyncConnection, clock: Clock, task: dict[str, Any], dialog: str) -> None:
    if task["status"] == "pending" and task["errorDialog"] == dialog:
        return
    await task_status.change(
        conn,
        clock,
        task,
        "pending",
        oldStatus=task["oldStatus"] if task["status"] == "pending" else task["status"],
        errorDialog=dialog[:510],
    )


async def _generate_for_task(
    conn: AsyncConnection,
    clock: Clock,
    task: dict[str, Any],
    queue_specs: list[dict[str, Any]],
    loads: _CycleLoads,
    rt_rows: list[dict[str, Any]],
    rng: random.Random | None,
    max_jobs: int,
) -> int:
    task_id = task["jediTaskID"]
    params = orjson.loads(task["task_params"])
    refined = refine(params)
    datasets = await tasks_db.datasets(conn, task_id)
    master = next(d for d in datasets if d["masterID"] is None and d["type"] in ("input", "pseudo_input"))
    merges = 0
    if refined.merge is not None:
        generating = task["status"] in TASK_MAKING_JOBS or (
            task["status"] == "pending" and task["oldStatus"] in TASK_MAKING_JOBS
        )
        try:
            merges = await merge_jobs.make(
                conn,
                clock,
                task,
                params,
                refined.merge,
                datasets,
                queue_specs,
                rt_rows,
                refined.source_url,
                max_jobs,
                makes_run_jobs=generating,
            )
        except InvalidInput as exc:
            # The refiner checked the template, so this is rare; a finishing task cannot wait.
            if generating:
                await _set_pending(conn, clock, task, f"merge jobs: {exc.message}")
            else:
                log.warning("task %s: no merge jobs: %s", task["jediTaskID"], exc.message)
            return 0
        # A task that only merges (finishing, or with no input left for run jobs) needs no queue.
        if not generating or not await tasks_db.eligible_rows(conn, master["datasetID"], 1):
            return merges
    jumbo = es_generation.jumbo_wanted(task)
    # A task claimed only for its jumbo jobs has no input left for run jobs: it needs no brokerage.
    if jumbo and not await tasks_db.eligible_rows(conn, master["datasetID"], 1):
        made = merges
    else:
        made = merges + await _make_run_jobs(
            conn,
            clock,
            task,
            params,
            refined,
            datasets,
            master,
            queue_specs,
            loads,
            rt_rows,
            rng,
            max_jobs - merges,
        )
    if jumbo and made < max_jobs:
        needs = await _needs(conn, task, refined, master, queue_specs)
        made += await es_generation.make_jumbo_jobs(
            conn, clock, task, refined, datasets, needs, queue_specs, rt_rows, max_jobs - made
        )
    return made


async def _make_run_jobs(
    conn: AsyncConnection,
    clock: Clock,
    task: dict[str, Any],
    params: dict[str, Any],
    refined: RefinedTask,
    datasets: list[dict[str, Any]],
    master: dict[str, Any],
    queue_specs: list[dict[str, Any]],
    loads: _CycleLoads,
    rt_rows: list[dict[str, Any]],
    rng: random.Random | None,
    max_jobs: int,
) -> int:
    if max_jobs <= 0:
        return 0
    task_id = task["jediTaskID"]
    outputs = merge_jobs.run_job_outputs(datasets)
    seeds = next((d for d in datasets if d["type"] == "random_seed"), None)
    numbering = next(
        (
            d
            for d in datasets
            if d["type"] == "pseudo_input"
            and d["masterID"] is not None
            and d["streamName"] == SEQUENCE_STREAM
        ),
        None,
    )
    try:
        jobset = es_generation.jobset_rule(task, refined)
    except InvalidInput as exc:
        await _set_pending(conn, clock, task, exc.message)
        return 0
    # A jobset's jobs each write a log; its data outputs are written once (logic/es_generation.py).
    per_job_outputs, per_jobset_outputs = (
        es_generation.split_outputs(outputs) if jobset is not None else (outputs, [])
    )
    needs = await _needs(conn, task, refined, master, queue_specs)
    choice = await loads.choose(conn, needs, queue_specs, rng)
    if choice.queue is None:
        await _set_pending(conn, clock, task, choice.explain())
        return 0
    queue = choice.queue
    build = await build_jobs.prepare(
        conn, clock, task, params, datasets, queue, rt_rows, refined.max_attempt, refined.source_url
    )
    if not build.ready:
        return build.jobs_made
    scouts = scouting.wants_scouts(task, params)
    max_groups = max(1, max_jobs // jobset.jobs_per_set) if jobset is not None else max_jobs
    groups = await _first_groups(
        conn,
        master["datasetID"],
        retry_rules.split_for_task(refined.split, task["splitRule"]).for_queue(queue, task["cpuTime"]),
        min(max_groups, scouting.N_SCOUT_JOBS) if scouts else max_groups,
    )
    if jobset is not None:
        try:
            kept = es_generation.groups_within_budget(
                [[row.key for row in group] for group in groups], jobset
            )
        except InvalidInput as exc:
            await _set_pending(conn, clock, task, exc.message)
            return 0
        groups = groups[: len(kept)]
    if not groups:
        return 0
    groups, attached = await secondary.attach(conn, datasets, groups)
    if not groups:
        return 0
    if jobset is None:
        slots = [es_generation.JobSlot(index, queue, 0) for index in range(len(groups))]
    else:
        candidates = es_generation.qualifying_queues(needs, queue_specs, loads.rt_rows)
        slots = es_generation.job_slots(jobset, len(groups), queue, candidates)
    count = len(slots)
    first_serials = {
        d["datasetID"]: await tasks_db.reserve_serials(conn, d["datasetID"], count) for d in per_job_outputs
    }
    jobset_serials = {
        d["datasetID"]: await tasks_db.reserve_serials(conn, d["datasetID"], len(groups))
        for d in per_jobset_outputs
    }
    # The jobs of a jobset run the same work, with the same seed.
    first_seed = await tasks_db.reserve_serials(conn, seeds["datasetID"], len(groups)) if seeds else None
    # Sequence numbers are the dataset's serials (from offset + 1); a retry draws a new one, as it
    # makes new output files.
    first_number = (
        await tasks_db.reserve_serials(conn, numbering["datasetID"], len(groups)) if numbering else None
    )
    # The previous attempts name the retry chain; a task retried long after they failed finds
    # them archived.
    previous = await archive_db.get_many_incl_archive(
        conn,
        sorted({row.key["PandaID"] for group in groups for row in group if row.key["PandaID"] is not None}),
    )
    now = clock.now()
    cores = job_core_count(needs, queue)
    memory = job_memory(needs, cores)
    resource_type = resource_types.match_job(rt_rows, cores, memory)
    jobset_ids = await sequences.allocate(conn, sequences.PANDA_ID, len(groups)) if jobset else []
    shared = [
        planned_outputs(per_jobset_outputs, jobset_serials, index, task_id)
        for index in range(len(jobset_ids))
    ]
    plans = []
    for index, slot in enumerate(slots):
        inputs = [row.key for row in groups[slot.group]]
        planned = planned_outputs(per_job_outputs, first_serials, index, task_id)
        attempt = 1 + max(row["attemptNr"] for row in inputs)
        seed = first_seed + refined.random_seed_offset + slot.group if first_seed is not None else None
        plans.append((inputs, planned, attempt, seed))
    panda_ids = await sequences.allocate(conn, sequences.PANDA_ID, count)
    rendered = []
    for panda_id, slot, (inputs, planned, attempt, seed) in zip(panda_ids, slots, plans, strict=True):
        extra = attached[slot.group]
        context = _context(
            task,
            refined,
            inputs,
            [*shared[slot.group], *planned] if jobset else planned,
            seed,
            attempt,
            panda_id,
            master,
            None if first_number is None else first_number + slot.group,
        )
        context = build_jobs.with_lib(secondary.with_streams(context, extra), build)
        try:
            rendered.append(render(task["job_params_template"] or "", context))
        except InvalidInput as exc:
            # Nothing is inserted: the task waits with the reason until someone fixes it.
            await _set_pending(conn, clock, task, exc.message)
            return 0
    # The whole batch in a few statements (one insert of the planned output rows, one executemany
    # for the input rows), not a few per job: per-job statements made the cycle's time.
    output_ids = await tasks_db.insert_outputs(
        conn,
        [
            planned_output_row(task_id, dataset, lfn, panda_id, now)
            for panda_id, (_, planned, _, _) in zip(panda_ids, plans, strict=True)
            for dataset, _, lfn in planned
        ]
        + [
            planned_output_row(task_id, dataset, lfn, jobset_id, now)
            for jobset_id, planned in zip(jobset_ids, shared, strict=True)
            for dataset, _, lfn in planned
        ],
    )
    # The input rows are held by the job, or by the jobset whose jobs share them.
    holders = jobset_ids or panda_ids
    await tasks_db.assign_files(
        conn,
        [(row.key["fileID"], holder) for holder, group in zip(holders, groups, strict=True) for row in group],
        status="running",
        proc_status="queued",
        lastAttemptTime=now,
    )
    await secondary.mark_used(conn, holders, attached, now)
    if jobset is not None:
        await es_generation.insert_event_rows(
            conn, task_id, jobset_ids, [[row.key for row in group] for group in groups], jobset, now
        )
    job_rows: list[dict[str, Any]] = []
    job_files: list[dict[str, Any]] = []
    for panda_id, slot, (inputs, planned, attempt, _), parameters in zip(
        panda_ids, slots, plans, rendered, strict=True
    ):
        origin = _origin(inputs, previous) or panda_id
        job_rows.append(
            _job_row(
                task,
                slot.queue,
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
        if jobset is not None:
            es_generation.mark_job(job_rows[-1], slot, jobset_ids[slot.group], jobset)
        job_files.extend(_input_files(task, master, panda_id, inputs))
        job_files.extend(secondary.job_files(task_id, panda_id, attached[slot.group]))
        job_files.extend(build_jobs.lib_files(task_id, panda_id, build))
        produced = [(dataset, lfn, output_ids[panda_id, dataset["datasetID"]]) for dataset, _, lfn in planned]
        if jobset is not None and jobset.is_cloning:
            # Every clone carries the jobset's data outputs: whichever wins writes them.
            holder = jobset_ids[slot.group]
            produced = [
                (dataset, lfn, output_ids[holder, dataset["datasetID"]])
                for dataset, _, lfn in shared[slot.group]
            ] + produced
        job_files.extend(output_files(task_id, slot.queue["name"], panda_id, attempt, produced))
    used_ids = [row.key["fileID"] for group in groups for row in group]
    if scouts:
        for job in job_rows:
            scouting.mark(job, task)
    await jobs_db.insert(conn, job_rows, job_files)
    await tasks_db.bump_dataset(conn, master["datasetID"], now, nFilesUsed=len(used_ids))
    await task_status.change(
        conn,
        clock,
        task,
        "scouting" if scouts else "running",
        oldStatus=None,
        errorDialog=None,
        startTime=task["startTime"] or now,
    )
    log.info("task %s: %d jobs activated at %s", task_id, count, queue["name"])
    return count


async def _first_groups(
    conn: AsyncConnection, dataset_id: int, rule: SplitRule, max_jobs: int
) -> list[list[Row]]:
    """The first ``max_jobs`` groups of the dataset's eligible rows, the same as grouping its first
    ``ROWS_PER_TASK`` rows would give.

    Rows are read in growing pages: grouping is greedy and in order, so a group is final as soon as
    a later one has started, and a few rows more than the jobs take are enough. Reading
    ``ROWS_PER_TASK`` rows every cycle cost more than making the jobs.
    """
    limit = min(ROWS_PER_TASK, max_jobs * (rule.n_files_per_job or 1) + 1)
    while True:
        rows = await tasks_db.eligible_rows(conn, dataset_id, limit)
        groups = group_rows(
            [Row(key=row, size=row["fsize"] or 0, n_events=row["nEvents"]) for row in rows], rule
        )
        if len(groups) > max_jobs or len(rows) < limit or limit >= ROWS_PER_TASK:
            return groups[:max_jobs]
        limit = min(ROWS_PER_TASK, limit * 4)


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
    master: dict[str, Any],
    sequence_number: int | None,
) -> JobContext:
    streams: dict[str, list[str]] = {}
    datasets: dict[str, str] = {}
    if master["type"] != "pseudo_input":
        streams["IN"] = list(dict.fromkeys(row["lfn"] for row in inputs))
        # As the job's input files name it (_input_files): ${IN/F} and writeToFile must agree.
        datasets["IN"] = master["containerName"] or master["datasetName"]
    if sequence_number is not None:
        streams[SEQUENCE_STREAM] = [str(sequence_number)]
    for dataset, _, lfn in planned:
        streams[merge_jobs.run_job_stream(dataset)] = [lfn]
    event_split = inputs[0]["startEvent"] is not None
    total_events = sum(row["nEvents"] or 0 for row in inputs)
    return JobContext(
        streams=streams,
        stream_datasets=datasets,
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
    data_outputs = [d for d in outputs if d["type"] in ("output", "trn_output")]
    real_inputs = [item for item in inputs if item["type"] != "pseudo_input"]
    row = task_job_row(
        task,
        queue,
        panda_id=panda_id,
        origin=origin,
        attempt=attempt,
        cores=cores,
        memory=memory,
        resource_type=resource_type,
        parameters=parameters,
        now=now,
    )
    row.update(
        prodDBlock=master["datasetName"],
        destinationDBlock=(data_outputs or list(outputs) or [{"datasetName": None}])[0]["datasetName"],
        nInputFiles=len(real_inputs),
        nInputDataFiles=len(real_inputs),
        inputFileBytes=sum(item["fsize"] or 0 for item in real_inputs),
        failedAttempt=max(item["failedAttempt"] for item in inputs),
    )
    return row


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
