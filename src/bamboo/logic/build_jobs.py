"""Build jobs of user analysis tasks with a ``buildSpec`` (domain.md §4.7).

prun without ``--noBuild`` sends ``buildSpec`` {prodSourceLabel, archiveName, jobParameters,
transPath}: before its run jobs, the task needs one build job that turns the sandbox tarball
(``archiveName``) into a ``lib.tgz``, which every run job then reads through ``${LIB}``.

The refiner adds the task's ``lib`` dataset, named ``panda.<MMDDhhmmss>.<microseconds>.lib._<taskID
%06d>``. The generator asks :func:`prepare` before making run jobs:

* no lib file yet, or the last build failed with attempts left: it makes a build job
  (``specialHandling`` ``bj``) writing ``<libDS>.<fileID>.lib.tgz`` and its log
  ``<libDS>.<fileID>.log.tgz`` into the lib dataset, and no run jobs this cycle;
* the build job is still running: no run jobs;
* the lib file is finished: run jobs, each with the lib file as an extra input.

Upstream creates the run jobs at once and lets them wait in ``defined``/``assigned`` until the lib
dataset is closed; here they are only generated once the lib file exists, which pilots observe
the same way (no run job can be taken before its build finished) without a second activation
path. The finaliser's usual propagation marks the lib and log rows finished or failed, since their
``outPandaID`` is the build job.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import aux_rows, sequences
from bamboo.db import jobs as jobs_db
from bamboo.db import tasks as tasks_db
from bamboo.logic import resource_types, task_status
from bamboo.logic.catalog import scope_of
from bamboo.logic.clock import Clock
from bamboo.logic.job_rows import task_job_row
from bamboo.logic.jobparams import JobContext, render
from bamboo.logic.taskparams import BuildSpec

log = logging.getLogger(__name__)

LIB_TYPE = "lib"
LIB_STREAM = "LIB"
BUILD_MARK = "bj"
#: Memory of a build job (domain.md §4.7: 2000 MB per core, single core here).
BUILD_RAM_MB = 2000


def lib_dataset_name(task_id: int, now: datetime) -> str:
    """``panda.<MMDDhhmmss>.<microseconds>.lib._<taskID %06d>`` (domain.md §4.5)."""
    return f"panda.{now:%m%d%H%M%S}.{now.microsecond:06d}.lib._{task_id:06d}"


def _build_context(
    spec: BuildSpec,
    lib_lfn: str,
    task_id: int,
    source_url: str | None,
    attempt: int,
    jobset_id: int | None,
    panda_id: int,
) -> JobContext:
    # ${IN} is the sandbox tarball in the file cache, ${OUT} the lib file to write.
    return JobContext(
        streams={"IN": [spec.archive_name], "OUT": [lib_lfn]},
        task_id=task_id,
        source_url=source_url,
        attempt_nr=attempt,
        jobset_id=jobset_id,
        panda_id=panda_id,
    )


async def create_lib_dataset(conn: AsyncConnection, task: dict[str, Any], now: datetime) -> None:
    """Add the lib dataset of a task with a build spec (called by the refiner).

    Raises:
        InvalidInput: the build spec is malformed or its job parameters cannot be rendered, so the
            task breaks at refinement instead of waiting on a build job that can never be made.
    """
    params = orjson.loads(task["task_params"])
    spec = BuildSpec.from_params(params)
    if spec is None:
        return
    name = lib_dataset_name(task["jediTaskID"], now)
    render(
        spec.job_parameters,
        _build_context(spec, f"{name}.1.lib.tgz", task["jediTaskID"], params.get("sourceURL"), 1, None, 1),
    )
    await tasks_db.insert_dataset(
        conn,
        {
            "jediTaskID": task["jediTaskID"],
            "datasetName": name,
            "type": LIB_TYPE,
            "creationTime": now,
            "modificationTime": now,
            "vo": task["vo"],
            "status": "defined",
            "streamName": LIB_STREAM,
            "serial_nr": 1,
            **tasks_db.EMPTY_DATASET_COUNTERS,
        },
    )


@dataclass(frozen=True)
class BuildState:
    """What the generator may do for a task this cycle.

    ``ready``: run jobs may be made, with ``lib`` (the finished lib row) and ``dataset`` as their
    extra input when the task builds. ``jobs_made``: build jobs made instead.
    """

    ready: bool
    jobs_made: int = 0
    lib: dict[str, Any] | None = None
    dataset: dict[str, Any] | None = None


async def built_lib(conn: AsyncConnection, datasets: Sequence[dict[str, Any]]) -> BuildState:
    """The task's finished lib file for jobs made after its run jobs (merge jobs), if it has one."""
    dataset = next((d for d in datasets if d["type"] == LIB_TYPE), None)
    if dataset is None:
        return BuildState(ready=True)
    finished = [
        row
        for row in await aux_rows.rows_of_type(conn, dataset["datasetID"], LIB_TYPE)
        if row["status"] == "finished"
    ]
    return BuildState(ready=True, lib=finished[-1], dataset=dataset) if finished else BuildState(ready=True)


