"""The finaliser agent: jobs a pilot reported finished or failed -> their final status.

A finished job's outputs are checked against the pilot's output report and registered in the data
catalog before the job becomes ``finished``; a report that lacks an output's size or checksum fails
the job (ddmErrorCode 200), as upstream. Then the result goes back to the task's file rows
(domain.md §3.3): inputs of a finished job are done; inputs of a failed job return to ``ready``
with one more attempt, and a row out of attempts counts as failed.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import es_jobs
from bamboo.db import jobs as jobs_db
from bamboo.db import merges as merges_db
from bamboo.db import tasks as tasks_db
from bamboo.db.schema import jobs as jobs_table
from bamboo.logic import es_lifecycle, merge_jobs, retry_rules
from bamboo.logic.catalog import CatalogFile, DataManagement
from bamboo.logic.clock import Clock
from bamboo.logic.merge_jobs import TRANSIENT_TYPES

log = logging.getLogger(__name__)

BATCH = 200
DDM_OUTPUT_ERROR = 200
_DDM_OUTPUT_DIAG = "Could not get GUID/LFN/MD5/FSIZE/SURL"


class OutputProblem(Exception):
    """The pilot's output report cannot be used; the job fails with the message."""


def parse_output_report(text: str | None) -> dict[str, dict[str, Any]] | None:
    """The pilot's ``job_output_report`` as ``{lfn: {guid, fsize, adler32|md5sum, ...}}``.

    Returns None when the pilot sent none (outputs are then registered with what the server
    knows); raises OutputProblem when it is malformed.
    """
    if not text:
        return None
    try:
        decoded = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise OutputProblem(f"job_output_report is not valid JSON: {exc}") from exc
    if not isinstance(decoded, dict) or not all(isinstance(v, dict) for v in decoded.values()):
        raise OutputProblem("job_output_report must map each output file name to its attributes")
    return decoded


def _checksum(entry: dict[str, Any]) -> str | None:
    if entry.get("adler32"):
        return f"ad:{entry['adler32']}"
    if entry.get("md5sum"):
        return f"md5:{entry['md5sum']}"
    return None


def output_metadata(
    outputs: list[dict[str, Any]], report: dict[str, dict[str, Any]] | None
) -> dict[int, dict[str, Any]]:
    """GUID, size and checksum of every output file (by job-file row id) from the report."""
    metadata: dict[int, dict[str, Any]] = {}
    for output in outputs:
        entry = report.get(output["lfn"]) if report is not None else None
        if report is not None:
            if entry is None:
                raise OutputProblem(f"{_DDM_OUTPUT_DIAG}: {output['lfn']} missing from the output report")
            if entry.get("fsize") in (None, "") or _checksum(entry) is None:
                raise OutputProblem(f"{_DDM_OUTPUT_DIAG}: {output['lfn']}")
            try:
                size = int(entry["fsize"])
            except (TypeError, ValueError) as exc:
                raise OutputProblem(f"{_DDM_OUTPUT_DIAG}: bad fsize for {output['lfn']}") from exc
            metadata[output["row_ID"]] = {
                "GUID": str(entry.get("guid") or output["GUID"])[:64],
                "fsize": size,
                "checksum": _checksum(entry),
            }
        else:
            metadata[output["row_ID"]] = {
                "GUID": output["GUID"],
                "fsize": output["fsize"],
                "checksum": output["checksum"],
            }
    return metadata


