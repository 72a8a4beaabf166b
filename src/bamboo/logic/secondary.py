"""Secondary input datasets: their file rows and the files each job gets (domain.md §1.5, §3.4).

An input item after the master is a *secondary*: its dataset is looked up like the master's and
its files become rows of their own dataset, but they never drive job generation. Each job made
from a group of master rows takes secondary files too, per secondary dataset:

* ``nFilesPerJob`` on the item: that many files per job;
* otherwise ``ratio`` (default 1) files per master file of the job, a fractional product rounded
  up, as upstream's ``getNumMultByRatio`` does;
* ``repeat`` + ``nosplit`` attributes (conditions-DB style): every file, in every job.

Files are handed out in file order, each once, while they last; a ``reusable`` (``ru``) dataset
starts again from its first file when the rest would not fill a job. Tracked secondary rows
(neither reusable nor repeat+nosplit) follow their job like master rows (status ``running``,
PandaID), so the finaliser's propagation finishes them or returns them to ``ready``; untracked
rows stay ``ready`` for the next jobs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import aux_rows
from bamboo.db import tasks as tasks_db
from bamboo.logic.jobparams import JobContext
from bamboo.logic.splitting import Row
from bamboo.logic.taskparams import DatasetPlan

T = TypeVar("T")

# Attribute tokens carrying the per-job sizing of a secondary dataset on its dataset row, in the
# ``key=value`` form upstream uses for ``ratio=``.
_FILES_PER_JOB = "np"
_RATIO = "ratio"


@dataclass(frozen=True)
class SecondaryUse:
    """How many files of one secondary dataset a job gets."""

    n_files_per_job: int | None = None
    ratio: float = 1
    every_file: bool = False
    reusable: bool = False

    @property
    def tracked(self) -> bool:
        """Whether the rows follow the jobs that use them (attempts, finished counts)."""
        return not (self.every_file or self.reusable)

    @classmethod
    def from_attributes(cls, attributes: str | None) -> SecondaryUse:
        """Read the sizing back from a dataset row's ``attributes`` text."""
        tokens = [token for token in (attributes or "").split(",") if token]
        values = dict(token.split("=", 1) for token in tokens if "=" in token)
        files = _positive(values.get(_FILES_PER_JOB))
        ratio = _positive(values.get(_RATIO))
        return cls(
            n_files_per_job=None if files is None else max(1, int(files)),
            ratio=1 if ratio is None else ratio,
            every_file="repeat" in tokens and "nosplit" in tokens,
            reusable="ru" in tokens,
        )

    def files_for(self, n_master_files: int, available: int) -> int:
        """Files a job over ``n_master_files`` master files takes from ``available`` ones."""
        if self.every_file:
            return available
        if self.n_files_per_job is not None:
            return self.n_files_per_job
        product = n_master_files * self.ratio
        # An integral ratio stays exact; float noise must not round 3.0000001 up to 4.
        return round(product) if math.isclose(product, round(product)) else math.ceil(product)


def _positive(text: str | None) -> float | None:
    # Items may carry free attribute text, so a malformed np=/ratio= value means "not given".
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) and value > 0 else None


def attributes_text(plan: DatasetPlan, *, secondary: bool) -> str | None:
    """The ``attributes`` column of a dataset: its flags, plus the sizing of a secondary input."""
    tokens = list(plan.attributes)
    if secondary:
        if plan.nfiles_per_job is not None:
            tokens.append(f"{_FILES_PER_JOB}={plan.nfiles_per_job}")
        if plan.ratio is not None:
            tokens.append(f"{_RATIO}={plan.ratio:g}")
    return ",".join(tokens) or None


def allocate(master_counts: Sequence[int], rows: Sequence[T], use: SecondaryUse) -> list[list[T]]:
    """Share one secondary dataset's rows among jobs.

    Args:
        master_counts: per job, in job order, the number of master files it reads.
        rows: the secondary rows available, in file order.
        use: the dataset's sizing.

    Returns:
        Per job the rows it gets. Without ``reusable`` and ``every_file`` no row is given twice
        and rows go out in order; a job finds fewer (or none) once they run out.
    """
    shares: list[list[T]] = []
    cursor = 0
    for count in master_counts:
        wanted = use.files_for(count, len(rows))
        if use.every_file:
            shares.append(list(rows))
            continue
        if use.reusable and cursor + wanted > len(rows):
            cursor = 0
        shares.append(list(rows[cursor : cursor + wanted]))
        cursor += wanted
    return shares


@dataclass(frozen=True)
class Attached:
    """The secondary rows of one job for one dataset."""

    dataset: dict[str, Any]
    rows: list[dict[str, Any]]
    tracked: bool


