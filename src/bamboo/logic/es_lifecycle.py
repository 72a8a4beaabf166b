"""Event-service jobs after dispatch: what becomes of a jobset when its consumers end
(domain.md §7.4, §7.5).

A jobset is the unit: its consumers (job eventService 1, and jumbo jobs, 4) share its ranges
(``events`` rows) and its input file rows (task_files with ``PandaID = jobsetID``, running). When
consumers end (reported by the pilot, failed by the watchdog through the finaliser, or killed),
:class:`JobsetSettler` first ends their ranges (``finished`` -> ``done``; ranges they still held ->
``ready`` with one attempt less, hopeless at 0: ``failed``, or ``fatal`` when the task accepts
partial results, splitRule ``AP``; with decAttOnFailedES, ``XF``, only ``failed`` ranges lose an
attempt; a failed range with partial progress, ``processed_upto_eventID``, is split into its done
part and a new ready row), then decides each jobset touched, exactly once:

* every range ``done`` (or, with AP, every range done or hopeless and at least one done): ONE ES
  merge job (eventService 2) at the last consumer's queue, priority 5000, attemptNr 1 and
  maxAttempt = the last consumer's attemptNr; its inputs are the jobset's input files (their rows
  pass to it: ``PandaID := merge``) and the consumers' zip files; it takes over the data-output
  rows the jobset holds (``outPandaID = jobsetID``, logic/es_generation.py) and has a log of its
  own. It runs ``esmergeSpec`` (transPath, jobParameters) rendered like any template, with
  ``IN`` (and the master dataset's stream) naming the inputs; a task without ``esmergeSpec``
  runs its own transformation and template over the jobset's inputs instead, so the outputs are
  still made. The merge job gets jobSubStatus ``partial`` when hopeless ranges were left out;
* ranges ``ready`` remain and no consumer (nor a jumbo job of the task) is alive: a new consumer,
  a copy of the last one with a new PandaID, attemptNr + 1 and priority + 1 (its log gets a new
  serial number), unless the jobset already had maxAttemptEsJob generations of consumers
  (splitRule ``XJ``, default 3; counted from its first consumers' attemptNr, which for a retried
  file is above 1): then the jobset fails;
* a finishing task (finish command): no new consumer; once no consumer is alive, a jobset with
  done ranges gets its merge job (``partial``) over the input files that have a done range, its
  other files go back to the task untouched and its ready ranges are ``cancelled``; one with
  nothing done gives its inputs back. A hard finish (``merge_when_finishing`` false: it kills
  merge jobs too) makes no merge job;
* no range left to process and not all done: the jobset fails.

A failed jobset's input rows go back to the task as a failed job's inputs do (one more attempt
and failure; ready to retry while attempts remain, else counted failed), the data-output rows it
held fail as a failed job's outputs, and its leftover ranges
end (``ready`` -> ``cancelled``, ``done`` -> ``discarded``, or kept ``done`` with
notDiscardEvents, ``ND``, for the jobset that retries the file to adopt). When a whole jobset is killed (its
task killed), its input rows return ``ready`` with their attempts unchanged, as killed jobs'
inputs do, its data-output rows and unprocessed ranges are ``cancelled``. A task no longer
making jobs (finishing, aborting) gets no new consumer either: the jobset's rows go back so.

The jobset's input rows are locked (ascending jobsetID, then fileID) before its ranges are read,
so two finalisers ending consumers of one jobset decide it one after the other; the one that
sees the jobset's rows already handed on (to a merge job, or failed) does nothing. Dataset rows
are locked last, all together in datasetID order, before any serial number is reserved or
counter changed (the order of logic/finaliser.py and logic/generator.py).

An ES merge job that finishes takes the normal success path (its job files name the input
fileIDs and the planned outputs); its jobset's ``done`` ranges become ``merged``. One that fails is
made again (attemptNr + 1) while attemptNr < maxAttempt, and otherwise fails the jobset.

taskBufferErrorCode of ES consumers (upstream's numbering): 111 a new consumer took over the
jobset's leftover ranges, 112 the jobset's merge job was generated, 114 the consumer processed no
range (it ends ``closed``), 115 the jobset failed: maxAttemptEsJob reached, 116 the jobset failed:
no range left to process. A consumer that finished ranges ends ``finished`` (a pilot ``failed``
report keeps the job ``failed`` with the pilot's errors).
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import es_jobs, sequences
from bamboo.db import jobs as jobs_db
from bamboo.db import tasks as tasks_db
from bamboo.logic import es_generation
from bamboo.logic.errors import InvalidInput
from bamboo.logic.job_rows import output_files, planned_output_row, task_job_row
from bamboo.logic.jobparams import JobContext, output_file_name, render
from bamboo.logic.states import JOB_FINAL, TASK_MAKING_JOBS
from bamboo.logic.task_admin import parse_split_rule
from bamboo.logic.taskparams import refine

log = logging.getLogger(__name__)

MERGE_PRIORITY = 5000
TASK_FINISHING = "finishing"
DEFAULT_MAX_CONSUMER_ATTEMPTS = 3
RETRIED_BY_ES = 111
MERGE_GENERATED = 112
NO_EVENTS_PROCESSED = 114
MAX_ES_ATTEMPTS = 115
ALL_FAILED = 116
CLONE_LOST = 200
CLONE_LOST_DIAG = "another clone of the job is running"
_OUTCOME_DIAG = {
    RETRIED_BY_ES: "retried by event service",
    MERGE_GENERATED: "event service merge job generated",
    MAX_ES_ATTEMPTS: "maximum event service job attempts reached",
    ALL_FAILED: "no event range left to process",
}
_REAL_OUTPUTS = ("output", "log")
# Job columns a new consumer does not inherit from the one it replaces: what a run wrote.
_RUN_COLUMNS = (
    "schedulerID pilotID modificationHost startTime endTime cpuConsumptionTime cpuConsumptionUnit "
    "commandToPilot transExitCode pilotErrorCode pilotErrorDiag exeErrorCode exeErrorDiag supErrorCode "
    "supErrorDiag ddmErrorCode ddmErrorDiag brokerageErrorCode brokerageErrorDiag jobDispatcherErrorCode "
    "jobDispatcherErrorDiag taskBufferErrorCode taskBufferErrorDiag computingElement metadata pilotTiming "
    "batchID jobMetrics jobSubStatus actualCoreCount maxRSS maxVMEM maxSWAP maxPSS avgRSS avgVMEM avgSWAP "
    "avgPSS hs06sec totRCHAR totWCHAR totRBYTES totWBYTES rateRCHAR rateWCHAR rateRBYTES rateWBYTES "
    "memory_leak memory_leak_x2 gco2_regional gco2_global reported_status output_report pilot_log stdout "
    "meanCoreCount prodDBUpdateTime"
).split()


def _flag(task: Mapping[str, Any], tag: str) -> bool:
    return parse_split_rule(task.get("splitRule")).get(tag) not in (None, "", "0")


def accepts_partial(task: Mapping[str, Any]) -> bool:
    """The task's splitRule ``AP`` (acceptPartial): a jobset may merge without its hopeless ranges."""
    return _flag(task, "AP")


