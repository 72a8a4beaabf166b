"""Harvester workers: harvester/update_workers and get_current_worker_id (api-v1.md §2.5,
domain.md §8.1-8.2).

A call is validated whole before anything is written: one worker with a value of the wrong type,
an unknown status or an unreadable time refuses the call with a message naming it, and nothing is
stored (Harvester sends the same workers again on its next cycle, so nothing is lost, and a
half-applied batch could not be told apart from a whole one in the list of ``true`` answered).

The job effects reuse the pilot-report path: a job whose worker ended under it (final status,
``syncLevel`` 1) is put in ``holding`` with a failed final report, exactly what a pilot's own
``failed`` report leaves, with taskBufferErrorCode 300; the finaliser then ends it, so its inputs,
retries and task counters follow the one code path every failure takes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.auth.dn import clean_user_id
from bamboo.db import notify
from bamboo.db import workers as workers_db
from bamboo.logic.clock import Clock
from bamboo.logic.errors import InvalidInput
from bamboo.logic.harvester import Caller, may_read_instance, parse_time, take_instance, text
from bamboo.logic.states import COMMAND_KILL, WORKER_FINAL, WORKER_STATUSES, worker_status

MAX_WORKERS_PER_CALL = 1_000
MAX_JOBS_PER_WORKER = 1_000
# All pandaid_list entries of one call together.
MAX_JOB_RELATIONS_PER_CALL = 20_000
# A final status this recent is kept whatever Harvester reports next (domain.md §8.2).
FINAL_STATUS_KEPT = timedelta(hours=3)
# taskBufferErrorCode of a job whose worker ended while the job still ran (upstream's code).
WORKER_ENDED_CODE = 300
# Jobs that fail at once when their worker is final with syncLevel 1.
_ENDED_UNDER = ("running", "starting")
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)

_TEXTS = {
    "batchID": 80,
    "queueName": 80,
    "computingSite": 128,
    "nodeID": 80,
    "stdOut": 250,
    "stdErr": 250,
    "batchLog": 250,
    "jdl": 250,
    "resourceType": 56,
    "nativeStatus": 80,
    "diagMessage": 500,
    "computingElement": 128,
    "submissionHost": 128,
    "harvesterHost": 128,
    "jobType": 80,
}
_INTEGERS = ("nCore", "nativeExitCode", "nJobs", "errorCode", "minRamCount")
_TIMES = ("submitTime", "startTime", "endTime")


@dataclass(slots=True)
class WorkerReport:
    """One worker of an update_workers call, validated: the columns it sets and its job list."""

    worker_id: int
    values: dict[str, Any]
    panda_ids: list[int] | None
    sync_level: int | None
    status: str | None = None


def _integer(name: str, value: Any, bounds: tuple[int, int]) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(f"Type error: {name} must be an integer, got {type(value).__name__}")
    if not bounds[0] <= value <= bounds[1]:
        raise InvalidInput(f"Value error: {name} is out of range")
    return value


def parse_worker(index: int, worker: Any) -> WorkerReport:
    """Validate one worker dict (unknown keys are ignored, as upstream)."""
    name = f"workers[{index}]"
    if not isinstance(worker, dict):
        raise InvalidInput(f"Type error: {name} must be an object")
    if worker.get("workerID") is None:
        raise InvalidInput(f"Value error: {name} has no workerID")
    worker_id = _integer(f"{name}['workerID']", worker["workerID"], _INT64)
    assert worker_id is not None
    values: dict[str, Any] = {}
    for key, limit in _TEXTS.items():
        if key in worker:
            values[key] = text(f"{name}['{key}']", worker[key], limit)
    for key in _INTEGERS:
        if key in worker:
            values[key] = _integer(f"{name}['{key}']", worker[key], _INT32)
    for key in _TIMES:
        if key in worker:
            values[key] = parse_time(f"{name}['{key}']", worker[key])
    status = worker.get("status")
    if status is not None:
        if status not in WORKER_STATUSES:
            known = ", ".join(sorted(WORKER_STATUSES))
            raise InvalidInput(
                f"Value error: {name}['status'] must be one of {known}, got {str(status)[:40]!r}"
            )
        values["status"] = status
    panda_ids = worker.get("pandaid_list")
    if panda_ids is not None:
        if not isinstance(panda_ids, list):
            raise InvalidInput(f"Type error: {name}['pandaid_list'] must be a list of PandaIDs")
        if len(panda_ids) > MAX_JOBS_PER_WORKER:
            raise InvalidInput(
                f"Value error: {name}['pandaid_list'] holds more than {MAX_JOBS_PER_WORKER:,} jobs"
            )
        if not all(isinstance(item, int) and not isinstance(item, bool) for item in panda_ids):
            raise InvalidInput(f"Type error: {name}['pandaid_list'] must be a list of PandaIDs")
        if not all(_INT64[0] <= item <= _INT64[1] for item in panda_ids):
            raise InvalidInput(f"Value error: {name}['pandaid_list'] holds a PandaID out of range")
        panda_ids = sorted(set(panda_ids))
    sync_level = _integer(f"{name}['syncLevel']", worker.get("syncLevel"), _INT32)
    return WorkerReport(worker_id, values, panda_ids, sync_level)


def parse_workers(workers: Sequence[Any]) -> list[WorkerReport]:
    """Validate a whole call; a workerID sent twice keeps its last report."""
    if len(workers) > MAX_WORKERS_PER_CALL:
        raise InvalidInput(f"Value error: workers holds more than {MAX_WORKERS_PER_CALL:,} workers")
    reports: dict[int, WorkerReport] = {}
    relations = 0
    for index, worker in enumerate(workers):
        report = parse_worker(index, worker)
        relations += len(report.panda_ids or ())
        if relations > MAX_JOB_RELATIONS_PER_CALL:
            raise InvalidInput(
                f"Value error: the pandaid_list entries of one call exceed {MAX_JOB_RELATIONS_PER_CALL:,}"
            )
        reports[report.worker_id] = report
    return [reports[key] for key in sorted(reports)]


def may_touch_job(job: Mapping[str, Any], caller: Caller) -> bool:
    """Whether a worker report may change this job: production role, or the job's owner."""
    if caller.production:
        return True
    owner = job["prodUserName"] or (clean_user_id(job["prodUserID"]) if job["prodUserID"] else None)
    return owner is not None and owner == caller.user