async def attach(
    conn: AsyncConnection, datasets: Sequence[dict[str, Any]], groups: Sequence[list[Row]]
) -> tuple[list[list[Row]], list[list[Attached]]]:
    """The secondary files of each job about to be made from the given groups of master rows.

    Jobs run in order and the secondary files in file order, so once one secondary runs out every
    later job would lack it too: those jobs are left for a later cycle (files may come back when a
    job fails), and their master rows stay ready. When not even the first job has its files, no
    job is made while files of the missing secondary are held by running jobs; once none are, the
    first job is kept, so that rendering its parameters reports the unresolved placeholder and the
    task waits with that reason.

    Args:
        conn: the generator's connection.
        datasets: all datasets of the task.
        groups: per job, its master rows (``Row.key`` is the file row).

    Returns:
        The groups that become jobs now (possibly none) and, per job, one :class:`Attached` per
        secondary dataset (in dataset order).
    """
    per_job: list[list[Attached]] = [[] for _ in groups]
    master_counts = [len({row.key["lfn"] for row in group}) for group in groups]
    for dataset in datasets:
        if dataset["masterID"] is None or dataset["type"] != "input":
            continue
        use = SecondaryUse.from_attributes(dataset["attributes"])
        if use.tracked:
            rows = await tasks_db.eligible_rows(conn, dataset["datasetID"], _row_limit(master_counts, use))
        else:
            rows = await aux_rows.shared_rows(conn, dataset["datasetID"])
        for job, share in zip(per_job, allocate(master_counts, rows, use), strict=True):
            job.append(Attached(dataset, share, use.tracked))
    complete = next(
        (index for index, job in enumerate(per_job) if any(not item.rows for item in job)), len(per_job)
    )
    if complete == 0 and per_job and any(_in_use(item.dataset) for item in per_job[0] if not item.rows):
        # Files held by running jobs come back if those jobs fail: wait for them, without a reason.
        return [], []
    keep = max(complete, min(1, len(per_job)))
    return list(groups[:keep]), per_job[:keep]


def _in_use(dataset: dict[str, Any]) -> bool:
    return bool(dataset["nFilesUsed"] - dataset["nFilesFinished"] - dataset["nFilesFailed"] > 0)


def _row_limit(master_counts: Sequence[int], use: SecondaryUse) -> int:
    # The jobs cannot take more tracked rows than this, so no more are read.
    return max(1, sum(use.files_for(count, 0) for count in master_counts))


def with_streams(context: JobContext, attached: Sequence[Attached]) -> JobContext:
    """The job's template context with each secondary stream's file names added."""
    streams: dict[str, Sequence[str]] = dict(context.streams)
    datasets: dict[str, str] = dict(context.stream_datasets)
    for item in attached:
        stream = item.dataset["streamName"]
        streams[stream] = list(dict.fromkeys(row["lfn"] for row in item.rows))
        datasets[stream] = item.dataset["containerName"] or item.dataset["datasetName"]
    return replace(context, streams=streams, stream_datasets=datasets)


def job_files(task_id: int, panda_id: int, attached: Sequence[Attached]) -> list[dict[str, Any]]:
    """Job-level input file rows for the secondary files of one job."""
    files: list[dict[str, Any]] = []
    for item in attached:
        dataset = item.dataset
        seen: set[str] = set()
        for row in item.rows:
            if row["lfn"] in seen:
                continue
            seen.add(row["lfn"])
            files.append(
                {
                    "PandaID": panda_id,
                    "GUID": row["GUID"],
                    "lfn": row["lfn"],
                    "type": "input",
                    "dataset": dataset["containerName"] or dataset["datasetName"],
                    "status": "ready",
                    "prodDBlock": dataset["datasetName"],
                    "dispatchDBlockToken": dataset["storageToken"],
                    "fsize": row["fsize"],
                    "checksum": row["checksum"],
                    "scope": row["scope"],
                    "jediTaskID": task_id,
                    "datasetID": row["datasetID"],
                    "fileID": row["fileID"],
                    "attemptNr": row["attemptNr"],
                }
            )
    return files


async def mark_used(
    conn: AsyncConnection,
    panda_ids: Sequence[int],
    attached: Sequence[Sequence[Attached]],
    now: datetime,
) -> None:
    """Bind tracked secondary rows to their jobs and count them used on their datasets."""
    assignments: list[tuple[int, int]] = []
    used: dict[int, int] = {}
    for panda_id, items in zip(panda_ids, attached, strict=True):
        for item in items:
            if not item.tracked:
                continue
            assignments.extend((row["fileID"], panda_id) for row in item.rows)
            dataset_id = item.dataset["datasetID"]
            used[dataset_id] = used.get(dataset_id, 0) + len(item.rows)
    # One statement for the batch, as the generator does for master rows.
    await tasks_db.assign_files(
        conn, assignments, status="running", proc_status="queued", lastAttemptTime=now
    )
    for dataset_id, count in used.items():
        if count:
            await tasks_db.bump_dataset(conn, dataset_id, now, nFilesUsed=count)


def row_defaults(use: SecondaryUse, max_attempt: int, max_failure: int | None) -> Mapping[str, Any]:
    """Attempt columns of a secondary dataset's rows: untracked rows carry no attempt limits."""
    if use.tracked:
        return {"keepTrack": 1, "maxAttempt": max_attempt, "maxFailure": max_failure}
    return {"keepTrack": 0, "maxAttempt": None, "maxFailure": None}