def failed_only(task: Mapping[str, Any]) -> bool:
    """splitRule ``XF`` (decAttOnFailedES): only failed ranges lose an attempt at a consumer's end."""
    return _flag(task, "XF")


def keeps_done(task: Mapping[str, Any]) -> bool:
    """splitRule ``ND`` (notDiscardEvents): done ranges are kept when their jobset fails."""
    return _flag(task, "ND")


def max_consumer_attempts(task: Mapping[str, Any]) -> int:
    """maxAttemptEsJob: splitRule ``XJ``, default 3."""
    value = parse_split_rule(task.get("splitRule")).get("XJ")
    try:
        return int(value) if value else DEFAULT_MAX_CONSUMER_ATTEMPTS
    except ValueError:
        return DEFAULT_MAX_CONSUMER_ATTEMPTS


def consumer_status(reported: str, n_done: int) -> tuple[str, dict[str, Any]]:
    """A consumer's final status from its report and how many ranges it finished."""
    if reported != "finished":
        return "failed", {}
    if n_done:
        return "finished", {}
    return "closed", {
        "taskBufferErrorCode": NO_EVENTS_PROCESSED,
        "taskBufferErrorDiag": "no events processed",
    }


@dataclass
class FileChanges:
    """Task file rows and dataset counters a settlement changes."""

    file_rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    counters: dict[int, Counter[str]] = field(default_factory=dict)

    def file_row(self, file_id: int, **values: Any) -> None:
        self.file_rows.setdefault(file_id, {}).update(values)

    def count(self, dataset_id: int, **deltas: int) -> None:
        self.counters.setdefault(dataset_id, Counter()).update(deltas)


def _may_retry(row: Mapping[str, Any], attempts: int, failures: int) -> bool:
    return (row["maxAttempt"] is None or attempts < row["maxAttempt"]) and (
        row["maxFailure"] is None or failures < row["maxFailure"]
    )


def fail_inputs(changes: FileChanges, rows: Iterable[dict[str, Any]]) -> None:
    """Input rows of a failed jobset go back to the task as a failed job's do (logic/finaliser.py):
    one more attempt and failure, ready again while attempts remain, else counted failed."""
    for row in rows:
        attempts, failures = row["attemptNr"] + 1, row["failedAttempt"] + 1
        retry = _may_retry(row, attempts, failures)
        changes.file_row(
            row["fileID"], status="ready", attemptNr=attempts, failedAttempt=failures, proc_status="failed"
        )
        if retry:
            changes.count(row["datasetID"], nFilesUsed=-1)
        else:
            changes.count(row["datasetID"], nFilesFailed=1)


def release_inputs(changes: FileChanges, rows: Iterable[dict[str, Any]]) -> None:
    """Input rows of a killed jobset: ready with attempts unchanged, as killed jobs' inputs."""
    for row in rows:
        changes.file_row(row["fileID"], status="ready", proc_status="cancelled")
        changes.count(row["datasetID"], nFilesUsed=-1)


def fail_outputs(changes: FileChanges, outputs: Iterable[dict[str, Any]]) -> None:
    """A failed jobset's held data outputs will never be written: failed, as a failed job's."""
    for row in outputs:
        changes.file_row(row["fileID"], status="failed")
        changes.count(row["datasetID"], nFilesFailed=1, nFiles=1)


def cancel_outputs(changes: FileChanges, outputs: Iterable[dict[str, Any]]) -> None:
    """A killed jobset's held data outputs: cancelled, as a killed job's planned outputs."""
    for row in outputs:
        changes.file_row(row["fileID"], status="cancelled")