async def finalise(conn: AsyncConnection, clock: Clock, dm: DataManagement) -> int:
    """Finalise a batch of jobs waiting in holding with a final pilot report. Returns how many.

    The batch is claimed with its rows locked (rows other finalisers hold are skipped on
    PostgreSQL), each job's outcome is decided on what was read, and the whole batch is written
    in a few statements per kind of row, in the caller's one transaction: killed anywhere, nothing
    is written and the jobs are still in holding for the next run, so no counter counts twice.
    """
    waiting = await jobs_db.with_status(
        conn, "holding", BATCH, condition=jobs_table.c.reported_status.isnot(None)
    )
    if not waiting:
        return 0
    panda_ids = [job["PandaID"] for job in waiting]
    files = await jobs_db.files_of(conn, panda_ids)
    rows_by_job: dict[int, list[dict[str, Any]]] = {panda_id: [] for panda_id in panda_ids}
    for row in await tasks_db.rows_of_jobs(conn, panda_ids):
        for panda_id in {row["PandaID"], row["outPandaID"]}:
            if panda_id in rows_by_job:
                rows_by_job[panda_id].append(row)
    now = clock.now()
    batch = _BatchWrites(now)
    # Event-service consumers end by their ranges (logic/es_lifecycle.py): read only when the
    # batch has any, so the batch of normal jobs costs no extra statement.
    consumers = [job["PandaID"] for job in waiting if es_lifecycle.is_consumer(job)]
    ranges_done = await es_jobs.finished_counts(conn, consumers) if consumers else {}
    clones = [job for job in waiting if job["eventService"] == es_jobs.CLONE]
    if clones:
        batch.clones = await es_lifecycle.CloneEnds.load(conn, clones)
    for job in waiting:
        await _finalise_job(
            conn, batch, job, files[job["PandaID"]], rows_by_job[job["PandaID"]], now, ranges_done
        )
    await batch.write(conn, clock, dm, now)
    return len(waiting)


class _BatchWrites:
    """What a batch of jobs changes, gathered job by job and written kind by kind.

    A job's decision reads only what the batch read at its start, never another job's writes, so
    gathering them changes nothing but the number of statements.
    """

    def __init__(self, now: datetime) -> None:
        self.es = es_lifecycle.JobsetSettler(now)
        self.clones: es_lifecycle.CloneEnds | None = None
        self.jobs: list[tuple[int, dict[str, Any]]] = []
        self.merge_ends: list[tuple[dict[str, Any], list[dict[str, Any]], bool]] = []
        self.failed_outputs_of: list[int] = []
        self.job_files: dict[int, dict[str, Any]] = {}
        self.registrations: dict[str, list[CatalogFile]] = {}
        self.file_rows: dict[int, dict[str, Any]] = {}
        self.counters: dict[int, Counter[str]] = {}

    def count(self, dataset_id: int, **deltas: int) -> None:
        self.counters.setdefault(dataset_id, Counter()).update(deltas)

    def file_row(self, file_id: int, **values: Any) -> None:
        self.file_rows.setdefault(file_id, {}).update(values)

    async def write(self, conn: AsyncConnection, clock: Clock, dm: DataManagement, now: datetime) -> None:
        await jobs_db.update_files_each(conn, self.job_files.items())
        await jobs_db.update_files_of_jobs(conn, self.failed_outputs_of, ["output", "log"], status="failed")
        for dataset in sorted(self.registrations):
            await dm.register_files(conn, clock, dataset, self.registrations[dataset])
        await jobs_db.update_jobs_each(conn, self.jobs)
        if self.clones is not None:
            await self.clones.stop_siblings(conn, now)
        await tasks_db.update_files_each(conn, self.file_rows.items())
        for job, rows, succeeded in self.merge_ends:
            await _end_pre_merge_jobs(conn, job, rows, succeeded, now)
        if self.es:
            # Event-service jobsets: their rows are locked and decided first, then every dataset
            # row the batch writes is locked in datasetID order before serials are reserved.
            await self.es.decide(conn)
            await es_jobs.lock_datasets(conn, sorted(await self.es.dataset_ids(conn) | set(self.counters)))
            for dataset_id, deltas in (await self.es.build(conn)).counters.items():
                self.count(dataset_id, **deltas)
        # Last, and in datasetID order: the dataset rows are the ones the generator (and other
        # finalisers) update too. Every agent that changes several of them in one transaction takes
        # them in ascending datasetID order (the generator locks its tasks' datasets that way
        # first, logic/generator.py), so no two transactions can each hold a row the other waits
        # for; taken last, they are held only for the end of the batch.
        for dataset_id in sorted(self.counters):
            await tasks_db.bump_dataset(conn, dataset_id, now, **dict(self.counters[dataset_id]))