async def update_workers(
    conn: AsyncConnection, clock: Clock, caller: Caller, harvester_id: str, workers: Sequence[Any]
) -> tuple[list[bool], int]:
    """Upsert each worker of the instance and apply what its report means for its jobs.

    Returns:
        ``True`` per worker sent (the contract's list of true), and how many jobs were failed for
        the finaliser.

    Raises:
        InvalidInput: a worker the call cannot store (nothing is written).
    """
    reports = parse_workers(workers)
    await take_instance(conn, clock, caller, harvester_id)
    now = clock.now()
    stored = await workers_db.lock_states(conn, harvester_id, [report.worker_id for report in reports])
    rows = []
    for report in reports:
        previous = stored.get(report.worker_id)
        reported = report.values.get("status")
        if previous is not None and reported is not None:
            recent = previous["lastUpdate"] > now - FINAL_STATUS_KEPT
            report.values["status"] = worker_status(previous["status"], reported, final_is_recent=recent)
        report.status = report.values.get("status", previous["status"] if previous else None)
        rows.append((report.worker_id, {**report.values, "lastUpdate": now}))
    await workers_db.upsert(conn, harvester_id, rows)
    lists = {report.worker_id: report.panda_ids for report in reports if report.panda_ids is not None}
    await workers_db.sync_jobs(conn, harvester_id, lists, now)
    failed = await _job_effects(conn, caller, reports, now)
    return [True] * len(workers), failed


async def _job_effects(
    conn: AsyncConnection, caller: Caller, reports: list[WorkerReport], now: datetime
) -> int:
    """The supervisor error copy and the failure of jobs whose worker ended (domain.md §8.2)."""
    wanted = {
        panda_id
        for report in reports
        if report.panda_ids
        and (
            (report.values.get("errorCode") or 0) != 0
            or (report.status in WORKER_FINAL and report.sync_level == 1)
        )
        for panda_id in report.panda_ids
    }
    if not wanted:
        return 0
    jobs = {
        job["PandaID"]: job
        for job in await workers_db.jobs_for_effects(conn, sorted(wanted))
        if may_touch_job(job, caller)
    }
    sup_errors: dict[int, tuple[int, str | None]] = {}
    failures: list[dict[str, Any]] = []
    for report in reports:
        diag = report.values.get("diagMessage")
        code = report.values.get("errorCode") or 0
        for panda_id in report.panda_ids or ():
            job = jobs.get(panda_id)
            if job is None:
                continue
            if code != 0:
                sup_errors[panda_id] = (code, diag)
            ended = report.status in WORKER_FINAL and report.sync_level == 1
            if (
                ended
                and job["active"]
                and job["jobStatus"] in _ENDED_UNDER
                and job["reported_status"] is None
            ):
                message = (
                    f"The worker was {report.status} while the job was {job['jobStatus']} : {diag or ''}"
                )
                failures.append({"PandaID": panda_id, "jobStatus": job["jobStatus"], "diag": message})
    await workers_db.set_supervisor_errors(conn, sup_errors)
    if failures:
        await workers_db.fail_for_finaliser(conn, failures, WORKER_ENDED_CODE, COMMAND_KILL, now)
        await notify.announce(conn, "finaliser")
    return len(failures)


async def current_worker_id(conn: AsyncConnection, caller: Caller, harvester_id: str) -> int:
    """The largest workerID stored for the instance, 0 when it has none (Harvester then starts
    numbering from 1; upstream answers a database error there)."""
    await may_read_instance(conn, caller, harvester_id)
    return await workers_db.max_worker_id(conn, harvester_id) or 0