@dataclass
class _Plan:
    """What part B makes for one jobset: a merge job or a new consumer, from ``inputs``."""

    kind: str  # "merge" or "consumer"
    task: dict[str, Any]
    jobset_id: int
    inputs: list[dict[str, Any]]
    template: dict[str, Any]  # the last consumer (or the failed merge job)
    consumers: list[int] = field(default_factory=list)
    held_outputs: list[dict[str, Any]] = field(default_factory=list)
    attempt: int = 1
    max_attempt: int = 1
    partial: bool = False
    datasets: list[dict[str, Any]] = field(default_factory=list)


class JobsetSettler:
    """Settles the jobsets of ended ES consumers and ES merge jobs in one transaction, in two
    parts around the dataset locks: :meth:`decide` (jobset rows and ranges), then the caller
    locks :meth:`dataset_ids` with its own in datasetID order, then :meth:`build`."""

    def __init__(self, now: datetime, *, merge_when_finishing: bool = True) -> None:
        self.now = now
        # A finishing task's jobsets merge what is done once their consumers have all ended; not
        # when the caller is a hard finish, which kills the merge jobs too.
        self.merge_when_finishing = merge_when_finishing
        self.consumers: list[dict[str, Any]] = []
        self.killed_jobsets: set[int] = set()
        self.merge_ends: list[tuple[dict[str, Any], list[dict[str, Any]], bool]] = []
        self.changes = FileChanges()
        self.job_updates: dict[int, dict[str, Any]] = {}
        self._plans: list[_Plan] = []
        # Jobsets whose leftover ranges end, and whether their done ranges are kept (ND).
        self._fail_jobsets: dict[int, bool] = {}
        self._cancel_left: list[int] = []
        self._done_files: dict[int, set[int]] = {}
        self._held_outputs: dict[int, list[dict[str, Any]]] = {}

    def __bool__(self) -> bool:
        return bool(self.consumers or self.merge_ends or self.changes.file_rows)

    def consumer_ended(self, job: dict[str, Any]) -> None:
        self.consumers.append(job)

    def merge_ended(self, job: dict[str, Any], rows: list[dict[str, Any]], succeeded: bool) -> None:
        self.merge_ends.append((job, rows, succeeded))

    async def decide(self, conn: AsyncConnection) -> None:
        """End the consumers' ranges and decide every jobset they touched (part A)."""
        consumer_ids = [job["PandaID"] for job in self.consumers]
        jobset_ids = {job["jobsetID"] for job in self.consumers if job["jobsetID"] is not None}
        jobset_ids |= await es_jobs.jobsets_held_by(conn, consumer_ids)
        held = await es_jobs.lock_jobset_rows(conn, sorted(jobset_ids))
        task_ids = {job["jediTaskID"] for job in self.consumers} | {
            j["jediTaskID"] for j, _, _ in self.merge_ends
        }
        tasks = {task["jediTaskID"]: task for task in await tasks_db.get_many(conn, sorted(task_ids))}
        by_release: dict[tuple[str, str, bool], list[int]] = {}
        for job in self.consumers:
            task = tasks[job["jediTaskID"]]
            release = "cancelled" if job["jobsetID"] in self.killed_jobsets else "ready"
            hopeless = "fatal" if accepts_partial(task) else "failed"
            by_release.setdefault((hopeless, release, failed_only(task)), []).append(job["PandaID"])
        for (hopeless, release, only), ids in sorted(by_release.items()):
            await es_jobs.end_consumer_ranges(
                conn, ids, self.now, hopeless=hopeless, release=release, failed_only=only
            )
        counts = await es_jobs.range_counts(conn, sorted(jobset_ids))
        self._held_outputs = await es_jobs.held_outputs(conn, sorted(jobset_ids))
        members: dict[int, list[dict[str, Any]]] = {}
        for job in await es_jobs.jobs_of_jobsets(conn, sorted(jobset_ids)):
            members.setdefault(job["jobsetID"], []).append(job)
        jumbo_alive = await es_jobs.live_jumbo_tasks(conn, sorted(task_ids))
        if any(task["status"] == TASK_FINISHING for task in tasks.values()):
            self._done_files = await es_jobs.files_with_done_ranges(conn, sorted(jobset_ids))
        for jobset_id in sorted(jobset_ids):
            rows = held[jobset_id]
            if not rows:
                continue  # already handed to its merge job, or failed, by someone else
            task = tasks[rows[0]["jediTaskID"]]
            await self._decide_jobset(
                task, jobset_id, rows, counts[jobset_id], members.get(jobset_id, []), jumbo_alive
            )
        for job, rows, succeeded in self.merge_ends:
            await self._merge_end(conn, tasks[job["jediTaskID"]], job, rows, succeeded)
        for jobset_id, keep in self._fail_jobsets.items():
            await es_jobs.set_jobset_ranges(
                conn, [jobset_id], ["ready", "sent", "running"], self.now, status="cancelled"
            )
            if not keep:
                await es_jobs.set_jobset_ranges(
                    conn, [jobset_id], ["done", "finished"], self.now, status="discarded"
                )
        # A finishing task's jobset merged without its unprocessed ranges: never handed out again.
        await es_jobs.set_jobset_ranges(conn, self._cancel_left, ["ready"], self.now, status="cancelled")

    async def _decide_jobset(
        self,
        task: dict[str, Any],
        jobset_id: int,
        rows: list[dict[str, Any]],
        counts: dict[str, int],
        members: list[dict[str, Any]],
        jumbo_alive: set[int],
    ) -> None:
        consumers = [job for job in members if job["eventService"] in es_jobs.CONSUMERS]
        if not consumers:
            return
        # A new consumer copies the last ordinary consumer (a jumbo job is no template for one).
        last = ([job for job in consumers if job["eventService"] == es_jobs.CONSUMER] or consumers)[-1]
        ended_here = [job for job in self.consumers if job["jobsetID"] == jobset_id]
        total = sum(counts.values())
        done, hopeless, ready = counts.get("done", 0), counts.get("hopeless", 0), counts.get("ready", 0)
        in_flight = sum(counts.get(status, 0) for status in ("sent", "running", "finished", "failed"))
        alive = (
            any(job["jobStatus"] not in JOB_FINAL for job in consumers) or task["jediTaskID"] in jumbo_alive
        )
        killed = jobset_id in self.killed_jobsets
        # A finishing task (finish command, soft) makes no new consumer but merges what is done.
        winding_up = task["status"] == TASK_FINISHING and self.merge_when_finishing
        if killed and not winding_up:
            # A killed jobset (its task was killed): the inputs go back as killed jobs' inputs do.
            if not alive:
                self._release(task, jobset_id, rows)
            return
        partial_ok = accepts_partial(task) and done > 0 and done + hopeless == total
        if total and (done == total or partial_ok):
            self._merge(task, jobset_id, rows, last, consumers, partial=hopeless > 0)
            self._outcome(ended_here, MERGE_GENERATED)
            return
        if in_flight or (ready and alive) or (winding_up and alive):
            return  # other consumers still work on the jobset
        touched = self._done_files.get(jobset_id, set())
        merged = [row for row in rows if row["fileID"] in touched]
        if winding_up and done and merged:
            # Whatever is left (ready, cancelled by a kill, hopeless) is never processed now. The
            # merge job takes the input files with a done range; the others go back to the task
            # untouched, as killed jobs' inputs (the finish then counts them as not processed).
            release_inputs(self.changes, [row for row in rows if row["fileID"] not in touched])
            self._merge(task, jobset_id, merged, last, consumers, partial=True)
            self._cancel_left.append(jobset_id)
            self._outcome(ended_here, MERGE_GENERATED)
            return
        making = task["status"] in TASK_MAKING_JOBS
        if killed or (not making and (ready or counts.get("cancelled", 0))):
            # The task is being finished or killed: no new consumer; the inputs go back.
            self._release(task, jobset_id, rows)
            return
        if ready:
            # Consumer generations of this jobset: its first consumers start at the attemptNr of
            # its input rows (a retried file's jobset starts higher), each new one adds 1.
            first = min(job["attemptNr"] or 1 for job in consumers if job["eventService"] == es_jobs.CONSUMER)
            if (last["attemptNr"] or 1) - first + 1 >= max_consumer_attempts(task):
                self._fail(task, jobset_id, rows, ended_here, MAX_ES_ATTEMPTS)
                return
            self._plans.append(
                _Plan("consumer", task, jobset_id, rows, last, attempt=(last["attemptNr"] or 1) + 1)
            )
            self._outcome(ended_here, RETRIED_BY_ES)
            return
        self._fail(task, jobset_id, rows, ended_here, ALL_FAILED)

    def _merge(
        self,
        task: dict[str, Any],
        jobset_id: int,
        rows: list[dict[str, Any]],
        last: dict[str, Any],
        consumers: list[dict[str, Any]],
        *,
        partial: bool,
    ) -> None:
        self._plans.append(
            _Plan(
                "merge",
                task,
                jobset_id,
                rows,
                last,
                consumers=[job["PandaID"] for job in consumers],
                held_outputs=self._held_outputs[jobset_id],
                attempt=1,
                max_attempt=max(1, last["attemptNr"] or 1),
                partial=partial,
            )
        )

    def _release(self, task: dict[str, Any], jobset_id: int, rows: list[dict[str, Any]]) -> None:
        release_inputs(self.changes, rows)
        cancel_outputs(self.changes, self._held_outputs[jobset_id])
        self._fail_jobsets[jobset_id] = keeps_done(task)

    def _outcome(self, ended: list[dict[str, Any]], code: int) -> None:
        """Record the jobset's outcome on the consumers that ended here without a code of their own."""
        for job in ended:
            if job.get("taskBufferErrorCode") is None and job["PandaID"] not in self.job_updates:
                self.job_updates[job["PandaID"]] = {
                    "taskBufferErrorCode": code,
                    "taskBufferErrorDiag": _OUTCOME_DIAG[code],
                }

    def _fail(
        self,
        task: dict[str, Any],
        jobset_id: int,
        rows: list[dict[str, Any]],
        ended: list[dict[str, Any]],
        code: int,
    ) -> None:
        fail_inputs(self.changes, rows)
        fail_outputs(self.changes, self._held_outputs[jobset_id])
        self._fail_jobsets[jobset_id] = keeps_done(task)
        self._outcome(ended, code)
        log.info("jobset %s failed (%s)", jobset_id, _OUTCOME_DIAG[code])

    async def _merge_end(
        self,
        conn: AsyncConnection,
        task: dict[str, Any],
        job: dict[str, Any],
        rows: list[dict[str, Any]],
        succeeded: bool,
    ) -> None:
        jobset_id = job["jobsetID"]
        if succeeded:
            await es_jobs.set_jobset_ranges(conn, [jobset_id], ["done"], self.now, status="merged")
            return
        inputs = [r for r in rows if r["PandaID"] == job["PandaID"] and r["status"] == "running"]
        if not inputs:
            return
        if job["attemptNr"] < (job["maxAttempt"] or 1):
            consumers = [
                z["PandaID"]
                for z in await es_jobs.jobs_of_jobsets(conn, [jobset_id])
                if z["eventService"] in es_jobs.CONSUMERS
            ]
            self._plans.append(
                _Plan(
                    "merge",
                    task,
                    jobset_id,
                    inputs,
                    job,
                    consumers=consumers,
                    attempt=job["attemptNr"] + 1,
                    max_attempt=job["maxAttempt"] or 1,
                    partial=job["jobSubStatus"] == "partial",
                )
            )
            return
        fail_inputs(self.changes, inputs)
        if not keeps_done(task):
            await es_jobs.set_jobset_ranges(conn, [jobset_id], ["done"], self.now, status="discarded")

    async def dataset_ids(self, conn: AsyncConnection) -> set[int]:
        """Every dataset row part B writes: the counters, and the outputs it reserves serials of."""
        needed = set(self.changes.counters)
        for task_id in sorted({plan.task["jediTaskID"] for plan in self._plans}):
            datasets = await tasks_db.datasets(conn, task_id)
            for plan in self._plans:
                if plan.task["jediTaskID"] == task_id:
                    plan.datasets = datasets
            needed |= {d["datasetID"] for d in datasets}
        return needed

    async def build(self, conn: AsyncConnection) -> FileChanges:
        """Make the merge jobs and new consumers decided, with the datasets locked (part B), write
        the jobs' outcome codes and the file rows; returns the changes whose counters the caller
        adds to its own (it bumps them all in datasetID order)."""
        made = []
        for plan in self._plans:
            try:
                if plan.kind == "merge":
                    made.append(await self._make_merge(conn, plan))
                else:
                    made.append(await self._make_consumer(conn, plan))
            except InvalidInput as exc:
                log.warning("jobset %s: no %s job: %s", plan.jobset_id, plan.kind, exc.message)
                fail_inputs(self.changes, plan.inputs)
                fail_outputs(self.changes, plan.held_outputs)
                ended = ["ready"] if keeps_done(plan.task) else ["ready", "done"]
                await es_jobs.set_jobset_ranges(conn, [plan.jobset_id], ended, self.now, status="cancelled")
        await jobs_db.update_jobs_each(conn, sorted(self.job_updates.items()))
        await tasks_db.update_files_each(conn, sorted(self.changes.file_rows.items()))
        if made:
            log.info("event service: %d jobs made: %s", len(made), ", ".join(map(str, made)))
        return self.changes

    async def _name_outputs(
        self, conn: AsyncConnection, task_id: int, datasets: Sequence[dict[str, Any]]
    ) -> list[tuple[dict[str, Any], int, str]]:
        """(dataset, serial, file name) of a new job's output in each dataset (serials reserved)."""
        planned = []
        for dataset in datasets:
            serial = await tasks_db.reserve_serials(conn, dataset["datasetID"], 1)
            lfn = output_file_name(dataset["filename_template"], serial, task_id=task_id)
            planned.append((dataset, serial, lfn))
        return planned

    async def _output_files(
        self,
        conn: AsyncConnection,
        task_id: int,
        panda_id: int,
        site: str,
        attempt: int,
        planned: Sequence[tuple[dict[str, Any], int, str]],
    ) -> list[dict[str, Any]]:
        """Insert the planned output rows of a new job; returns its output job files."""
        ids = await tasks_db.insert_outputs(
            conn,
            [planned_output_row(task_id, dataset, lfn, panda_id, self.now) for dataset, _, lfn in planned],
        )
        return output_files(
            task_id,
            site,
            panda_id,
            attempt,
            [(dataset, lfn, ids[panda_id, dataset["datasetID"]]) for dataset, _, lfn in planned],
        )

    async def _make_merge(self, conn: AsyncConnection, plan: _Plan) -> int:
        task = plan.task
        task_id = task["jediTaskID"]
        (panda_id,) = await sequences.allocate(conn, sequences.PANDA_ID, 1)
        template = plan.template
        site = template["computingSite"]
        outputs = [d for d in plan.datasets if d["type"] in _REAL_OUTPUTS]
        # The data outputs the jobset holds are taken over; the others (the log, or all of them for
        # a merge job made again) are new. Names first, rows after the template rendered: a
        # template that fails writes nothing.
        held = {row["datasetID"]: row for row in plan.held_outputs}
        planned = await self._name_outputs(conn, task_id, [d for d in outputs if d["datasetID"] not in held])
        taken = [(d, None, held[d["datasetID"]]["lfn"]) for d in outputs if d["datasetID"] in held]
        by_id = {d["datasetID"]: d for d in plan.datasets}
        # The zips of whoever processed the done ranges: the jobset's consumers, jumbo jobs, and
        # with notDiscardEvents the consumers of an earlier jobset whose done ranges it adopted.
        zips = await es_jobs.zip_files(
            conn, sorted(set(plan.consumers) | await es_jobs.done_holders(conn, plan.jobset_id))
        )
        refined = refine(orjson.loads(task["task_params"]))
        spec = refined.event_service.merge if refined.event_service is not None else None
        if spec is not None:
            text, transformation = spec.job_parameters, spec.trans_path or task["transPath"]
        else:
            text, transformation = refined.job_params_template, task["transPath"]
        streams: dict[str, list[str]] = {}
        input_lfns = list(dict.fromkeys(row["lfn"] for row in plan.inputs))
        streams["IN"] = input_lfns
        master = by_id.get(plan.inputs[0]["datasetID"])
        if master is not None and master.get("streamName"):
            streams[master["streamName"]] = input_lfns
        streams.update({d["streamName"]: [lfn] for d, _, lfn in [*taken, *planned] if d.get("streamName")})
        parameters = render(
            str(text),
            JobContext(
                streams=streams,
                serial=planned[0][1] if planned else None,
                attempt_nr=plan.attempt,
                task_id=task_id,
                jobset_id=plan.jobset_id,
                panda_id=panda_id,
            ),
        )
        queue = {"name": site, "cloud": template["cloud"], "maxtime": template["maxWalltime"]}
        job = task_job_row(
            task,
            queue,
            panda_id=panda_id,
            origin=panda_id,
            attempt=plan.attempt,
            cores=task["mergeCoreCount"] or template["coreCount"] or 1,
            memory=task["mergeRamCount"] or template["minRamCount"] or 0,
            resource_type=template["resource_type"],
            parameters=parameters,
            now=self.now,
        )
        first_output = next((d for d in outputs if d["type"] == "output"), None)
        job.update(
            transformation=transformation,
            eventService=es_jobs.MERGE,
            jobsetID=plan.jobset_id,
            maxAttempt=plan.max_attempt,
            assignedPriority=MERGE_PRIORITY,
            currentPriority=MERGE_PRIORITY,
            prodDBlock=master["datasetName"] if master else None,
            destinationDBlock=first_output["datasetName"] if first_output else None,
            nInputFiles=len(plan.inputs) + len(zips),
            nInputDataFiles=len(plan.inputs),
            inputFileBytes=sum(row["fsize"] or 0 for row in plan.inputs),
            jobSubStatus="partial" if plan.partial else None,
        )
        files = [_input_file(panda_id, row, by_id) for row in plan.inputs]
        files.extend(_zip_input(panda_id, z) for z in zips)
        made = await self._output_files(conn, task_id, panda_id, site, plan.attempt, planned)
        made += output_files(
            task_id,
            site,
            panda_id,
            plan.attempt,
            [(d, lfn, held[d["datasetID"]]["fileID"]) for d, _, lfn in taken],
        )
        order = {d["datasetID"]: index for index, d in enumerate(outputs)}
        files.extend(sorted(made, key=lambda f: order[f["datasetID"]]))
        await jobs_db.insert(conn, [job], files)
        await tasks_db.update_files(conn, [row["fileID"] for row in plan.held_outputs], outPandaID=panda_id)
        await tasks_db.assign_files(
            conn,
            [(row["fileID"], panda_id) for row in plan.inputs],
            status="running",
            proc_status="queued",
            lastAttemptTime=self.now,
        )
        log.info("jobset %s: ES merge job %s (attempt %d)", plan.jobset_id, panda_id, plan.attempt)
        return panda_id

    async def _make_consumer(self, conn: AsyncConnection, plan: _Plan) -> int:
        last = plan.template
        task_id = plan.task["jediTaskID"]
        (panda_id,) = await sequences.allocate(conn, sequences.PANDA_ID, 1)
        old_files = (await jobs_db.files_of(conn, [last["PandaID"]]))[last["PandaID"]]
        by_id = {d["datasetID"]: d for d in plan.datasets}
        renewed = [f for f in old_files if f["type"] in _REAL_OUTPUTS and f["datasetID"] in by_id]
        planned = await self._name_outputs(conn, task_id, [by_id[f["datasetID"]] for f in renewed])
        out_files = await self._output_files(
            conn, task_id, panda_id, last["computingSite"], plan.attempt, planned
        )
        parameters = last["jobParameters"] or ""
        for old, (_, _, lfn) in zip(renewed, planned, strict=True):
            parameters = parameters.replace(old["lfn"], lfn)
        job = {**last, **dict.fromkeys(_RUN_COLUMNS)}
        job.update(
            PandaID=panda_id,
            jobStatus="activated",
            creationTime=self.now,
            modificationTime=self.now,
            stateChangeTime=self.now,
            attemptNr=plan.attempt,
            maxAttempt=max(plan.attempt, last["maxAttempt"] or 0),
            currentPriority=(last["currentPriority"] or 0) + 1,
            jobParameters=parameters,
            nEvents=0,
        )
        kept = [
            {k: v for k, v in f.items() if k != "row_ID"} | {"PandaID": panda_id, "status": "ready"}
            for f in old_files
            if f not in renewed and f["type"] not in ("zipoutput", *_REAL_OUTPUTS)
        ]
        await jobs_db.insert(conn, [job], kept + out_files)
        log.info("jobset %s: new consumer %s (attempt %d)", plan.jobset_id, panda_id, plan.attempt)
        return panda_id