async def _finalise_job(
    conn: AsyncConnection,
    batch: _BatchWrites,
    job: dict[str, Any],
    files: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    now: datetime,
    ranges_done: dict[int, int],
) -> None:
    """Decide one job's final status and add what it changes to the batch."""
    clone = batch.clones.roles.get(job["PandaID"]) if batch.clones is not None else None
    if clone is not None and clone.lost:
        # Another clone of the job already finished: this one's outputs are never kept.
        batch.jobs.append((job["PandaID"], {**es_lifecycle.clone_closed(now), "reported_status": None}))
        for output in (f for f in files if f["type"] in ("output", "log")):
            batch.job_files[output["row_ID"]] = {"status": "cancelled"}
        for produced in (r for r in rows if r["outPandaID"] == job["PandaID"]):
            batch.file_row(produced["fileID"], status="cancelled")
        log.info("clone %s closed: another clone finished first", job["PandaID"])
        return
    consumer = es_lifecycle.is_consumer(job)
    outputs = [f for f in files if f["type"] in ("output", "log")]
    succeeded = job["reported_status"] == "finished"
    error: dict[str, Any] = {}
    metadata: dict[int, dict[str, Any]] = {}
    if succeeded:
        try:
            metadata = output_metadata(outputs, parse_output_report(job["output_report"]))
        except OutputProblem as exc:
            succeeded = False
            error = {"ddmErrorCode": DDM_OUTPUT_ERROR, "ddmErrorDiag": str(exc)[:500]}
    # A run job of a merging task waits for the merge of what it wrote (logic/merge_jobs.py).
    writes_unmerged = any(r["outPandaID"] == job["PandaID"] and r["type"] in TRANSIENT_TYPES for r in rows)
    final = ("merging" if writes_unmerged else "finished") if succeeded else "failed"
    if consumer:
        final, outcome = es_lifecycle.consumer_status(
            "finished" if succeeded else "failed", ranges_done.get(job["PandaID"], 0)
        )
        error.update(outcome)
    if succeeded:
        _register_outputs(batch, outputs, metadata)
    else:
        batch.failed_outputs_of.append(job["PandaID"])
    batch.jobs.append(
        (
            job["PandaID"],
            {
                "jobStatus": final,
                "modificationTime": now,
                "stateChangeTime": now,
                "reported_status": None,
                **error,
            },
        )
    )
    inputs = [r for r in rows if r["PandaID"] == job["PandaID"] and r["status"] == "running"]
    produced = [r for r in rows if r["outPandaID"] == job["PandaID"]]
    if clone is not None:
        # A clone's inputs and data outputs are its jobset's (PandaID / outPandaID = jobsetID):
        # the winner (or the last clone failing) ends them, and takes the outputs over.
        inputs = clone.inputs
        produced += clone.outputs
        for row in clone.outputs:
            batch.file_row(row["fileID"], outPandaID=job["PandaID"])
    if consumer:
        batch.es.consumer_ended({**job, "jobStatus": final, **error})
    if job["eventService"] == es_jobs.MERGE:
        batch.es.merge_ended(job, rows, succeeded)
        if not succeeded:
            # Its inputs stay with the jobset: another merge attempt or the jobset's failure.
            inputs = []
    if succeeded:
        _propagate_success(batch, inputs, produced, outputs, metadata)
    else:
        # The retry rules may take attempts away (maxAttempt, set on the rows in place, which the
        # merge-job ending reads too) or change the task's next jobs.
        await retry_rules.after_failure(conn, {**job, **error}, inputs)
        _propagate_failure(batch, inputs, produced)
    if job["processingType"] == merge_jobs.PROCESSING_TYPE:
        batch.merge_ends.append((job, rows, succeeded))
    log.info("job %s %s", job["PandaID"], final)


