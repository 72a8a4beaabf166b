"""Event-service, job-cloning and jumbo jobs at generation time (domain.md §7, §7.5).

The generator (logic/generator.py) groups a task's input rows with its split rule as for any task;
for an event-service or job-cloning task each group becomes a **jobset** instead of one job:

* a jobsetID taken from the PandaID sequence and never given to a job, so an event row's
  ``PandaID`` (the jobsetID while nobody holds the range) is unambiguous;
* the group's input rows held by the jobset (``PandaID = jobsetID``, ``running``);
* event-service task (``eventService`` 1): ``nEsConsumers`` consumer jobs (job ``eventService`` 1)
  with the same inputs, and one ``ready`` event row per range of ``nEventsPerWorker`` events of
  each input row, ``attemptNr = maxAttemptES`` (attempts left); with notDiscardEvents (``ND``)
  the events an earlier jobset of the file did (its ``done`` ranges) are left out and those
  ranges join the new jobset;
* job-cloning task (``eventService`` 2, or ``UC`` in the split rule): ``nSitesPerJob`` clone jobs
  (job ``eventService`` 3) at distinct queues, and one *semaphore* event row per jobset (fileID of
  the first input, ``job_processID`` 0, range 0-0, ``ready``, ``attemptNr`` 1) that the first
  clone to start takes.

Outputs: a jobset's data outputs are written once, by its ES merge job or by the clone that wins,
so their planned output rows (one serial number per jobset and data-output dataset) are held by the
jobset (``outPandaID = jobsetID``); the job that finally writes them takes them over. Every job of
the jobset has its own log (one serial number per job). ES consumers render ``${OUTPUT<n>}`` with
the jobset's names but carry no data-output files; clones carry them (the same files in every
clone).

Jumbo jobs (job ``eventService`` 4) take ranges from the whole task: when the task's ``useJumbo``
is ``W`` and ``NJ`` > 0 and it has ready ranges, up to ``NJ`` of them are made at queues whose
catalog spec sets ``useJumboJobs``, at most ``MJ`` per queue, under a jobsetID of their own; the
task's ``useJumbo`` becomes ``R``. Co-jumbo placeholders (``eventService`` 5) are not made.

All split-rule values are read from the task's ``splitRule`` at generation time, so
``task/change_split_rule`` (``ES``, ``EC``, ``NJ``), ``enable_job_cloning``, ``disable_job_cloning``
and ``enable_jumbo_jobs`` act on every jobset generated afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import event_rows as event_rows_db
from bamboo.db import events as events_db
from bamboo.db import jobs as jobs_db
from bamboo.db import sequences
from bamboo.db import tasks as tasks_db
from bamboo.logic import merge_jobs, resource_types
from bamboo.logic.brokerage import TaskNeeds, job_core_count, job_memory, pseudo_queues, rejection
from bamboo.logic.clock import Clock
from bamboo.logic.errors import InvalidInput
from bamboo.logic.job_rows import output_files, planned_output_row, planned_outputs, task_job_row
from bamboo.logic.jobparams import JobContext, render
from bamboo.logic.task_admin import parse_split_rule
from bamboo.logic.taskparams import (
    CLONING_MODES,
    DEFAULT_ES_CONSUMERS,
    DEFAULT_MAX_ATTEMPT_ES,
    DEFAULT_SITES_PER_JOB,
    MAX_ES_CONSUMERS,
    MAX_JUMBO_JOBS,
    MAX_SITES_PER_JOB,
    TASK_EVENT_SERVICE,
    TASK_JOB_CLONING,
    RefinedTask,
)

#: Job ``eventService`` values (domain.md §7).
JOB_ES_CONSUMER, JOB_ES_MERGE, JOB_CLONE, JOB_JUMBO = 1, 2, 3, 4
READY = "ready"
#: ``specialHandling`` token carrying a clone's mode (runonce/storeonce) to dispatch and the
#: lifecycle: the job row has no column of its own for it.
CLONE_MODE_PREFIX = "cloning:"
#: A jobset may hold at most this many ranges, and one generator cycle inserts about this many
#: in all (at least one jobset): a huge file in tiny ranges must not make one cycle take minutes.
MAX_RANGES_PER_JOBSET = 100_000
RANGES_PER_CYCLE = 50_000
#: Jumbo jobs read the task's files through their ranges (LFN and GUID come with each range);
#: their ``${IN}`` names at most this many of the files with ready ranges.
MAX_JUMBO_INPUT_NAMES = 200
_DATA_OUTPUT_TYPES = frozenset({"output", "trn_output"})
_JUMBO_WAITING, _JUMBO_RUNNING = "W", "R"
_CLONE_CODES = {str(code): mode for mode, code in CLONING_MODES.items()}


@dataclass(frozen=True)
class JobsetRule:
    """How each group of input rows becomes a jobset, from the task row as it is now."""

    job_event_service: int
    jobs_per_set: int
    n_events_per_range: int | None = None
    max_attempt_es: int = DEFAULT_MAX_ATTEMPT_ES
    clone_mode: str | None = None
    #: notDiscardEvents (``ND``): events done by an earlier jobset of a file are not made again.
    keep_done: bool = False

    @property
    def is_cloning(self) -> bool:
        return self.job_event_service == JOB_CLONE


@dataclass(frozen=True)
class JobSlot:
    """One job of a batch: the index of its group (jobset), its queue and its ``eventService``."""

    group: int
    queue: dict[str, Any]
    event_service: int


def _count(text: str | None, default: int, maximum: int | None = None) -> int:
    """A positive split-rule value, ``default`` when absent or not a positive integer."""
    try:
        value = int(text) if text is not None else default
    except ValueError:
        value = default
    value = value if value > 0 else default
    return min(value, maximum) if maximum is not None else value


def jobset_rule(task: Mapping[str, Any], refined: RefinedTask) -> JobsetRule | None:
    """The rule for the task's next jobsets, None for a task whose groups become single jobs.

    Job cloning wins when the task is ``eventService`` 2 or has a ``UC`` split rule; an
    event-service task (``eventService`` 1) needs ``ES`` (nEventsPerWorker).

    Raises:
        InvalidInput: an event-service task without a positive ``ES`` split rule.
    """
    rules = parse_split_rule(task["splitRule"])
    spec = refined.event_service
    if task["eventService"] == TASK_JOB_CLONING or rules.get("UC") in _CLONE_CODES:
        default_sites = spec.n_sites_per_job if spec is not None else DEFAULT_SITES_PER_JOB
        return JobsetRule(
            job_event_service=JOB_CLONE,
            jobs_per_set=_count(rules.get("NS"), default_sites, MAX_SITES_PER_JOB),
            clone_mode=_CLONE_CODES.get(rules.get("UC") or "", "runonce"),
        )
    if task["eventService"] == TASK_EVENT_SERVICE:
        submitted = (spec.n_events_per_worker or 0) if spec is not None else 0
        per_range = _count(rules.get("ES"), submitted)
        if per_range <= 0:
            raise InvalidInput("event-service task without nEventsPerWorker (split rule ES)")
        return JobsetRule(
            job_event_service=JOB_ES_CONSUMER,
            jobs_per_set=_count(rules.get("EC"), DEFAULT_ES_CONSUMERS, MAX_ES_CONSUMERS),
            n_events_per_range=per_range,
            max_attempt_es=_count(rules.get("XA"), DEFAULT_MAX_ATTEMPT_ES),
            keep_done=rules.get("ND") not in (None, "", "0"),
        )
    return None


def split_outputs(
    outputs: Sequence[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The output datasets of a jobset's jobs: (one file per job: the logs, one file per jobset:
    the data outputs)."""
    per_job = [d for d in outputs if d["type"] not in _DATA_OUTPUT_TYPES]
    per_jobset = [d for d in outputs if d["type"] in _DATA_OUTPUT_TYPES]
    return per_job, per_jobset