def _input_file(panda_id: int, row: dict[str, Any], datasets: Mapping[int, dict[str, Any]]) -> dict[str, Any]:
    name = datasets[row["datasetID"]]["datasetName"] if row["datasetID"] in datasets else None
    return {
        "PandaID": panda_id,
        "GUID": row["GUID"],
        "lfn": row["lfn"],
        "type": "input",
        "dataset": name,
        "status": "ready",
        "prodDBlock": name,
        "fsize": row["fsize"],
        "checksum": row["checksum"],
        "scope": row["scope"],
        "jediTaskID": row["jediTaskID"],
        "datasetID": row["datasetID"],
        "fileID": row["fileID"],
        "attemptNr": row["attemptNr"],
    }


def _zip_input(panda_id: int, zipped: dict[str, Any]) -> dict[str, Any]:
    """A consumer's zip of event outputs as an input of the merge job (no task file row)."""
    return {
        "PandaID": panda_id,
        "GUID": zipped["GUID"] or str(uuid.uuid4()),
        "lfn": zipped["lfn"],
        "type": "input",
        "dataset": zipped["dataset"],
        "status": "ready",
        "prodDBlock": zipped["dataset"],
        "fsize": zipped["fsize"],
        "checksum": zipped["checksum"],
        "scope": zipped["scope"],
        "jediTaskID": zipped["jediTaskID"],
        "attemptNr": zipped["attemptNr"],
    }