async def prepare(
    conn: AsyncConnection,
    clock: Clock,
    task: dict[str, Any],
    params: Mapping[str, Any],
    datasets: Sequence[dict[str, Any]],
    queue: dict[str, Any],
    rt_rows: list[dict[str, Any]],
    max_attempt: int,
    source_url: str | None,
) -> BuildState:
    """Decide whether the task's run jobs can be made, making its build job when one is needed.

    Args:
        conn: the generator's connection.
        clock: time source.
        task: the task row.
        params: its parameters.
        datasets: its datasets.
        queue: the queue brokerage chose.
        rt_rows: resource types, for the build job's.
        max_attempt: builds tried before the task waits (the task's maxAttempt).
        source_url: the task's sourceURL, for ``${SURL}``.
    """
    spec = BuildSpec.from_params(params)
    dataset = next((d for d in datasets if d["type"] == LIB_TYPE), None)
    if spec is None or dataset is None:
        return BuildState(ready=True)
    libs = await aux_rows.rows_of_type(conn, dataset["datasetID"], LIB_TYPE)
    last = libs[-1] if libs else None
    if last is not None and last["status"] == "finished":
        return BuildState(ready=True, lib=last, dataset=dataset)
    if last is not None and last["status"] != "failed":
        return BuildState(ready=False)
    if len(libs) >= max_attempt:
        dialog = f"build job failed {len(libs)} times; see the logs in {dataset['datasetName']}"
        if not (task["status"] == "pending" and task["errorDialog"] == dialog):
            await task_status.change(
                conn,
                clock,
                task,
                "pending",
                oldStatus=task["oldStatus"] if task["status"] == "pending" else task["status"],
                errorDialog=dialog,
            )
        return BuildState(ready=False)
    await _make_build_job(conn, clock, task, spec, dataset, queue, rt_rows, len(libs) + 1, source_url)
    return BuildState(ready=False, jobs_made=1)


