"""Event service: handing event ranges to consumer jobs and taking their reports (domain.md §7.2,
§7.3; api-v1.md §2.4).

A range is one row of ``events`` (db/events.py). While it waits it belongs to its jobset
(``PandaID = jobsetID``); :func:`acquire` hands it to a consumer (``sent``, ``PandaID`` = the
consumer); the consumer's pilot reports it ``finished``, ``failed`` or ``fatal`` through
:func:`update`. What happens when the consumer ends (``done``, back to ``ready``) is the
finaliser's (consumer-end post-processing), not this module's.

A range is named to clients by its eventRangeID ``<jediTaskID>-<PandaID>-<fileID>-
<job_processID>-<attemptNr>`` with its CURRENT holder and attempts left: a report naming an
earlier holder or attempt is stale and refused.
"""

from __future__ import annotations

import ast
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import events as events_db
from bamboo.logic import killing
from bamboo.logic.clock import Clock
from bamboo.logic.errors import InvalidInput, NotFound
from bamboo.logic.states import COMMAND_KILL

log = logging.getLogger(__name__)

#: Ranges whose events count as processed (a job's nEvents, a task's progress).
PROCESSED_STATUSES = events_db.PROCESSED
#: What a pilot may report (api-v1.md §3.4): running/transferring are acknowledged only.
REPORTABLE = frozenset({"running", "transferring", "finished", "failed", "fatal"})
COMMAND_SOFTKILL = "softkill"

# Job eventService values (domain.md §7).
ES_CONSUMER = 1
ES_JUMBO = 4

#: Jobs that may take ranges (domain.md §7.2).
ACQUIRING_JOB_STATUSES = frozenset({"sent", "running", "starting"})
#: Jobs whose ranges may be reported, by update version (domain.md §7.3).
_UPDATABLE_JOBS = frozenset({"sent", "running", "starting", "transferring"})
_UPDATABLE_JOBS_V2 = _UPDATABLE_JOBS | {"activated"}
_UPDATABLE_RANGES = ("sent", "running")
_UPDATABLE_RANGES_V2 = ("sent", "running", "ready")
#: Sibling consumers closed when their jobset has no range left: never given a range, and either
#: still queued or handed to a pilot that has not started (a started one asks for ranges itself,
#: gets none and ends on its own).
_UNUSED_SIBLING_STATUSES = ("pending", "defined", "assigned", "waiting", "activated", "throttled", "sent")
#: Kill code of those siblings (api-v1.md §3.6): 55, ``closed``, "killed since task is (almost)
#: done" -- the jobset's part of the task is done as far as they are concerned.
UNUSED_CONSUMER_KILL_CODE = 55

MAX_RANGES_PER_ACQUIRE = 1000
MAX_RANGES_PER_UPDATE = 10_000
MAX_STATUS_ITEMS = 1000
MAX_ERROR_DIAG = 500
_INT32 = 2**31 - 1
_INT64 = 2**63 - 1


def range_id(task_id: int, panda_id: int, file_id: int, process_id: int, attempt_nr: int) -> str:
    return f"{task_id}-{panda_id}-{file_id}-{process_id}-{attempt_nr}"


def parse_range_id(text: Any) -> tuple[int, int, int, int, int] | None:
    """The five integers of an eventRangeID, or None when it is not one."""
    if not isinstance(text, str) or len(text) > 120:
        return None
    parts = text.split("-")
    if len(parts) != 5 or not all(part.isdigit() and part.isascii() for part in parts):
        return None
    numbers = tuple(int(part) for part in parts)
    if any(number > _INT64 for number in numbers):
        return None
    return numbers  # type: ignore[return-value]


# --- acquire -------------------------------------------------------------------------------------