async def settle_alone(
    conn: AsyncConnection, settler: JobsetSettler, extra: FileChanges | None = None, *, now: datetime
) -> None:
    """Run a settlement outside the finaliser (kills): decide, lock the datasets in order, build,
    bump the counters in datasetID order."""
    await settler.decide(conn)
    changes = extra or FileChanges()
    await es_jobs.lock_datasets(conn, sorted(await settler.dataset_ids(conn) | set(changes.counters)))
    built = await settler.build(conn)
    for dataset_id, deltas in built.counters.items():
        changes.counters.setdefault(dataset_id, Counter()).update(deltas)
    for dataset_id in sorted(changes.counters):
        await tasks_db.bump_dataset(conn, dataset_id, now, **dict(changes.counters[dataset_id]))


async def killed(
    conn: AsyncConnection, panda_ids: Sequence[int], now: datetime, *, merge_when_finishing: bool = True
) -> JobsetSettler | None:
    """What killing these jobs does to event-service jobsets (api-v1.md §3.6, domain.md §7.4).

    A killed ES merge job's ``done`` ranges are ``discarded`` (kept ``done`` with notDiscardEvents;
    its inputs return to the task as any killed job's). Killed consumers end like consumers that
    failed; when their task no longer makes jobs (killed, finishing) the jobset is killed whole:
    its unprocessed ranges are ``cancelled`` and its input rows return to the task, except that a
    finishing task's jobset merges what is done once no consumer is left (not for a hard finish,
    ``merge_when_finishing`` false, which kills merge jobs too). Killed clones: see
    :func:`_killed_clones`. Returns the settlement to run, None when no event-service job was killed.
    """
    members = await es_jobs.es_members(conn, panda_ids)
    if not members:
        return None
    task_ids = sorted({job["jediTaskID"] for job in members})
    tasks = {task["jediTaskID"]: task for task in await tasks_db.get_many(conn, task_ids)}
    merges = sorted(
        {
            job["jobsetID"]
            for job in members
            if job["eventService"] == es_jobs.MERGE and not keeps_done(tasks[job["jediTaskID"]])
        }
    )
    await es_jobs.set_jobset_ranges(conn, merges, ["done"], now, status="discarded")
    settler = JobsetSettler(now, merge_when_finishing=merge_when_finishing)
    await _killed_clones(
        conn, settler, sorted({j["jobsetID"] for j in members if j["eventService"] == CLONE})
    )
    consumers = [job for job in members if job["eventService"] in es_jobs.CONSUMERS]
    for job in consumers:
        if tasks[job["jediTaskID"]]["status"] not in TASK_MAKING_JOBS:
            settler.killed_jobsets.add(job["jobsetID"])
        settler.consumer_ended(job)
    return settler