async def _end_pre_merge_jobs(
    conn: AsyncConnection, job: dict[str, Any], rows: list[dict[str, Any]], succeeded: bool, now: datetime
) -> None:
    """A merge job's pre-merge jobs take over its success, or its failure once their unmerged
    files have no merge attempt left (domain.md §4.8)."""
    merged = [
        r
        for r in rows
        if r["PandaID"] == job["PandaID"] and r["status"] == "running" and r["type"] in TRANSIENT_TYPES
    ]
    if succeeded:
        producers = {r["outPandaID"] for r in merged}
        await merges_db.end_merging(
            conn, sorted(producers), jobStatus="finished", modificationTime=now, stateChangeTime=now
        )
        return
    exhausted = {
        r["outPandaID"] for r in merged if not _may_retry(r["attemptNr"] + 1, r["failedAttempt"] + 1, r)
    }
    await merges_db.end_merging(
        conn,
        sorted(exhausted),
        jobStatus="failed",
        modificationTime=now,
        stateChangeTime=now,
        taskBufferErrorCode=merge_jobs.MERGE_FAILED_CODE,
        taskBufferErrorDiag=merge_jobs.MERGE_FAILED_DIAG,
        jobSubStatus="merge_failed",
    )


def _may_retry(attempts: int, failures: int, row: dict[str, Any]) -> bool:
    return (row["maxAttempt"] is None or attempts < row["maxAttempt"]) and (
        row["maxFailure"] is None or failures < row["maxFailure"]
    )


def _register_outputs(
    batch: _BatchWrites, outputs: list[dict[str, Any]], metadata: dict[int, dict[str, Any]]
) -> None:
    for output in outputs:
        meta = metadata[output["row_ID"]]
        batch.job_files[output["row_ID"]] = {"status": "ready", **meta}
        batch.registrations.setdefault(output["destinationDBlock"], []).append(
            CatalogFile(
                lfn=output["lfn"],
                scope=output["scope"],
                guid=meta["GUID"],
                fsize=meta["fsize"],
                checksum=meta["checksum"],
            )
        )


def _propagate_success(
    batch: _BatchWrites,
    inputs: list[dict[str, Any]],
    produced: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    metadata: dict[int, dict[str, Any]],
) -> None:
    """Carry a finished job's result to the task's file rows and dataset counters (domain.md §3.3)."""
    for row in inputs:
        batch.file_row(row["fileID"], status="finished", proc_status="finished")
        batch.count(row["datasetID"], nFilesFinished=1, nEventsUsed=row["nEvents"] or 0)
    meta_by_file = {f["fileID"]: metadata[f["row_ID"]] for f in outputs if f["row_ID"] in metadata}
    for row in produced:
        meta = meta_by_file.get(row["fileID"], {})
        described = {"GUID": meta.get("GUID"), "fsize": meta.get("fsize"), "checksum": meta.get("checksum")}
        if row["type"] in TRANSIENT_TYPES:
            # An unmerged file becomes an input of a merge job, with merge attempts of its own.
            batch.file_row(
                row["fileID"],
                status="ready",
                keepTrack=1,
                maxAttempt=row["attemptNr"] + merge_jobs.MERGE_ATTEMPTS,
                **described,
            )
            batch.count(row["datasetID"], nFiles=1, nFilesToBeUsed=1)
            continue
        batch.file_row(row["fileID"], status="finished", **described)
        batch.count(row["datasetID"], nFilesFinished=1, nFiles=1)


def _propagate_failure(
    batch: _BatchWrites, inputs: list[dict[str, Any]], produced: list[dict[str, Any]]
) -> None:
    """Carry a failed job's result to the task's file rows and dataset counters (domain.md §3.3)."""
    for row in inputs:
        attempts = row["attemptNr"] + 1
        failures = row["failedAttempt"] + 1
        retry = _may_retry(attempts, failures, row)
        # Master rows out of attempts stay ready (and count failed); unmerged files are notmerged.
        exhausted = "notmerged" if row["type"] in TRANSIENT_TYPES else "ready"
        batch.file_row(
            row["fileID"],
            status="ready" if retry else exhausted,
            attemptNr=attempts,
            failedAttempt=failures,
            proc_status="failed",
        )
        if retry:
            batch.count(row["datasetID"], nFilesUsed=-1)
        else:
            batch.count(row["datasetID"], nFilesFailed=1)
    for row in produced:
        batch.file_row(row["fileID"], status="failed")
        if row["type"] not in TRANSIENT_TYPES:
            # An unmerged file that was never written is no merge input: nothing to count.
            batch.count(row["datasetID"], nFilesFailed=1, nFiles=1)