async def acquire(
    conn: AsyncConnection,
    clock: Clock,
    *,
    job_id: int,
    jobset_id: int,
    task_id: int | None,
    n_ranges: int,
    scattered: bool,
    segment_id: int | None,
) -> list[dict[str, Any]]:
    """Hand up to ``n_ranges`` ready ranges of the job's jobset (jumbo: of its task) to the job.

    When the jobset has none left, its consumers that never took a range and have not started are
    closed (kill code 55), so they do not wait in the queue or start only to find nothing; the
    caller still gets ``[]``.

    Raises:
        InvalidInput: bad ``n_ranges``, unknown job, wrong jobset or task, job not running.
    """
    if n_ranges < 1:
        raise InvalidInput(f"n_ranges must be at least 1, got {n_ranges}")
    # A consumer asking for more than one call hands out gets the most and asks again.
    n_ranges = min(n_ranges, MAX_RANGES_PER_ACQUIRE)
    job = await _job_for(conn, job_id, jobset_id, task_id)
    if job["jobStatus"] not in ACQUIRING_JOB_STATUSES:
        raise InvalidInput(
            f"job {job_id} is {job['jobStatus']}: only sent, starting or running jobs take ranges"
        )
    if job["commandToPilot"] == COMMAND_KILL:
        raise InvalidInput(f"job {job_id} is to be killed: no event ranges for it")
    jumbo = job["eventService"] == ES_JUMBO
    now = clock.now()
    rows = await events_db.claim_ready(
        conn,
        task_id=job["jediTaskID"],
        jobset_id=None if jumbo else jobset_id,
        dataset_id=segment_id,
        limit=n_ranges,
        scattered=scattered,
        consumer=job_id,
        is_jumbo=jumbo,
        now=now,
    )
    if not rows and not jumbo and segment_id is None:
        await _close_unused_siblings(conn, clock, job)
    return [
        {
            "eventRangeID": range_id(
                row["jediTaskID"], row["PandaID"], row["fileID"], row["job_processID"], row["attemptNr"]
            ),
            "startEvent": row["def_min_eventID"],
            "lastEvent": row["def_max_eventID"],
            "LFN": row["lfn"],
            "GUID": row["GUID"],
            "scope": row["scope"],
        }
        for row in rows
    ]


async def _job_for(conn: AsyncConnection, job_id: int, jobset_id: int, task_id: int | None) -> dict[str, Any]:
    job = await events_db.lock_job(conn, job_id)
    if job is None:
        raise InvalidInput(f"job {job_id} not found among active jobs")
    if job["jobsetID"] != jobset_id:
        raise InvalidInput(f"job {job_id} belongs to jobset {job['jobsetID']}, not {jobset_id}")
    if task_id is not None and job["jediTaskID"] != task_id:
        raise InvalidInput(f"job {job_id} belongs to task {job['jediTaskID']}, not {task_id}")
    if job["eventService"] not in (ES_CONSUMER, ES_JUMBO):
        raise InvalidInput(f"job {job_id} is not an event service consumer")
    return job


async def _close_unused_siblings(conn: AsyncConnection, clock: Clock, job: dict[str, Any]) -> None:
    if await events_db.count_ready(conn, job["jediTaskID"], job["jobsetID"]):
        return  # ranges another consumer is taking right now (skipped by our pick)
    siblings = await events_db.lock_unused_siblings(
        conn, job["jediTaskID"], job["jobsetID"], job["PandaID"], _UNUSED_SIBLING_STATUSES
    )
    if siblings:
        closed = await killing.kill(conn, clock, siblings, UNUSED_CONSUMER_KILL_CODE, "bamboo")
        log.info("jobset %s has no event range left: closed unused consumers %s", job["jobsetID"], closed)


async def available_count(conn: AsyncConnection, *, job_id: int, jobset_id: int, task_id: int) -> int:
    """Ranges the job could still take: ready with attempts left, of its jobset (jumbo: task)."""
    found = (await events_db.event_jobs(conn, [job_id], lock=False)).get(job_id)
    if found is None:
        raise InvalidInput(f"job {job_id} not found among active jobs")
    if found["jediTaskID"] != task_id:
        raise InvalidInput(f"job {job_id} belongs to task {found['jediTaskID']}, not {task_id}")
    if found["eventService"] == ES_JUMBO:
        return await events_db.count_ready(conn, task_id, None)
    if found["jobsetID"] != jobset_id:
        raise InvalidInput(f"job {job_id} belongs to jobset {found['jobsetID']}, not {jobset_id}")
    return await events_db.count_ready(conn, task_id, jobset_id)


# --- update --------------------------------------------------------------------------------------


@dataclass(slots=True)
class UpdateResult:
    """Per report: True (written), None (acknowledged, nothing to write), False (refused), with
    the reason of each refusal; and the command for each job named."""

    returns: list[bool | None] = field(default_factory=list)
    reasons: list[str | None] = field(default_factory=list)
    commands: dict[int, str | None] = field(default_factory=dict)

    def refuse(self, reason: str) -> None:
        self.returns.append(False)
        self.reasons.append(reason)

    def accept(self, written: bool) -> None:
        self.returns.append(True if written else None)
        self.reasons.append(None)


@dataclass(slots=True)
class _Chunk:
    zip_file: Any
    items: list[Any]


