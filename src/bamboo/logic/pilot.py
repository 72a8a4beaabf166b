"""Pilot reports: pilot/update_job, update_jobs_bulk and get_job_status (api-v1.md §2.3, domain.md §5.4).

A report moves the job through :func:`bamboo.logic.states.pilot_report` and stores what the pilot
measured. Final reports (finished/failed) park the job in ``holding`` with the pilot's output
report; the finaliser decides the final status once the outputs are registered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import archive as archive_db
from bamboo.db import jobs as jobs_db
from bamboo.db import notify
from bamboo.logic.clock import Clock
from bamboo.logic.states import COMMAND_KILL, COMMAND_NONE, PILOT_REPORTABLE, pilot_report

# The largest value an I/O counter column keeps, in kB (upstream caps at ten digits).
_MAX_KB = 10**10 - 1
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


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
    "pilot_log": ("pilot_log", str),
    "stdout": ("stdout", str),
}


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
    return values


def _command(job: dict[str, Any], override: str | None) -> str:
    if override is not None:
        return override
    parts = []
    if job["specialHandling"] and "debug" in job["specialHandling"].split(","):
        parts.append("debug")
    if job["commandToPilot"] and job["commandToPilot"] != COMMAND_NONE:
        parts.append(job["commandToPilot"])
    return ",".join(parts) or COMMAND_NONE


async def update_job(
    conn: AsyncConnection,
    clock: Clock,
    job_id: int,
    job_status: str,
    report: Mapping[str, Any],
) -> tuple[dict[str, Any], bool]:
    """Apply one pilot report.

    Args:
        job_id: the PandaID.
        job_status: the reported status (one of the pilot-reportable ones; checked by the caller).
        report: the other update_job parameters, by their API names.

    Returns:
        The answer's data (``{"StatusCode": 0, "command": ...}``) and whether a final report was
        recorded (the finaliser should look at the job).
    """
    if job_status not in PILOT_REPORTABLE:
        raise ValueError(job_status)
    job = await jobs_db.lock_for_report(conn, job_id)
    attempt = report.get("attempt_nr")
    if job is None or (attempt is not None and attempt != job["attemptNr"]):
        return {"StatusCode": 0, "command": COMMAND_KILL}, False
    if job["jobStatus"] == "holding" and job["commandToPilot"] == COMMAND_KILL:
        # The server gave up on this job (logic/job_watchdog.py) and decided its result: a pilot
        # that comes back late must not overwrite it before the finaliser has ended the job.
        return {"StatusCode": 0, "command": COMMAND_KILL}, False
    decision = pilot_report(job["jobStatus"], job_status)
    if decision.status is None and decision.reply is not None:
        return {"StatusCode": 0, "command": decision.reply}, False
    now = clock.now()
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
    return {"StatusCode": 0, "command": _command(job, decision.reply)}, decision.final_report


async def job_statuses(conn: AsyncConnection, job_ids: Sequence[int]) -> list[dict[str, Any]]:
    """pilot/get_job_status: status and attempt of each job, active or archived, in the order asked."""
    found = await archive_db.statuses_incl_archive(conn, job_ids)
    return [
        {"job_id": job_id, "status": found[job_id]["jobStatus"], "attempt_number": found[job_id]["attemptNr"]}
        if job_id in found
        else {"job_id": job_id, "status": "not found", "attempt_number": 0}
        for job_id in job_ids
    ]
