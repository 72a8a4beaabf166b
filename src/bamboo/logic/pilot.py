"""Pilot reports: pilot/update_job, update_jobs_bulk and get_job_status (api-v1.md §2.3, domain.md §5.4).

A report moves the job through :func:`bamboo.logic.states.pilot_report` and stores what the pilot
measured. Final reports (finished/failed) park the job in ``holding`` with the pilot's output
report; the finaliser decides the final status once the outputs are registered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import archive as archive_db
from bamboo.db import jobs as jobs_db
from bamboo.db import notify
from bamboo.db import workers as workers_db
from bamboo.logic.clock import Clock
from bamboo.logic.states import COMMAND_KILL, COMMAND_NONE, PILOT_REPORTABLE, pilot_report

# The largest value an I/O counter column keeps, in kB (upstream caps at ten digits).
_MAX_KB = 10**10 - 1
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
# Bounds of the texts a report stores whole (the columns are unbounded TEXT). Of the pilot log and
# the payload's stdout the end is kept, where the errors are; metadata is JSON, useless cut, so
# larger metadata is refused with the contract's "Failed to add meta_data".
MAX_PILOT_LOG_CHARS = 1_000_000
MAX_STDOUT_CHARS = 1_000_000
MAX_METADATA_CHARS = 1_000_000
METADATA_FAILED = "Failed to add meta_data"
# StatusCode of an answer whose report could not be stored (upstream's database error code).
STATUS_NOT_STORED = 30
# supErrorCode of a job that got a report from another batch job than the one running it.
SUPERVISOR_BATCH_MISMATCH = 1


def _text(limit: int) -> Callable[[Any], str]:
    return lambda value: str(value)[:limit]


def _integer(value: Any) -> int:
    return int(value)


def _error_code(value: Any) -> int:
    # Pilots sometimes send negative codes; PanDA stores them without the sign.
    return abs(int(str(value).lstrip("-")))


def _kilobytes(value: Any) -> int:
    return min(int(float(value) / 1024), _MAX_KB)


def _rounded(value: Any) -> int:
    return int(float(value))


def _timestamp(value: Any) -> datetime:
    return datetime.strptime(str(value), _TIME_FORMAT).replace(tzinfo=UTC)


def _tail(limit: int) -> Callable[[Any], str]:
    return lambda value: str(value)[-limit:]


# update_job parameter -> (job column, conversion). Values that are None or "" or fail to convert
# are skipped, as upstream does.
FIELD_MAP: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "job_sub_status": ("jobSubStatus", _text(80)),
    "start_time": ("startTime", _timestamp),
    "end_time": ("endTime", _timestamp),
    "pilot_timing": ("pilotTiming", _text(100)),
    "node": ("modificationHost", _text(128)),
    "scheduler_id": ("schedulerID", _text(128)),
    "pilot_id": ("pilotID", _text(200)),
    "batch_id": ("batchID", _text(80)),
    "trans_exit_code": ("transExitCode", _text(128)),
    "pilot_error_code": ("pilotErrorCode", _error_code),
    "pilot_error_diag": ("pilotErrorDiag", _text(500)),
    "exe_error_code": ("exeErrorCode", _integer),
    "exe_error_diag": ("exeErrorDiag", _text(500)),
    "n_events": ("nEvents", _integer),
    "n_input_files": ("nInputFiles", _integer),
    "cpu_consumption_time": ("cpuConsumptionTime", _rounded),
    "cpu_consumption_unit": ("cpuConsumptionUnit", _text(128)),
    "cpu_conversion_factor": ("cpuConversion", float),
    "core_count": ("actualCoreCount", _integer),
    "mean_core_count": ("meanCoreCount", _integer),
    "max_rss": ("maxRSS", _rounded),
    "max_vmem": ("maxVMEM", _rounded),
    "max_swap": ("maxSWAP", _rounded),
    "max_pss": ("maxPSS", _rounded),
    "avg_rss": ("avgRSS", _rounded),
    "avg_vmem": ("avgVMEM", _rounded),
    "avg_swap": ("avgSWAP", _rounded),
    "avg_pss": ("avgPSS", _rounded),
    "tot_rchar": ("totRCHAR", _kilobytes),
    "tot_wchar": ("totWCHAR", _kilobytes),
    "tot_rbytes": ("totRBYTES", _kilobytes),
    "tot_wbytes": ("totWBYTES", _kilobytes),
    "rate_rchar": ("rateRCHAR", _kilobytes),
    "rate_wchar": ("rateWCHAR", _kilobytes),
    "rate_rbytes": ("rateRBYTES", _kilobytes),
    "rate_wbytes": ("rateWBYTES", _kilobytes),
    "cpu_architecture_level": ("cpu_architecture_level", _text(20)),
    "grid": ("grid", _text(50)),
    "source_site": ("sourceSite", _text(36)),
    "destination_site": ("destinationSite", _text(36)),
    "job_metrics": ("jobMetrics", _text(500)),
    "meta_data": ("metadata", str),
    "pilot_log": ("pilot_log", _tail(MAX_PILOT_LOG_CHARS)),
    "stdout": ("stdout", _tail(MAX_STDOUT_CHARS)),
}


def memory_leak(job_metrics: str) -> dict[str, Any]:
    """The memory-leak columns a ``leak=<slope>`` / ``chi2=<fit>`` pair in jobMetrics sets.

    jobMetrics is a blank-separated ``key=value`` list; unreadable values are ignored.
    """
    values: dict[str, Any] = {}
    for item in job_metrics.split():
        key, _, raw = item.partition("=")
        try:
            if key == "leak":
                values["memory_leak"] = int(float(raw))
            elif key == "chi2":
                chi2 = float(raw)
                if chi2 == chi2 and abs(chi2) != float("inf"):
                    values["memory_leak_x2"] = chi2
        except (ValueError, OverflowError):
            continue
    return values


def columns_from_report(report: Mapping[str, Any]) -> dict[str, Any]:
    """The job columns a report sets (unconvertible values are dropped, as upstream)."""
    values: dict[str, Any] = {}
    for key, (column, convert) in FIELD_MAP.items():
        raw = report.get(key)
        if raw is None or raw == "":
            continue
        try:
            values[column] = convert(raw)
        except (TypeError, ValueError, OverflowError):
            continue
    if report.get("job_metrics"):
        values.update(memory_leak(str(report["job_metrics"])))
    return values


def _batch_conflict(stored: str | None, reported: Any) -> bool:
    """Whether a report comes from another batch job than the one that runs the job.

    Purely numeric IDs may legitimately differ (a batch system renumbering a requeued job), so
    only a mismatch involving a non-numeric ID counts.
    """
    if not stored or stored == "NULL" or reported is None or str(reported) in ("", "NULL"):
        return False
    reported = str(reported)[:80]
    return reported != stored and not (reported.isdigit() and stored.isdigit())


def _command(job: dict[str, Any], override: str | None) -> str:
    if override is not None:
        return override
    parts = []
    if job["specialHandling"] and "debug" in job["specialHandling"].split(","):
        parts.append("debug")
    if job["commandToPilot"] and job["commandToPilot"] != COMMAND_NONE:
        parts.append(job["commandToPilot"])
    return ",".join(parts) or COMMAND_NONE


class UpdateAnswer(NamedTuple):
    """What a pilot report is answered: the envelope's data and message, and whether a final
    report was recorded (the finaliser should look at the job)."""

    data: dict[str, Any]
    final: bool = False
    message: str = ""


async def update_job(
    conn: AsyncConnection,
    clock: Clock,
    job_id: int,
    job_status: str,
    report: Mapping[str, Any],
) -> UpdateAnswer:
    """Apply one pilot report.

    Args:
        job_id: the PandaID.
        job_status: the reported status (one of the pilot-reportable ones; checked by the caller).
        report: the other update_job parameters, by their API names.

    Returns:
        The answer: data ``{"StatusCode": 0, "command": ...}`` (``StatusCode`` 30 and nothing
        stored when the metadata is over ``MAX_METADATA_CHARS``).
    """
    if job_status not in PILOT_REPORTABLE:
        raise ValueError(job_status)
    job = await jobs_db.lock_for_report(conn, job_id)
    attempt = report.get("attempt_nr")
    if job is None or (attempt is not None and attempt != job["attemptNr"]):
        return UpdateAnswer({"StatusCode": 0, "command": COMMAND_KILL})
    if job["jobStatus"] == "holding" and job["commandToPilot"] == COMMAND_KILL:
        # The server gave up on this job (logic/job_watchdog.py) and decided its result: a pilot
        # that comes back late must not overwrite it before the finaliser has ended the job.
        return UpdateAnswer({"StatusCode": 0, "command": COMMAND_KILL})
    if len(str(report.get("meta_data") or "")) > MAX_METADATA_CHARS:
        diag = {"StatusCode": STATUS_NOT_STORED, "ErrorDiag": METADATA_FAILED}
        return UpdateAnswer(diag, message=METADATA_FAILED)
    decision = pilot_report(job["jobStatus"], job_status)
    if decision.status is None and decision.reply is not None:
        return UpdateAnswer({"StatusCode": 0, "command": decision.reply})
    now = clock.now()
    if _batch_conflict(job["batchID"], report.get("batch_id")):
        # Two batch jobs run the same PanDA job: the one reporting now is told to stop, and the
        # job keeps the trace.
        diag = f"update from batch job {str(report['batch_id'])[:80]} while the job runs in {job['batchID']}"
        mismatch = {"supErrorCode": SUPERVISOR_BATCH_MISMATCH, "supErrorDiag": diag[:250]}
        await jobs_db.update(conn, job_id, modificationTime=now, **mismatch)
        return UpdateAnswer({"StatusCode": 0, "command": COMMAND_KILL})
    values = columns_from_report(report)
    values["modificationTime"] = now
    if decision.status is not None and decision.status != job["jobStatus"]:
        values["jobStatus"] = decision.status
        values["stateChangeTime"] = now
        if decision.status == "running" and job["jobStatus"] in ("activated", "sent", "starting"):
            values.setdefault("startTime", now)
        if decision.status in ("holding", "transferring"):
            stamp = now.strftime(_TIME_FORMAT)
            values["jobDispatcherErrorDiag"] = f"set to {job_status} by the pilot at {stamp}"
    if decision.final_report:
        values["reported_status"] = job_status
        values["output_report"] = str(report.get("job_output_report") or "")
        values.setdefault("endTime", now)
    await jobs_db.update(conn, job_id, **values)
    if decision.final_report:
        await notify.announce(conn, "finaliser")
    return UpdateAnswer({"StatusCode": 0, "command": _command(job, decision.reply)}, decision.final_report)


async def job_statuses(conn: AsyncConnection, job_ids: Sequence[int]) -> list[dict[str, Any]]:
    """pilot/get_job_status: status and attempt of each job, active or archived, in the order asked."""
    found = await archive_db.statuses_incl_archive(conn, job_ids)
    return [
        {"job_id": job_id, "status": found[job_id]["jobStatus"], "attempt_number": found[job_id]["attemptNr"]}
        if job_id in found
        else {"job_id": job_id, "status": "not found", "attempt_number": 0}
        for job_id in job_ids
    ]


WORKER_PILOT_STATUSES = ("started", "finished")
INVALID_WORKER_STATE = (
    "Invalid worker state. The worker state has to be in "
    f"({', '.join(repr(status) for status in WORKER_PILOT_STATUSES)})"
)
# Length of the nodeID column of harvester_workers.
MAX_NODE_ID = 80


async def update_worker_status(
    conn: AsyncConnection, clock: Clock, harvester_id: str, worker_id: int, status: str, node_id: str | None
) -> bool:
    """pilot/update_worker_status: the pilot inside a Harvester worker started or finished.

    Sets the worker's pilotStatus, nodeID (when given) and pilotStartTime or pilotEndTime. An
    unknown worker is not an error (Harvester may not have reported it yet): False, nothing stored.
    """
    if status not in WORKER_PILOT_STATUSES:
        raise ValueError(status)
    now = clock.now()
    values: dict[str, Any] = {"pilotStatus": status}
    values["pilotStartTime" if status == "started" else "pilotEndTime"] = now
    if node_id:
        values["nodeID"] = node_id[:MAX_NODE_ID]
    return await workers_db.set_pilot_status(conn, harvester_id, worker_id, values)