def parse_updates(event_ranges: Any, version: int) -> list[_Chunk]:
    """The chunks of an update call: version 0 is one chunk without zip file.

    Raises:
        InvalidInput: not JSON, not a list, a chunk not an object, too many ranges, bad version.
    """
    if version not in (0, 1, 2):
        raise InvalidInput(f"version must be 0, 1 or 2, got {version}")
    if isinstance(event_ranges, str):
        try:
            event_ranges = json.loads(event_ranges)
        except ValueError as exc:
            raise InvalidInput(f"event_ranges is not valid JSON: {exc}") from exc
        except RecursionError:
            raise InvalidInput("event_ranges is not valid JSON: nested too deeply") from None
    if not isinstance(event_ranges, list):
        raise InvalidInput("event_ranges must be a list (or the JSON text of one)")
    if version == 0:
        chunks = [_Chunk(None, event_ranges)]
    else:
        chunks = []
        for chunk in event_ranges:
            if not isinstance(chunk, dict) or not isinstance(chunk.get("eventRanges"), list):
                raise InvalidInput(f"version {version}: each item must be an object with an eventRanges list")
            chunks.append(_Chunk(chunk.get("zipFile"), chunk["eventRanges"]))
    total = sum(len(chunk.items) for chunk in chunks)
    if total > MAX_RANGES_PER_UPDATE:
        raise InvalidInput(f"too many event ranges in one call: {total} (at most {MAX_RANGES_PER_UPDATE})")
    return chunks


@dataclass(slots=True)
class _Report:
    ids: tuple[int, int, int, int, int]
    status: str
    values: dict[str, Any]


def _bounded_int(value: Any, limit: int) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        digits = value.strip().removeprefix("-")
        if not (digits.isascii() and digits.isdigit() and len(digits) < 20):
            return None
        value = int(value)
    if isinstance(value, int) and -limit <= value <= limit:
        return value
    return None


def _bounded_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if abs(number) < 1e15 else None


def _report_values(item: dict[str, Any]) -> dict[str, Any]:
    """The measured fields of one report, as columns; values of the wrong type are dropped."""
    values: dict[str, Any] = {}
    for key, column, limit in (
        ("errorCode", "error_code", _INT32),
        ("objstoreID", "objstore_ID", _INT64),
        ("pathConvention", "path_convention", _INT32),
        ("coreCount", "core_count", _INT32),
    ):
        number = _bounded_int(item.get(key), limit)
        if number is not None:
            values[column] = number
    cpu = _bounded_float(item.get("cpuConsumptionTime"))
    if cpu is not None:
        values["cpu_consumption_time"] = cpu
    diag = item.get("errorDiag")
    if isinstance(diag, str):
        values["error_diag"] = diag[:MAX_ERROR_DIAG]
    return values


def _read_report(item: Any) -> _Report | str:
    if not isinstance(item, dict):
        return "not an object"
    ids = parse_range_id(item.get("eventRangeID"))
    if ids is None:
        return f"bad eventRangeID {str(item.get('eventRangeID'))[:120]!r}"
    status = item.get("eventStatus")
    if status not in REPORTABLE:
        return f"bad eventStatus {str(status)[:40]!r}"
    return _Report(ids, status, _report_values(item))


def _zip_row(zip_file: Any, job: dict[str, Any]) -> dict[str, Any] | str:
    """The job_files row of a zip of event outputs, or why it cannot be registered."""
    if not isinstance(zip_file, dict):
        return "zipFile is not an object"
    lfn = zip_file.get("lfn")
    if not isinstance(lfn, str) or not lfn or len(lfn) > 256:
        return "zipFile has no valid lfn"
    adler32 = zip_file.get("adler32")
    checksum = f"ad:{adler32}" if isinstance(adler32, str) and 0 < len(adler32) <= 16 else None
    return {
        "PandaID": job["PandaID"],
        "jediTaskID": job["jediTaskID"],
        "lfn": lfn,
        "type": "zipoutput",
        "status": "ready",
        "fsize": _bounded_int(zip_file.get("fsize"), _INT64),
        "checksum": checksum,
    }


