"""Job reads: job/get_status and job/get_description (api-v1.md §2.2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import archive as archive_db
from bamboo.db import jobs as jobs_db
from bamboo.db.schema import FILE_FIELDS, JOB_FIELDS
from bamboo.logic.states import COMMAND_KILL

MAX_DESCRIPTIONS = 5500
_UNKNOWN = {"status": "unknown", "command": COMMAND_KILL}
# Jobs not yet dispatchable are reported as unknown, as upstream (they live in another table there).
_NOT_VISIBLE_TO_GET_STATUS = frozenset({"pending", "defined", "assigned", "waiting"})


async def statuses(conn: AsyncConnection, job_ids: Sequence[int]) -> list[dict[str, Any]]:
    """``{"status", "command"}`` per job id, in the order asked; unknown jobs get ``tobekilled``.

    Only the active table is read: the contract answers from live jobs and jobs final for less
    than an hour, and the archive delay is at least an hour (``job_archive_delay_hours``), so
    every such job is still active and an archived one is ``unknown`` as upstream.
    """
    found = await jobs_db.statuses(conn, job_ids)
    result = []
    for job_id in job_ids:
        job = found.get(job_id)
        if job is None or job["jobStatus"] in _NOT_VISIBLE_TO_GET_STATUS:
            result.append(dict(_UNKNOWN))
        else:
            result.append({"status": job["jobStatus"], "command": job["commandToPilot"]})
    return result


def job_record(job: dict[str, Any], files: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A job as PanDA describes it: every JobSpec attribute, then its files."""
    record = {field: job[field] for field in JOB_FIELDS}
    record["Files"] = [{field: f[field] for field in FILE_FIELDS} for f in files]
    return record


async def descriptions(conn: AsyncConnection, job_ids: Sequence[int]) -> list[dict[str, Any] | None]:
    """job/get_description: the record of each job id (None for unknown ones), in the order asked.

    Archived jobs are described too: upstream's get_description reads its recent archive (jobs
    final for a few days), and Bamboo's archive delay is shorter than that, so its one archive
    table stands for both upstream archives here.
    """
    job_ids = list(job_ids)[:MAX_DESCRIPTIONS]
    found = await archive_db.get_many_incl_archive(conn, job_ids)
    files = await archive_db.files_of_incl_archive(conn, list(found))
    return [job_record(found[job_id], files[job_id]) if job_id in found else None for job_id in job_ids]