def qualifying_queues(
    needs: TaskNeeds, queue_specs: Sequence[Mapping[str, Any]], rt_rows: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The queues that could run the task (the first spec of each that passes brokerage's
    filters), in name order."""
    found = []
    for queue in sorted(queue_specs, key=lambda spec: spec["name"]):
        spec = next((s for s in pseudo_queues(queue, rt_rows) if rejection(needs, s) is None), None)
        if spec is not None:
            found.append(spec)
    return found


def job_slots(
    rule: JobsetRule, n_groups: int, queue: dict[str, Any], candidates: Sequence[dict[str, Any]]
) -> list[JobSlot]:
    """The jobs of ``n_groups`` jobsets, in order: ``jobs_per_set`` consumers at ``queue``, or one
    clone at ``queue`` and one at each further distinct candidate queue up to ``jobs_per_set``
    (fewer clones when fewer queues qualify)."""
    if rule.is_cloning:
        others = [spec for spec in candidates if spec["name"] != queue["name"]]
        queues = [queue, *others][: rule.jobs_per_set]
    else:
        queues = [queue] * rule.jobs_per_set
    return [JobSlot(group, chosen, rule.job_event_service) for group in range(n_groups) for chosen in queues]


def cut_ranges(start: int, n_events: int, per_range: int) -> list[tuple[int, int]]:
    """Events ``start .. start+n_events-1`` in consecutive inclusive ranges of ``per_range`` (the
    last one shorter).

    Raises:
        ValueError: ``n_events`` negative or ``per_range`` not positive.
    """
    if n_events < 0 or per_range < 1:
        raise ValueError(f"cannot cut {n_events} events into ranges of {per_range}")
    return [
        (first, min(first + per_range, start + n_events) - 1)
        for first in range(start, start + n_events, per_range)
    ]


def row_ranges(
    row: Mapping[str, Any], per_range: int, done: Sequence[tuple[int, int]] = ()
) -> list[tuple[int, int]]:
    """The event ranges of one input file row: over ``startEvent..endEvent`` of an event-split
    row, else over the file's ``nEvents`` from 0; without the events of the ``done`` ranges
    (inclusive bounds; notDiscardEvents), each stretch between them cut on its own.

    Raises:
        InvalidInput: the row's number of events is unknown.
    """
    start = row["startEvent"]
    if start is not None and row["endEvent"] is not None:
        first, n_events = start, row["endEvent"] - start + 1
    elif not row["nEvents"] or row["nEvents"] < 0:
        raise InvalidInput(
            f"input file {row['lfn']!r} has no known number of events, which the event service needs"
        )
    else:
        first, n_events = start or 0, row["nEvents"]
    if not done:
        return cut_ranges(first, n_events, per_range)
    return [
        cut
        for low, high in uncovered(first, first + n_events - 1, done)
        for cut in cut_ranges(low, high - low + 1, per_range)
    ]


def uncovered(first: int, last: int, done: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The stretches of ``first..last`` (inclusive) that no ``done`` range covers, in order."""
    gaps = []
    position = first
    for low, high in sorted(done):
        if low > last:
            break
        if low > position:
            gaps.append((position, low - 1))
        position = max(position, high + 1)
    if position <= last:
        gaps.append((position, last))
    return gaps


def count_ranges(group: Sequence[Mapping[str, Any]], per_range: int) -> int:
    """How many ranges a group's rows make (without building them)."""
    return sum(len(row_ranges(row, per_range)) for row in group)


def groups_within_budget(groups: list[list[dict[str, Any]]], rule: JobsetRule) -> list[list[dict[str, Any]]]:
    """The leading groups whose ranges stay within :data:`RANGES_PER_CYCLE` (at least one).

    Raises:
        InvalidInput: a group alone has more than :data:`MAX_RANGES_PER_JOBSET` ranges.
    """
    if rule.n_events_per_range is None:
        return groups
    kept: list[list[dict[str, Any]]] = []
    total = 0
    for group in groups:
        ranges = count_ranges(group, rule.n_events_per_range)
        if ranges > MAX_RANGES_PER_JOBSET:
            raise InvalidInput(
                f"a jobset would have {ranges} event ranges (at most {MAX_RANGES_PER_JOBSET}); "
                "raise nEventsPerWorker or make smaller jobs"
            )
        if kept and total + ranges > RANGES_PER_CYCLE:
            break
        kept.append(group)
        total += ranges
    return kept


def jobset_event_rows(
    task_id: int,
    jobset_id: int,
    inputs: Sequence[Mapping[str, Any]],
    rule: JobsetRule,
    now: Any,
    done: Mapping[int, Sequence[tuple[int, int]]] | None = None,
) -> list[dict[str, Any]]:
    """The ``events`` rows of a new jobset: its ranges (event service) or its semaphore (cloning).
    ``done``: per fileID, the ranges an earlier jobset already did (notDiscardEvents), left out."""
    base = {"jediTaskID": task_id, "PandaID": jobset_id, "jobsetID": jobset_id, "status": READY}
    if rule.is_cloning:
        first = inputs[0]
        return [
            {
                **base,
                "datasetID": first["datasetID"],
                "fileID": first["fileID"],
                "job_processID": 0,
                "attemptNr": 1,
                "def_min_eventID": 0,
                "def_max_eventID": 0,
                "is_jumbo": False,
                "modificationTime": now,
            }
        ]
    assert rule.n_events_per_range is not None
    return [
        {
            **base,
            "datasetID": row["datasetID"],
            "fileID": row["fileID"],
            "job_processID": low,
            "attemptNr": rule.max_attempt_es,
            "def_min_eventID": low,
            "def_max_eventID": high,
            "is_jumbo": False,
            "modificationTime": now,
        }
        for row in inputs
        for low, high in row_ranges(row, rule.n_events_per_range, (done or {}).get(row["fileID"], ()))
    ]


def mark_job(row: dict[str, Any], slot: JobSlot, jobset_id: int, rule: JobsetRule) -> None:
    """Make a run job row (made for ``slot.queue``) one of a jobset: its ``eventService``, jobsetID
    and, for a clone, its mode."""
    row.update(eventService=slot.event_service, jobsetID=jobset_id)
    if rule.clone_mode is not None:
        row["specialHandling"] = _with_token(row.get("specialHandling"), CLONE_MODE_PREFIX + rule.clone_mode)


def _with_token(text: str | None, token: str) -> str:
    tokens = [item for item in (text or "").split(",") if item]
    return ",".join([*tokens, token])


def clone_mode(job: Mapping[str, Any]) -> str | None:
    """A clone's mode (runonce / storeonce) from its ``specialHandling``, None for other jobs."""
    for token in (job.get("specialHandling") or "").split(","):
        if token.startswith(CLONE_MODE_PREFIX):
            return token[len(CLONE_MODE_PREFIX) :]
    return None


async def insert_event_rows(
    conn: AsyncConnection,
    task_id: int,
    jobset_ids: Sequence[int],
    groups: Sequence[Sequence[Mapping[str, Any]]],
    rule: JobsetRule,
    now: Any,
) -> None:
    """Insert the event rows of new jobsets (``groups[i]`` are the input rows of ``jobset_ids[i]``),
    the whole batch in a few statements.

    With notDiscardEvents (``ND``) the ``done`` ranges earlier jobsets left of these files (a
    failed jobset keeps them, logic/es_lifecycle.py) are read in one query; the new ranges leave
    their events out, and the new jobset adopts them (``jobsetID`` := the new jobset, one UPDATE
    per jobset that has any), so its merge job counts and merges them with its own.
    """
    done: dict[int, list[tuple[int, int]]] = {}
    if rule.keep_done and not rule.is_cloning:
        file_ids = [row["fileID"] for inputs in groups for row in inputs]
        done = await event_rows_db.done_ranges(conn, task_id, file_ids)
    await events_db.insert_ranges(
        conn,
        [
            event_row
            for jobset_id, inputs in zip(jobset_ids, groups, strict=True)
            for event_row in jobset_event_rows(task_id, jobset_id, inputs, rule, now, done)
        ],
    )
    for jobset_id, inputs in zip(jobset_ids, groups, strict=True):
        kept = [row["fileID"] for row in inputs if row["fileID"] in done]
        if kept:
            await event_rows_db.adopt_done_ranges(conn, task_id, jobset_id, kept, now)


# --- jumbo jobs ---------------------------------------------------------------------------------


def jumbo_wanted(task: Mapping[str, Any]) -> int:
    """How many jumbo jobs the task asks for now: ``NJ`` when it is an event-service task whose
    ``useJumbo`` is ``W``, else 0."""
    if task["eventService"] != TASK_EVENT_SERVICE or task["useJumbo"] != _JUMBO_WAITING:
        return 0
    return _count(parse_split_rule(task["splitRule"]).get("NJ"), 0, MAX_JUMBO_JOBS)


async def make_jumbo_jobs(
    conn: AsyncConnection,
    clock: Clock,
    task: dict[str, Any],
    refined: RefinedTask,
    datasets: Sequence[dict[str, Any]],
    needs: TaskNeeds,
    queue_specs: Sequence[dict[str, Any]],
    rt_rows: Sequence[Mapping[str, Any]],
    max_jobs: int,
) -> int:
    """Make the task's jumbo jobs once it has ready ranges (see the module docstring).

    Returns:
        How many jumbo jobs were made; 0 leaves ``useJumbo`` ``W`` to try again next cycle.
    """
    wanted = min(jumbo_wanted(task), max_jobs)
    if wanted <= 0 or not await event_rows_db.has_ready_ranges(conn, task["jediTaskID"]):
        return 0
    rules = parse_split_rule(task["splitRule"])
    per_queue = _count(rules.get("MJ"), wanted)
    queues = [spec for spec in qualifying_queues(needs, queue_specs, rt_rows) if spec.get("useJumboJobs")]
    slots = [queue for queue in queues for _ in range(per_queue)][:wanted]
    if not slots:
        return 0
    task_id = task["jediTaskID"]
    now = clock.now()
    outputs = merge_jobs.run_job_outputs(datasets)
    logs, data_outputs = split_outputs(outputs)
    files = await event_rows_db.files_with_ready_ranges(conn, task_id, MAX_JUMBO_INPUT_NAMES)
    # The jumbo jobset writes no files of its own (merge jobs write those of the jobsets whose
    # ranges it processed): its data-output names only fill the template, one serial each.
    jobset_serials = {
        d["datasetID"]: await tasks_db.reserve_serials(conn, d["datasetID"], 1) for d in data_outputs
    }
    log_serials = {
        d["datasetID"]: await tasks_db.reserve_serials(conn, d["datasetID"], len(slots)) for d in logs
    }
    (jobset_id,) = await sequences.allocate(conn, sequences.PANDA_ID, 1)
    panda_ids = await sequences.allocate(conn, sequences.PANDA_ID, len(slots))
    named = planned_outputs(data_outputs, jobset_serials, 0, task_id)
    planned = [planned_outputs(logs, log_serials, index, task_id) for index in range(len(slots))]
    inputs = list(dict.fromkeys(row["lfn"] for row in files))
    rendered = []
    for panda_id, own in zip(panda_ids, planned, strict=True):
        streams: dict[str, list[str]] = {"IN": inputs}
        for dataset, _, lfn in (*named, *own):
            streams[merge_jobs.run_job_stream(dataset)] = [lfn]
        context = JobContext(
            streams=streams,
            serial=own[0][1] if own else None,
            source_url=refined.source_url,
            attempt_nr=1,
            task_id=task_id,
            jobset_id=jobset_id,
            panda_id=panda_id,
        )
        try:
            rendered.append(render(task["job_params_template"] or "", context))
        except InvalidInput:
            # Nothing is inserted; the consumers rendered the same template, so this is rare.
            return 0
    output_ids = await tasks_db.insert_outputs(
        conn,
        [
            planned_output_row(task_id, dataset, lfn, panda_id, now)
            for panda_id, own in zip(panda_ids, planned, strict=True)
            for dataset, _, lfn in own
        ],
    )
    job_rows, job_files = [], []
    for panda_id, queue, own, parameters in zip(panda_ids, slots, planned, rendered, strict=True):
        cores = job_core_count(needs, queue)
        memory = job_memory(needs, cores)
        row = task_job_row(
            task,
            queue,
            panda_id=panda_id,
            origin=panda_id,
            attempt=1,
            cores=cores,
            memory=memory,
            resource_type=resource_types.match_job(list(rt_rows), cores, memory),
            parameters=parameters,
            now=now,
        )
        row.update(
            eventService=JOB_JUMBO,
            jobsetID=jobset_id,
            destinationDBlock=logs[0]["datasetName"] if logs else None,
        )
        job_rows.append(row)
        produced = [(dataset, lfn, output_ids[panda_id, dataset["datasetID"]]) for dataset, _, lfn in own]
        job_files.extend(output_files(task_id, queue["name"], panda_id, 1, produced))
    await jobs_db.insert(conn, job_rows, job_files)
    await tasks_db.update(conn, task_id, useJumbo=_JUMBO_RUNNING)
    return len(job_rows)
