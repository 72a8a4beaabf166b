"""Task reads beyond a single record (api-v1.md §2.1): datasets with their files, the jobs of a
task in full, a task's parent, a user's recently modified tasks and finished jumbo tasks."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.auth.dn import clean_user_id
from bamboo.db import archive as archive_db
from bamboo.db import task_admin as admin_db
from bamboo.db import tasks as tasks_db
from bamboo.logic import jobs, tasks
from bamboo.logic.clock import Clock, days_before
from bamboo.logic.errors import NotFound

_UNSUCCESSFUL = ("failed", "cancelled", "closed")
_JUMBO_STATUSES = ("finished", "done")
MAX_MODIFIED_WINDOW = timedelta(days=30)
# With ``full`` every task also gets its digest (datasets, statistics, job ids): bounded as upstream.
MAX_FULL_TASKS = 500
_SINCE_FORMAT = "%Y-%m-%d %H:%M:%S"


async def datasets_and_files(
    conn: AsyncConnection, task_id: int, dataset_types: Sequence[str]
) -> list[dict[str, Any]]:
    """The task's datasets of the given types, each with its files in fileID order."""
    if tasks.names_no_task(task_id):
        return []
    return [
        {
            "dataset": {"name": dataset["datasetName"], "id": dataset["datasetID"]},
            "files": [
                {"lfn": f["lfn"], "scope": f["scope"], "id": f["fileID"], "status": f["status"]}
                for f in files
            ],
        }
        for dataset, files in await admin_db.datasets_with_files(conn, task_id, dataset_types)
    ]


def _extended_label(job: dict[str, Any]) -> str:
    """The job's label with its kind: ``_build``, ``_pmerge``, ``_scout`` or ``_normal``."""
    if job["prodSourceLabel"] == "panda" or "build" in (job["transformation"] or "").lower():
        kind = "build"
    elif job["processingType"] == "pmerge":
        kind = "pmerge"
    elif "sj" in (job["specialHandling"] or "").split(","):
        kind = "scout"
    else:
        kind = "normal"
    return f"{job['prodSourceLabel']}_{kind}"


def _duration(job: dict[str, Any]) -> int | None:
    if job["startTime"] is None or job["endTime"] is None:
        return None
    return int((job["endTime"] - job["startTime"]).total_seconds())


async def job_descriptions(
    conn: AsyncConnection, task_id: int, *, unsuccessful_only: bool
) -> list[dict[str, Any]]:
    """Full records of the task's jobs, active and archived (at most :data:`jobs.MAX_DESCRIPTIONS`),
    in PandaID order."""
    ids = await admin_db.job_ids_of_task(conn, task_id, _UNSUCCESSFUL if unsuccessful_only else None)
    ids = ids[: jobs.MAX_DESCRIPTIONS]
    found = await archive_db.get_many_incl_archive(conn, ids)
    files = await archive_db.files_of_incl_archive(conn, ids)
    records = []
    for panda_id in ids:
        job = found[panda_id]
        record = jobs.job_record(job, files[panda_id])
        record["jobDuration"] = _duration(job)
        record["extendedProdSourceLabel"] = _extended_label(job)
        records.append(record)
    return records


async def parent_detailed_info(conn: AsyncConnection, task_id: int) -> dict[str, Any]:
    """The detail record (as task/get_detailed_info) of the task's parent.

    Raises:
        NotFound: with upstream's message for a missing child, no parent or a missing parent.
    """
    child = await tasks_db.get(conn, task_id)
    if child is None:
        raise NotFound("Child task not found")
    parent_id = child["parent_tid"]
    if parent_id is None or parent_id == task_id:
        raise NotFound("No parent task found")
    record = await tasks.detailed_info(conn, parent_id)
    if record is None:
        raise NotFound("Parent task not found")
    return record


async def tasks_modified_since(
    conn: AsyncConnection,
    clock: Clock,
    dn: str,
    since: str,
    *,
    full: bool,
    min_task_id: int | None,
    prod_source_label: str,
) -> dict[int | None, dict[str, Any]]:
    """A user's tasks of one label modified since ``since`` (at most 30 days ago), keyed by reqID.

    Tasks sharing a reqID overwrite each other, the highest jediTaskID last, as upstream. A bad
    ``since`` or an empty DN give nothing.
    """
    if not dn:
        return {}
    oldest = clock.now() - MAX_MODIFIED_WINDOW
    try:
        start = datetime.strptime(since, _SINCE_FORMAT).replace(tzinfo=oldest.tzinfo)
    except ValueError:
        return {}
    found = await admin_db.tasks_modified_since(
        conn,
        clean_user_id(dn),
        prod_source_label,
        max(start, oldest),
        min_task_id,
        MAX_FULL_TASKS if full else None,
    )
    result: dict[int | None, dict[str, Any]] = {}
    for task in found:
        if full:
            digest = await tasks.details(
                conn, task["jediTaskID"], include_parameters=False, include_status=False
            )
            task.update(digest or {})
        result[task["reqID"]] = task
    return result


async def jumbo_job_datasets(
    conn: AsyncConnection, clock: Clock, from_offset: int, to_offset: int
) -> dict[int, dict[str, Any]]:
    """Finished or done managed jumbo tasks modified between ``from_offset`` and ``to_offset`` days
    ago, each with its status and output dataset names."""
    now = clock.now()
    rows = await admin_db.jumbo_output_datasets(
        conn, _JUMBO_STATUSES, days_before(now, from_offset), days_before(now, to_offset)
    )
    result: dict[int, dict[str, Any]] = {}
    for row in rows:
        entry = result.setdefault(row["jediTaskID"], {"status": row["status"], "datasets": []})
        entry["datasets"].append(row["datasetName"])
    return result