async def _killed_clones(conn: AsyncConnection, settler: JobsetSettler, jobset_ids: list[int]) -> None:
    """Clones share their jobset's input rows: once no clone of a jobset is left alive, the rows
    return to the task as killed jobs' inputs do, and the semaphore range is cancelled."""
    if not jobset_ids:
        return
    rows = await es_jobs.lock_jobset_rows(conn, jobset_ids)
    outputs = await es_jobs.held_outputs(conn, jobset_ids)
    siblings = await es_jobs.clone_siblings(conn, jobset_ids)
    alive = {s["jobsetID"] for s in siblings if s["jobStatus"] not in JOB_FINAL}
    gone = [jobset_id for jobset_id in jobset_ids if jobset_id not in alive and rows[jobset_id]]
    for jobset_id in gone:
        release_inputs(settler.changes, rows[jobset_id])
        cancel_outputs(settler.changes, outputs[jobset_id])
    await es_jobs.set_jobset_ranges(conn, gone, ["ready", "sent"], settler.now, status="cancelled")


def is_consumer(job: Mapping[str, Any]) -> bool:
    return job.get("eventService") in es_jobs.CONSUMERS


CLONE = es_jobs.CLONE
RUN_ONCE = "runonce"  # a clone's mode travels in its specialHandling (logic/es_generation.py)


