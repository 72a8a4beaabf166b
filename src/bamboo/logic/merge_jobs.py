"""Merge jobs of tasks with ``mergeOutput`` (domain.md §4.8).

A merging task's run jobs write their outputs and logs unmerged, as ``panda.um.<name>`` files in
the twin datasets the refiner made (types ``trn_output`` / ``trn_log``, streams ``TRN_<stream>``).
A run job that succeeds waits in ``merging``; its unmerged files become ``ready`` merge inputs with
three attempts (the finaliser does that). :func:`make` then groups them into merge jobs:

* a pre-merge job's files are never split (the job is the boundary), and a merge job reads
  files of one site only, where it runs, since the unmerged files are there;
* groups follow nFilesPerMergeJob, else nGBPerMergeJob, within nMaxFilesPerMergeJob (50) and 5 GB;
  an incomplete group waits while run jobs may still add files to it;
* a merge job (processingType ``pmerge``, priority 5000, mergeRamCount or 2000 MB) runs
  ``mergeSpec.transPath`` with ``mergeSpec.jobParameters``, where ``${TRN_OUTPUT:OUTPUT}`` lists
  the files it merges into each merged output, and writes the merged files into the task's real
  output and log datasets.

When the merge job finishes, its pre-merge jobs finish with it; when it fails, its files get
another merge job until their attempts are used up, and then they are ``notmerged`` and their
pre-merge jobs fail with taskBufferErrorCode 113 (the finaliser does that too).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import jobs as jobs_db
from bamboo.db import merges as merges_db
from bamboo.db import sequences
from bamboo.db import tasks as tasks_db
from bamboo.logic import build_jobs, resource_types
from bamboo.logic.clock import Clock
from bamboo.logic.job_rows import output_files, planned_output_row, planned_outputs, task_job_row
from bamboo.logic.jobparams import JobContext, render, unmerged_source
from bamboo.logic.splitting import Row, SplitRule, group_rows
from bamboo.logic.taskparams import TRANSIENT_PREFIX, MergeSpec, RefinedTask

log = logging.getLogger(__name__)

PROCESSING_TYPE = "pmerge"
MERGE_PRIORITY = 5000
DEFAULT_MERGE_RAM_MB = 2000
#: Extra attempts an unmerged file gets as a merge input (domain.md §3.2).
MERGE_ATTEMPTS = 3
MERGE_FAILED_CODE = 113
MERGE_FAILED_DIAG = "merge job failed"
# Unmerged files read per cycle: enough for many merge jobs of 50 files and a few streams each.
ROWS_PER_CYCLE = 5000
TRANSIENT_TYPES = frozenset(merges_db.TRANSIENT_TYPES)
_MERGED_TYPES = ("output", "log")


def check_template(refined: RefinedTask, task_id: int) -> None:
    """Render the merge template once with stand-in file names (called by the refiner), so that a
    task whose merge jobs could never be made breaks at once instead of after its run jobs.

    Raises:
        InvalidInput: the template names a stream no merge job has.
    """
    if refined.merge is None:
        return
    streams = {plan.stream: [f"{plan.stream.lower()}.file"] for plan in refined.datasets[1:]}
    if refined.build is not None:
        streams[build_jobs.LIB_STREAM] = ["lib.tgz"]
    render(
        refined.merge.job_parameters,
        JobContext(streams=streams, serial=1, source_url=refined.source_url, task_id=task_id, panda_id=1),
    )


def run_job_outputs(datasets: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The datasets a task's run jobs write into: the unmerged twins of a merging task, else its
    outputs and logs."""
    twins = [d for d in datasets if d["type"] in TRANSIENT_TYPES]
    return twins or [d for d in datasets if d["type"] in _MERGED_TYPES]


def run_job_stream(dataset: dict[str, Any]) -> str:
    """The stream by which a run job's template names its file of ``dataset``: an unmerged twin
    stands in for its merged stream (``TRN_OUTPUT0`` fills ``${OUTPUT0}``)."""
    stream: str = dataset["streamName"]
    return stream.removeprefix(TRANSIENT_PREFIX) if dataset["type"] in TRANSIENT_TYPES else stream