async def update(conn: AsyncConnection, clock: Clock, event_ranges: Any, version: int) -> UpdateResult:
    """Apply a pilot's or Harvester's range reports (domain.md §7.3).

    finished -> ``finished``; failed -> ``failed``; fatal -> ``failed`` with one attempt left, so
    the range is hopeless once its consumer ends; running/transferring are acknowledged (None) and
    a ``sent`` range becomes ``running``. A report is refused (False) unless the range is held,
    ``sent`` or ``running`` (v2: also ``ready``), by the PandaID and attempt its id names, of a
    job in sent/running/starting/transferring (v2: also activated) of that task. Each job named
    then gets ``nEvents`` = the events of its finished, done and merged ranges.

    Commands: a job to be killed or soft-killed gets its command; a job holding no ``sent`` or
    ``running`` range whose jobset (jumbo: task) has no ready range left gets ``softkill``: it has
    nothing more to do, and stopping it now is what upstream's preemption answer asks of a pilot.
    """
    chunks = parse_updates(event_ranges, version)
    now = clock.now()
    reports: list[list[_Report | str]] = [[_read_report(item) for item in chunk.items] for chunk in chunks]
    panda_ids = {report.ids[1] for chunk in reports for report in chunk if isinstance(report, _Report)}
    jobs = await events_db.event_jobs(conn, sorted(panda_ids), lock=True)
    range_statuses = _UPDATABLE_RANGES_V2 if version == 2 else _UPDATABLE_RANGES
    job_statuses = _UPDATABLE_JOBS_V2 if version == 2 else _UPDATABLE_JOBS
    live = [panda_id for panda_id, job in jobs.items() if job["jobStatus"] in job_statuses]
    held = {
        (row["PandaID"], row["fileID"], row["job_processID"]): row
        for row in await events_db.held_for_update(conn, live, range_statuses)
    }
    result = UpdateResult()
    writes: dict[int, dict[str, Any]] = {}
    touched: set[int] = set()
    for chunk, chunk_reports in zip(chunks, reports, strict=True):
        # The chunk's zip file: (its job, its job_files row) once registered, or why it cannot be.
        zip_state: tuple[int, int] | str | None = None
        for report in chunk_reports:
            if isinstance(report, str):
                result.refuse(report)
                continue
            task_id, panda_id, file_id, process_id, attempt_nr = report.ids
            job = jobs.get(panda_id)
            if job is None:
                result.refuse(f"job {panda_id} not found among active jobs")
                continue
            if job["jediTaskID"] != task_id:
                result.refuse(f"job {panda_id} does not belong to task {task_id}")
                continue
            if job["jobStatus"] not in job_statuses:
                result.refuse(f"job {panda_id} is {job['jobStatus']}")
                continue
            result.commands.setdefault(panda_id, None)
            row = held.get((panda_id, file_id, process_id))
            if row is None or row["attemptNr"] != attempt_nr or row["status"] not in range_statuses:
                result.refuse(f"event range {range_id(*report.ids)} is not held open by job {panda_id}")
                continue
            if chunk.zip_file is not None:
                if zip_state is None:
                    registered = _zip_row(chunk.zip_file, job)
                    zip_state = (
                        registered
                        if isinstance(registered, str)
                        else (panda_id, await events_db.add_zip_file(conn, registered))
                    )
                if isinstance(zip_state, str):
                    result.refuse(zip_state)
                    continue
                if zip_state[0] != panda_id:
                    result.refuse(f"the zip file of this chunk belongs to job {zip_state[0]}")
                    continue
            values = _transition(row, report)
            if values is None:
                result.accept(False)
                continue
            values.update(report.values, modificationTime=now)
            if chunk.zip_file is not None:
                values["zipRow_ID"] = zip_state[1]  # type: ignore[index]
                if "objstore_ID" not in values:
                    objstore = _bounded_int(chunk.zip_file.get("objstoreID"), _INT64)
                    if objstore is not None:
                        values["objstore_ID"] = objstore
            row.update(values)
            writes.setdefault(row["row_ID"], {}).update(values)
            touched.add(panda_id)
            result.accept(values.get("status") in ("finished", "failed"))
    await events_db.update_ranges(conn, sorted(writes.items()))
    if touched:
        await events_db.set_job_events(conn, await events_db.processed_events(conn, sorted(touched)))
    await _commands(conn, jobs, held, result)
    return result


def _transition(row: dict[str, Any], report: _Report) -> dict[str, Any] | None:
    """The columns a report writes to its range; None: acknowledged, nothing changes."""
    if report.status in ("running", "transferring"):
        return {"status": "running"} if row["status"] == "sent" else None
    if report.status == "finished":
        return {"status": "finished"}
    if report.status == "failed":
        return {"status": "failed"}
    return {"status": "failed", "attemptNr": 1}