def clone_closed(now: datetime) -> dict[str, Any]:
    return {
        "jobStatus": "closed",
        "taskBufferErrorCode": CLONE_LOST,
        "taskBufferErrorDiag": CLONE_LOST_DIAG,
        "modificationTime": now,
        "stateChangeTime": now,
        "endTime": now,
    }


async def run_once(
    conn: AsyncConnection, claimed: list[dict[str, Any]], now: datetime
) -> list[dict[str, Any]]:
    """runonce clones just claimed take their jobset's semaphore range (ready -> sent, one atomic
    UPDATE each): a clone that gets it runs and its siblings still activated are closed; one that
    does not is closed instead of handed out (taskBufferErrorCode 200). Returns the jobs to hand
    out, in the claim's order. storeonce clones all run (the finaliser keeps the first success).
    """
    lost: list[int] = []
    won: dict[int, int] = {}
    for job in claimed:
        if job["eventService"] != CLONE or es_generation.clone_mode(job) != RUN_ONCE:
            continue
        if await es_jobs.take_semaphore(conn, job["jobsetID"], job["PandaID"], now):
            won[job["jobsetID"]] = job["PandaID"]
        else:
            lost.append(job["PandaID"])
    siblings = [
        s["PandaID"]
        for s in await es_jobs.clone_siblings(conn, sorted(won))
        if s["PandaID"] not in won.values() and s["jobStatus"] == "activated"
    ]
    closed = await es_jobs.close_jobs(conn, lost, ["sent"], **clone_closed(now))
    closed += await es_jobs.close_jobs(conn, siblings, ["activated"], **clone_closed(now))
    await es_jobs.cancel_planned_outputs(conn, closed)
    if closed:
        log.info("runonce clones closed: %s", ", ".join(map(str, closed)))
    return [job for job in claimed if job["PandaID"] not in lost]