async def _make_build_job(
    conn: AsyncConnection,
    clock: Clock,
    task: dict[str, Any],
    spec: BuildSpec,
    dataset: dict[str, Any],
    queue: dict[str, Any],
    rt_rows: list[dict[str, Any]],
    attempt: int,
    source_url: str | None,
) -> None:
    now = clock.now()
    task_id = task["jediTaskID"]
    (panda_id,) = await sequences.allocate(conn, sequences.PANDA_ID, 1)
    name = dataset["datasetName"]
    scope = scope_of(name)
    base = {
        "jediTaskID": task_id,
        "datasetID": dataset["datasetID"],
        "creationDate": now,
        "status": "running",
        "scope": scope,
        "attemptNr": 0,
        "failedAttempt": 0,
        "keepTrack": 1,
        "outPandaID": panda_id,
    }
    # The file names carry the lib row's fileID, known only once the row exists.
    lib_id, log_id = await tasks_db.insert_files(
        conn,
        [
            {**base, "type": LIB_TYPE, "lfn": f"{name}.pending.lib.tgz"},
            {**base, "type": "log", "lfn": f"{name}.pending.log.tgz"},
        ],
    )
    lib_lfn, log_lfn = f"{name}.{lib_id}.lib.tgz", f"{name}.{lib_id}.log.tgz"
    await tasks_db.update_file(conn, lib_id, lfn=lib_lfn)
    await tasks_db.update_file(conn, log_id, lfn=log_lfn)
    parameters = render(
        spec.job_parameters,
        _build_context(spec, lib_lfn, task_id, source_url, attempt, task["reqID"], panda_id),
    )
    resource_type = resource_types.match_job(rt_rows, 1, BUILD_RAM_MB)
    files = [
        _output_file(task_id, panda_id, dataset, queue, lib_lfn, lib_id, "output"),
        _output_file(task_id, panda_id, dataset, queue, log_lfn, log_id, "log"),
    ]
    await jobs_db.insert(
        conn, [_job_row(task, spec, queue, dataset, panda_id, attempt, parameters, resource_type, now)], files
    )
    await tasks_db.bump_dataset(conn, dataset["datasetID"], now, nFilesUsed=1)
    log.info("task %s: build job %s activated at %s", task_id, panda_id, queue["name"])


def _output_file(
    task_id: int,
    panda_id: int,
    dataset: dict[str, Any],
    queue: dict[str, Any],
    lfn: str,
    file_id: int,
    file_type: str,
) -> dict[str, Any]:
    return {
        "PandaID": panda_id,
        "GUID": str(uuid.uuid4()),
        "lfn": lfn,
        "type": file_type,
        "dataset": dataset["datasetName"],
        "status": "unknown",
        "destinationDBlock": dataset["datasetName"],
        "destinationSE": queue["name"],
        "scope": scope_of(dataset["datasetName"]),
        "jediTaskID": task_id,
        "datasetID": dataset["datasetID"],
        "fileID": file_id,
        "attemptNr": 0,
    }


def _job_row(
    task: dict[str, Any],
    spec: BuildSpec,
    queue: dict[str, Any],
    dataset: dict[str, Any],
    panda_id: int,
    attempt: int,
    parameters: str,
    resource_type: str,
    now: datetime,
) -> dict[str, Any]:
    row = task_job_row(
        task,
        queue,
        panda_id=panda_id,
        origin=panda_id,
        attempt=attempt,
        cores=1,
        memory=BUILD_RAM_MB,
        resource_type=resource_type,
        parameters=parameters,
        now=now,
    )
    row.update(
        transformation=spec.trans_path,
        homepackage=row["homepackage"] or None,
        prodSourceLabel=spec.prod_source_label,
        destinationDBlock=dataset["datasetName"],
        specialHandling=BUILD_MARK,
    )
    return row


def with_lib(context: JobContext, state: BuildState) -> JobContext:
    """A run job's template context with ``${LIB}`` when the task builds."""
    if state.lib is None:
        return context
    return replace(context, streams={**context.streams, LIB_STREAM: [state.lib["lfn"]]})


def lib_files(task_id: int, panda_id: int, state: BuildState) -> list[dict[str, Any]]:
    """The lib file as an extra input of a run job (already at the site, hence token ``local``)."""
    if state.lib is None or state.dataset is None:
        return []
    lib = state.lib
    return [
        {
            "PandaID": panda_id,
            "GUID": lib["GUID"],
            "lfn": lib["lfn"],
            "type": "input",
            "dataset": state.dataset["datasetName"],
            "status": "ready",
            "prodDBlock": state.dataset["datasetName"],
            "prodDBlockToken": "local",
            "fsize": lib["fsize"],
            "checksum": lib["checksum"],
            "scope": lib["scope"],
            "jediTaskID": task_id,
            "datasetID": lib["datasetID"],
            "fileID": lib["fileID"],
            "attemptNr": lib["attemptNr"],
        }
    ]