async def _commands(
    conn: AsyncConnection,
    jobs: dict[int, dict[str, Any]],
    held: dict[tuple[int, int, int], dict[str, Any]],
    result: UpdateResult,
) -> None:
    open_holders = {key[0] for key, row in held.items() if row["status"] in ("sent", "running")}
    ready: dict[tuple[int, int | None], int] = {}  # ranges left by (task, jobset), counted once
    for panda_id in result.commands:
        job = jobs[panda_id]
        command = job["commandToPilot"]
        if command in (COMMAND_KILL, COMMAND_SOFTKILL):
            result.commands[panda_id] = command
            continue
        if panda_id in open_holders:
            continue
        scope = (job["jediTaskID"], None if job["eventService"] == ES_JUMBO else job["jobsetID"])
        if scope not in ready:
            ready[scope] = await events_db.count_ready(conn, *scope)
        if not ready[scope]:
            result.commands[panda_id] = COMMAND_SOFTKILL


# --- statuses ------------------------------------------------------------------------------------


def parse_job_task_ids(value: Any) -> list[tuple[int, int]]:
    """(jediTaskID, PandaID) pairs from ``job_task_ids``.

    Accepted: the JSON text of a list of ``{"task_id", "panda_id"}`` objects (``job_id`` as the
    docstring names it also), one such object, or a list of texts each one object, as JSON or as
    Python's repr of a dict (panda-client repeats the parameter with ``str(dict)`` values). A
    Python literal is read by ``ast.literal_eval`` and must be a dict of integers.

    Raises:
        InvalidInput: anything else, or more than MAX_STATUS_ITEMS items.
    """
    items: list[Any]
    if isinstance(value, list):
        if len(value) > MAX_STATUS_ITEMS:
            raise InvalidInput(f"job_task_ids: at most {MAX_STATUS_ITEMS} items")
        items = [_one_text(text) for text in value]
        flat: list[Any] = []
        for item in items:
            flat.extend(item if isinstance(item, list) else [item])
        items = flat
    else:
        parsed = _one_text(value)
        items = parsed if isinstance(parsed, list) else [parsed]
    if len(items) > MAX_STATUS_ITEMS:
        raise InvalidInput(f"job_task_ids: at most {MAX_STATUS_ITEMS} items")
    pairs = []
    for item in items:
        if not isinstance(item, dict):
            raise InvalidInput("job_task_ids: each item must be an object {task_id, panda_id}")
        task_id = item.get("task_id")
        panda_id = item.get("panda_id", item.get("job_id"))
        if not all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= _INT64 for n in (task_id, panda_id)
        ):
            raise InvalidInput("job_task_ids: task_id and panda_id must be integers")
        pairs.append((task_id, panda_id))
    return pairs


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _INT64


def _one_text(text: Any) -> Any:
    if not isinstance(text, str):
        raise InvalidInput("job_task_ids must be the JSON text of a list of {task_id, panda_id}")
    try:
        return json.loads(text)
    except ValueError:
        pass
    except RecursionError:
        raise InvalidInput("job_task_ids: not valid JSON") from None
    if len(text) > 200:
        raise InvalidInput("job_task_ids: not valid JSON")
    try:
        literal = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise InvalidInput("job_task_ids: not valid JSON") from None
    if not isinstance(literal, dict) or not all(
        isinstance(key, str) and isinstance(number, int) and not isinstance(number, bool)
        for key, number in literal.items()
    ):
        raise InvalidInput("job_task_ids: a Python literal must be a dict of integers")
    return literal


async def range_statuses(
    conn: AsyncConnection, pairs: list[tuple[int, int]], reader: str | None
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{PandaID: {eventRangeID: {status, error, dialog}}}`` of the ranges each job holds.

    Args:
        reader: the caller's user name when it may read only its own jobs; None for the
            production role.

    Raises:
        NotFound: with ``reader``, a job of another user (unknown jobs just have no ranges).
    """
    panda_ids = sorted({panda_id for _, panda_id in pairs})
    if reader is not None:
        owners = await events_db.job_owners(conn, panda_ids)
        foreign = [panda_id for panda_id, owner in owners.items() if owner != reader]
        if foreign:
            raise NotFound(f"job {min(foreign)} is not yours: reading its ranges needs the production role")
    answer: dict[str, dict[str, dict[str, Any]]] = {str(panda_id): {} for _, panda_id in pairs}
    for row in await events_db.of_jobs(conn, sorted(set(pairs))):
        identifier = range_id(
            row["jediTaskID"], row["PandaID"], row["fileID"], row["job_processID"], row["attemptNr"]
        )
        answer[str(row["PandaID"])][identifier] = {
            "status": row["status"],
            "error": row["error_code"],
            "dialog": row["error_diag"],
        }
    return answer


async def task_progress(conn: AsyncConnection, task_id: int) -> dict[str, int]:
    """Ranges of a task by status (for ``bamboo events``)."""
    return await events_db.status_counts(conn, task_id)