@dataclass(frozen=True, slots=True)
class CloneRole:
    """What a clone's end does to its jobset's rows: ``inputs`` and ``outputs`` (the data outputs
    the jobset holds) are the rows it ends, as the winner or as the last clone failing; ``lost``:
    another clone already won, so it is closed."""

    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    lost: bool


class CloneEnds:
    """The clones a finaliser batch ends, decided per jobset with its input rows locked: the first
    clone (lowest PandaID) reported finished while the rows are still open wins (storeonce: the
    first success is kept) and its siblings are stopped (activated ones closed, running ones told
    ``tobekilled``, both with code 200); later clones that finish are closed with code 200. With no
    winner, the rows fail with the first failed clone once no sibling is alive outside the batch."""

    def __init__(self, roles: dict[int, CloneRole], stop: list[int]) -> None:
        self.roles = roles
        self._stop = stop

    @classmethod
    async def load(cls, conn: AsyncConnection, batch: Sequence[dict[str, Any]]) -> CloneEnds:
        jobset_ids = sorted({job["jobsetID"] for job in batch})
        rows = await es_jobs.lock_jobset_rows(conn, jobset_ids)
        outputs = await es_jobs.held_outputs(conn, jobset_ids)
        siblings = await es_jobs.clone_siblings(conn, jobset_ids)
        in_batch = {job["PandaID"] for job in batch}
        roles: dict[int, CloneRole] = {}
        stop: list[int] = []
        for jobset_id in jobset_ids:
            mine = sorted(
                (job for job in batch if job["jobsetID"] == jobset_id), key=lambda job: job["PandaID"]
            )
            others = [s for s in siblings if s["jobsetID"] == jobset_id and s["PandaID"] not in in_batch]
            open_rows = rows[jobset_id]
            winner = (
                next((job for job in mine if job["reported_status"] == "finished"), None)
                if open_rows
                else None
            )
            if winner is not None:
                stop += [s["PandaID"] for s in others if s["jobStatus"] not in JOB_FINAL]
            alive = any(s["jobStatus"] not in JOB_FINAL for s in others)
            failer = None if winner is not None or alive or not open_rows else mine[0]
            for job in mine:
                if job is winner or job is failer:
                    roles[job["PandaID"]] = CloneRole(open_rows, outputs[jobset_id], lost=False)
                else:
                    roles[job["PandaID"]] = CloneRole([], [], lost=job["reported_status"] == "finished")
        return cls(roles, stop)

    async def stop_siblings(self, conn: AsyncConnection, now: datetime) -> None:
        """Close the winners' siblings not yet running; tell the running ones to stop."""
        closed = await es_jobs.close_jobs(conn, self._stop, ["activated", *_QUEUED], **clone_closed(now))
        await es_jobs.cancel_planned_outputs(conn, closed)
        running = [panda_id for panda_id in self._stop if panda_id not in closed]
        await es_jobs.close_jobs(
            conn,
            running,
            ["sent", "starting", "running", "transferring", "holding"],
            commandToPilot="tobekilled",
            taskBufferErrorCode=CLONE_LOST,
            taskBufferErrorDiag=CLONE_LOST_DIAG,
            modificationTime=now,
        )


_QUEUED = ("pending", "defined", "assigned", "waiting", "throttled")