async def make(
    conn: AsyncConnection,
    clock: Clock,
    task: dict[str, Any],
    params: Mapping[str, Any],
    spec: MergeSpec,
    datasets: Sequence[dict[str, Any]],
    queue_specs: Sequence[dict[str, Any]],
    rt_rows: list[dict[str, Any]],
    source_url: str | None,
    max_jobs: int,
    *,
    makes_run_jobs: bool,
) -> int:
    """Make the merge jobs the task's ready unmerged files allow. Returns how many.

    ``makes_run_jobs``: the task may still get run jobs (it is not finishing), so its unused input
    may still bring unmerged files.

    Raises:
        InvalidInput: ``mergeSpec.jobParameters`` cannot be rendered.
    """
    task_id = task["jediTaskID"]
    rows = await merges_db.ready_inputs(conn, task_id, ROWS_PER_CYCLE)
    if not rows or max_jobs <= 0:
        return 0
    groups = _groups(
        rows,
        SplitRule.for_merges(params),
        await merges_db.run_work_left(conn, task_id, with_unused=makes_run_jobs),
    )[:max_jobs]
    if not groups:
        return 0
    by_id = {d["datasetID"]: d for d in datasets}
    twins = {d["streamName"]: d for d in datasets if d["type"] in TRANSIENT_TYPES}
    merged = [d for d in datasets if d["type"] in _MERGED_TYPES and unmerged_source(d["streamName"]) in twins]
    count = len(groups)
    first_serials = {
        d["datasetID"]: await tasks_db.reserve_serials(conn, d["datasetID"], count) for d in merged
    }
    panda_ids = await sequences.allocate(conn, sequences.PANDA_ID, count)
    lib = await build_jobs.built_lib(conn, datasets)
    queues = {queue["name"]: queue for queue in queue_specs}
    cores = task["mergeCoreCount"] or 1
    memory = task["mergeRamCount"] or DEFAULT_MERGE_RAM_MB
    resource_type = resource_types.match_job(rt_rows, cores, memory)
    now = clock.now()
    plans = []
    for index, (panda_id, (site, inputs)) in enumerate(zip(panda_ids, groups, strict=True)):
        planned = planned_outputs(merged, first_serials, index, task_id)
        attempt = 1 + max(row["attemptNr"] for row in inputs)
        streams: dict[str, list[str]] = {}
        for row in inputs:
            streams.setdefault(by_id[row["datasetID"]]["streamName"], []).append(row["lfn"])
        streams.update({dataset["streamName"]: [lfn] for dataset, _, lfn in planned})
        context = JobContext(
            streams=streams,
            serial=planned[0][1] if planned else None,
            source_url=source_url,
            attempt_nr=attempt,
            task_id=task_id,
            jobset_id=task["reqID"],
            panda_id=panda_id,
        )
        parameters = render(spec.job_parameters, build_jobs.with_lib(context, lib))
        plans.append((panda_id, site, inputs, planned, attempt, parameters))
    output_ids = await tasks_db.insert_outputs(
        conn,
        [
            planned_output_row(task_id, dataset, lfn, panda_id, now)
            for panda_id, _, _, planned, _, _ in plans
            for dataset, _, lfn in planned
        ],
    )
    await tasks_db.assign_files(
        conn,
        [(row["fileID"], panda_id) for panda_id, _, inputs, _, _, _ in plans for row in inputs],
        status="running",
        proc_status="queued",
        lastAttemptTime=now,
    )
    used: dict[int, int] = {}
    job_rows: list[dict[str, Any]] = []
    job_files: list[dict[str, Any]] = []
    for panda_id, site, inputs, planned, attempt, parameters in plans:
        for row in inputs:
            used[row["datasetID"]] = used.get(row["datasetID"], 0) + 1
        queue = queues.get(site) or {"name": site}
        job = task_job_row(
            task,
            queue,
            panda_id=panda_id,
            origin=panda_id,
            attempt=attempt,
            cores=cores,
            memory=memory,
            resource_type=resource_type,
            parameters=parameters,
            now=now,
        )
        first_output = next((d for d, _, _ in planned if d["type"] == "output"), None)
        job.update(
            transformation=spec.trans_path or task["transPath"],
            processingType=PROCESSING_TYPE,
            assignedPriority=MERGE_PRIORITY,
            currentPriority=MERGE_PRIORITY,
            prodDBlock=by_id[inputs[0]["datasetID"]]["datasetName"],
            destinationDBlock=first_output["datasetName"] if first_output else None,
            nInputFiles=len(inputs),
            nInputDataFiles=len(inputs),
            inputFileBytes=sum(row["fsize"] or 0 for row in inputs),
        )
        job_rows.append(job)
        job_files.extend(_input_files(panda_id, inputs, by_id))
        job_files.extend(build_jobs.lib_files(task_id, panda_id, lib))
        produced = [(dataset, lfn, output_ids[panda_id, dataset["datasetID"]]) for dataset, _, lfn in planned]
        job_files.extend(output_files(task_id, site, panda_id, attempt, produced))
    await jobs_db.insert(conn, job_rows, job_files)
    for dataset_id, n_used in used.items():
        await tasks_db.bump_dataset(conn, dataset_id, now, nFilesUsed=n_used)
    log.info("task %s: %d merge jobs activated", task_id, count)
    return count


def _groups(
    rows: Sequence[dict[str, Any]], rule: SplitRule, more_to_come: bool
) -> list[tuple[str, list[dict[str, Any]]]]:
    """The unmerged files grouped into merge jobs: (site, rows), each pre-merge job's files in one
    group; while ``more_to_come``, a site's last group waits unless it is full."""
    boundaries: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        boundaries.setdefault(row["outPandaID"], []).append(row)
    by_site: dict[str, list[Row]] = {}
    for producer, files in boundaries.items():
        size = sum(f["fsize"] or 0 for f in files if f["type"] == "trn_output")
        by_site.setdefault(files[0]["computingSite"], []).append(Row(key=producer, size=size, n_events=None))
    full = rule.n_files_per_job or rule.n_max_files_per_job
    groups = []
    for site, units in by_site.items():
        site_groups = group_rows(units, rule)
        if more_to_come and site_groups and len(site_groups[-1]) < full:
            site_groups.pop()
        groups.extend((site, [f for unit in group for f in boundaries[unit.key]]) for group in site_groups)
    return groups


def _input_files(
    panda_id: int, inputs: Sequence[dict[str, Any]], datasets: Mapping[int, dict[str, Any]]
) -> list[dict[str, Any]]:
    """The unmerged files as inputs of the merge job; they are at its site already."""
    files = []
    for row in inputs:
        name = datasets[row["datasetID"]]["datasetName"]
        files.append(
            {
                "PandaID": panda_id,
                "GUID": row["GUID"],
                "lfn": row["lfn"],
                "type": "input",
                "dataset": name,
                "status": "ready",
                "prodDBlock": name,
                "prodDBlockToken": "local",
                "fsize": row["fsize"],
                "checksum": row["checksum"],
                "scope": row["scope"],
                "jediTaskID": row["jediTaskID"],
                "datasetID": row["datasetID"],
                "fileID": row["fileID"],
                "attemptNr": row["attemptNr"],
            }
        )
    return files
