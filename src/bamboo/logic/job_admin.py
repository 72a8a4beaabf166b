"""Job administration (api-v1.md §2.2): kill, reassign, pilot commands, debug mode, direct submission,
the offline execution script, the archive-inclusive description and analysis metadata.

Bamboo has no separate defined or waiting table, and final jobs stay in the active ``jobs`` table
until the archiver moves them to ``jobs_archive`` (logic/archive.py), so the "table" rules of the
contract are expressed on job statuses: the *archived* jobs are those in a final status
(``JOB_FINAL``), wherever they are. Commands (kill, set_command, debug mode) act on active jobs
only; an archived job is final anyway.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.auth.dn import clean_user_id
from bamboo.auth.identity import Identity, primary_working_group, working_group_production_roles
from bamboo.db import archive as archive_db
from bamboo.db import job_admin as admin_db
from bamboo.db import jobs as jobs_db
from bamboo.db import notify, sequences
from bamboo.db import queues as queues_db
from bamboo.db.schema import FILE_ATTRIBUTES, JOB_ATTRIBUTES
from bamboo.logic import jobs as job_reads
from bamboo.logic import killing, rebrokerage
from bamboo.logic.clock import Clock
from bamboo.logic.errors import InvalidInput
from bamboo.logic.states import COMMAND_KILL, JOB_FINAL

log = logging.getLogger(__name__)

# --- reads -------------------------------------------------------------------------------------------


async def descriptions_incl_archive(
    conn: AsyncConnection, job_ids: Sequence[int]
) -> list[dict[str, Any] | None]:
    """job/get_description_incl_archive: the records of active and archived jobs.

    Bamboo has one archive, which job/get_description reads as well (see there), so both answer
    the same; archived jobs are kept ``job_archive_retention_days`` days.
    """
    return await job_reads.descriptions(conn, job_ids)


ANALYSIS_METADATA_LABELS = ("user",)
MAX_METADATA_JOBS = 10_000
NO_METADATA = "No metadata found"


async def analysis_metadata(conn: AsyncConnection, task_id: int) -> dict[str, Any]:
    """job/get_metadata_for_analysis_jobs: ``{"<PandaID>": decoded metadata}`` of the task's finished
    user jobs. Metadata that is not JSON is left out (it cannot be decoded for the client)."""
    found: dict[str, Any] = {}
    for panda_id, text in await admin_db.finished_metadata(
        conn, task_id, ANALYSIS_METADATA_LABELS, MAX_METADATA_JOBS
    ):
        if not text or text == "NULL":
            continue
        try:
            found[str(panda_id)] = orjson.loads(text)
        except orjson.JSONDecodeError:
            log.info("job %s: metadata is not JSON, left out", panda_id)
    return found


# --- offline execution script ------------------------------------------------------------------------

DEFAULT_SCRIPT_DAYS = 30
MAX_SCRIPT_DAYS = 3650


def _not_found(job_id: int, days: int | None) -> str:
    if days is None:
        return (
            f"ERROR: Cannot get PandaID={job_id} in DB for the last {DEFAULT_SCRIPT_DAYS} days. "
            "You may add &days=N to the URL"
        )
    return (
        f"ERROR: Cannot get PandaID={job_id} in DB for the last {days} days. "
        "You may change &days=N in the URL"
    )


async def offline_script(conn: AsyncConnection, clock: Clock, job_id: int, days: int | None) -> str:
    """job/generate_offline_execution_script: the script, or an ``ERROR:`` line (the answer either way).

    The job must have been modified within the last ``days`` days (30 by default).
    """
    if days is not None and not 1 <= days <= MAX_SCRIPT_DAYS:
        return f"ERROR: days must be between 1 and {MAX_SCRIPT_DAYS}"
    found = await archive_db.get_many_incl_archive(conn, [job_id])
    job = found.get(job_id)
    since = clock.now() - timedelta(days=days or DEFAULT_SCRIPT_DAYS)
    if job is None or (job["modificationTime"] is not None and job["modificationTime"] < since):
        return _not_found(job_id, days)
    files = (await archive_db.files_of_incl_archive(conn, [job_id]))[job_id]
    return render_script(job, files)


def _quoted(value: Any) -> str:
    return shlex.quote("" if value is None else str(value))


# How much of the pilot's last log and of the payload's stdout the script carries, from their end.
MAX_SCRIPT_REPORT_CHARS = 20_000


def _commented(title: str, text: str | None) -> list[str]:
    """``text`` (its end) as bash comment lines under a title; control characters but tabs are
    dropped, so nothing in it can end a comment early or reach the terminal."""
    if not text:
        return []
    cut = len(text) > MAX_SCRIPT_REPORT_CHARS
    lines = [f"# --- {title}{' (end only)' if cut else ''} ---"]
    for line in text[-MAX_SCRIPT_REPORT_CHARS:].split("\n"):
        clean = "".join(ch for ch in line if ch == "\t" or ch.isprintable())
        lines.append(f"# {clean}".rstrip())
    return lines


def render_script(job: Mapping[str, Any], files: Sequence[Mapping[str, Any]]) -> str:
    """A bash script that re-runs the job's payload in the current directory, as the pilot would:
    fetch the transformation when it is a URL, check that the input files are present, then run
    the transformation with the job parameters (which are shell words, as the pilot treats them).
    The pilot's last log and the payload's stdout, when the pilot sent them, follow as comments."""
    inputs = [f["lfn"] for f in files if f["type"] == "input"]
    outputs = [f["lfn"] for f in files if f["type"] in ("output", "log")]
    transformation = job["transformation"] or ""
    lines = [
        "#!/bin/bash",
        f"# Offline execution of PandaID={job['PandaID']} (jediTaskID={job['jediTaskID']}, "
        f"attemptNr={job['attemptNr']}, computingSite={job['computingSite']}).",
        "# Put the input files in the current directory, then run this script.",
        "set -e",
        f"export PANDAID={_quoted(job['PandaID'])}",
        f"export PANDA_JEDITASKID={_quoted(job['jediTaskID'])}",
        f"export PANDA_ATTEMPT_NR={_quoted(job['attemptNr'])}",
        f"export PANDA_RELEASE={_quoted(job['AtlasRelease'])}",
        f"export PANDA_CMTCONFIG={_quoted(job['cmtConfig'])}",
        f"export PANDA_CONTAINER={_quoted(job['container_name'])}",
        f"export PANDA_CORE_COUNT={_quoted(job['coreCount'] or 1)}",
        f"TRANSFORMATION={_quoted(transformation)}",
        f"JOB_PARAMETERS={_quoted(job['jobParameters'])}",
        f"INPUT_FILES=({' '.join(_quoted(lfn) for lfn in inputs)})",
        f"# Outputs the job is expected to write: {' '.join(outputs) or '(none)'}",
        'for f in "${INPUT_FILES[@]}"; do',
        '  if [ ! -e "$f" ]; then echo "missing input file: $f" >&2; exit 1; fi',
        "done",
        'case "$TRANSFORMATION" in',
        "  http://*|https://*)",
        '    curl -sSfL -o ./payload.trf "$TRANSFORMATION"',
        "    chmod +x ./payload.trf",
        "    TRANSFORMATION=./payload.trf",
        "    ;;",
        "esac",
        'eval "$(printf %q "$TRANSFORMATION") $JOB_PARAMETERS"',
        *_commented("pilot log of the last attempt", job.get("pilot_log")),
        *_commented("payload stdout of the last attempt", job.get("stdout")),
        "",
    ]
    return "\n".join(lines)


# --- kill ---------------------------------------------------------------------------------------------

# Codes that let the production role kill user (analysis) jobs (api-v1.md §2.2 job/kill).
_PROD_KILLS_USER_JOBS = frozenset({2, 4, 7, 8, 9, 10, 50, 51, 52, 91, 99})
_USER_LABELS = frozenset({"user", "panda"})
_WG_LABELS = frozenset({"managed", "test"})
# The sub-status a kill code leaves on the job (api-v1.md §3.6), unless kill_options names one.
_SUB_STATUS_OF_CODE = {2: "toreassign", 4: "toreassign", 51: "toreassign", 55: "taskdone"}
KEEP_UNMERGED = "keepUnmerged"
SUB_STATUS_OPTION = "jobSubStatus="
MAX_KILL_OPTIONS = 10
MAX_JOB_IDS = 5500
MAX_SUB_STATUS = 80


@dataclass(frozen=True, slots=True)
class KillOptions:
    keep_unmerged: bool = False
    sub_status: str | None = None


def parse_kill_options(options: Sequence[str]) -> KillOptions:
    """The kill options; an unknown or malformed one is an :class:`InvalidInput` naming it."""
    if len(options) > MAX_KILL_OPTIONS:
        raise InvalidInput(f"too many kill_options (at most {MAX_KILL_OPTIONS})")
    keep = False
    sub_status = None
    for option in options:
        if option == KEEP_UNMERGED:
            keep = True
        elif option.startswith(SUB_STATUS_OPTION):
            sub_status = option[len(SUB_STATUS_OPTION) :]
            if not sub_status or len(sub_status) > MAX_SUB_STATUS or not sub_status.isprintable():
                raise InvalidInput(
                    f"kill_options: jobSubStatus must be 1 to {MAX_SUB_STATUS} printable characters"
                )
        else:
            raise InvalidInput(f"unknown kill option {option!r} (known: keepUnmerged, jobSubStatus=<status>)")
    return KillOptions(keep, sub_status)


def may_kill(job: Mapping[str, Any], identity: Identity, production: bool, code: int | None) -> bool:
    """Who may kill a job: production (user jobs only with the codes that allow it), a working-group
    production role for managed/test jobs of that group, else the job's owner."""
    label = job["prodSourceLabel"]
    if production and (label not in _USER_LABELS or code in _PROD_KILLS_USER_JOBS):
        return True
    if label in _WG_LABELS and job["workingGroup"]:
        if any(
            job["workingGroup"].endswith(group) for group in working_group_production_roles(identity.fqans)
        ):
            return True
    owner = job["prodUserName"] or (clean_user_id(job["prodUserID"]) if job["prodUserID"] else None)
    return owner is not None and owner == identity.user_name


async def kill_jobs(
    conn: AsyncConnection,
    clock: Clock,
    identity: Identity,
    job_ids: Sequence[int],
    code: int | None,
    *,
    production: bool,
    options: KillOptions,
    requester: str,
) -> list[bool]:
    """job/kill: one boolean per requested id, in order: whether that job was killed.

    Jobs already final (the archive, upstream) and jobs the caller may not kill give False. Killing
    goes through :func:`bamboo.logic.killing.kill`, so a killed job ends at once with the code's
    status and diagnostic and a pilot still running it is told ``tobekilled``. ``keepUnmerged``
    concerns event-service merge jobs only; Bamboo has no event service, so it changes nothing.
    """
    if code not in killing.KILL_CODES:
        raise InvalidInput(f"unknown kill code {code}")
    if len(job_ids) > MAX_JOB_IDS:
        raise InvalidInput(f"too many job_ids (at most {MAX_JOB_IDS})")
    found = await admin_db.lock_jobs(conn, job_ids)
    allowed = [
        job
        for job in found.values()
        if job["jobStatus"] not in JOB_FINAL and may_kill(job, identity, production, code)
    ]
    killed = set(await killing.kill(conn, clock, allowed, code, requester))
    sub_status = options.sub_status or (_SUB_STATUS_OF_CODE.get(code) if code is not None else None)
    if killed and sub_status:
        await admin_db.set_columns(conn, sorted(killed), jobSubStatus=sub_status)
    if any(found[panda_id]["jediTaskID"] for panda_id in killed):
        await notify.announce(conn, "generator")
    return [job_id in killed for job_id in job_ids]


# --- reassign ----------------------------------------------------------------------------------------

# Jobs not yet handed to a pilot. Upstream reassigns only the jobs of its defined and waiting tables;
# Bamboo makes jobs dispatchable at once (no defined table), so every job still queued qualifies.
REASSIGNABLE = killing.QUEUED_JOB_STATUSES


async def reassign(conn: AsyncConnection, clock: Clock, job_ids: Sequence[int], requester: str) -> list[int]:
    """job/reassign: end the queued task jobs among ``job_ids`` as ``closed``/``toreassign`` (code 51)
    and give their inputs back to the task, so the generator makes new jobs and brokers them again.

    Jobs of no task (direct submissions) have nothing to recreate them and are left as they are.
    Returns the PandaIDs reassigned.
    """
    if len(job_ids) > MAX_JOB_IDS:
        raise InvalidInput(f"too many job_ids (at most {MAX_JOB_IDS})")
    found = await admin_db.lock_jobs(conn, job_ids)
    queued = [job for job in found.values() if job["jobStatus"] in REASSIGNABLE and job["jediTaskID"]]
    return await rebrokerage.rebroker(conn, clock, queued, requester)


# --- pilot commands and debug mode -------------------------------------------------------------------

MAX_COMMAND_LENGTH = 250
COMMAND_RECEIVED = "command received"


async def set_command(conn: AsyncConnection, clock: Clock, job_id: int, command: str) -> tuple[bool, str]:
    """job/set_command: the command the pilot of a live job receives at its next update."""
    if len(command) >= MAX_COMMAND_LENGTH:
        return False, f"command string too long. must be less than {MAX_COMMAND_LENGTH} chars"
    if not command or not command.isprintable():
        return False, "command must be a non-empty printable string"
    job = (await admin_db.lock_jobs(conn, [job_id])).get(job_id)
    if job is None or job["jobStatus"] in JOB_FINAL:
        return False, f"no active job with PandaID={job_id}"
    if job["commandToPilot"] == COMMAND_KILL:
        return False, "job is being killed"
    await jobs_db.update(conn, job_id, commandToPilot=command, modificationTime=clock.now())
    return True, COMMAND_RECEIVED


DEBUG_TOKEN = "debug"  # noqa: S105 - a specialHandling token, not a secret
DEBUG_STATUSES = ("defined", "activated", "running", "sent", "starting", "assigned")
DEBUG_SUCCEEDED = "Succeeded"
DEBUG_UNCHANGED = "Already set accordingly"
_SPECIAL_HANDLING_LENGTH = 80


def _debug_permission(job: Mapping[str, Any], identity: Identity, production: bool) -> str | None:
    if production:
        return None
    group = primary_working_group(identity.fqans)
    if group is not None and job["workingGroup"]:
        if job["workingGroup"].split("-")[-1].lower() == group:
            return None
        return f"Permission denied. Not the production manager for workingGroup={job['workingGroup']}"
    if job["prodUserName"] == identity.user_name:
        return None
    return "Permission denied. Not the owner or production manager"


async def set_debug_mode(
    conn: AsyncConnection, clock: Clock, identity: Identity, job_id: int, mode: bool, *, production: bool
) -> tuple[bool, str]:
    """job/set_debug_mode: add or remove the ``debug`` token of the job's specialHandling.

    The pilot's next update answer then carries ``debug`` (logic/pilot.py). ``success`` says
    whether the job is in the mode asked (DESIGN §9.3), so ``Already set accordingly`` is a success.
    """
    job = (await admin_db.lock_jobs(conn, [job_id])).get(job_id)
    if job is None or job["jobStatus"] in JOB_FINAL:
        return False, f"PandaID={job_id} not found in active DB"
    if job["jobStatus"] not in DEBUG_STATUSES:
        return (
            False,
            f"Cannot set debugMode since the job status is {job['jobStatus']} "
            f"which is not in one of {list(DEBUG_STATUSES)}",
        )
    denied = _debug_permission(job, identity, production)
    if denied:
        return False, denied
    tokens = [token for token in (job["specialHandling"] or "").split(",") if token]
    if (DEBUG_TOKEN in tokens) == mode:
        return True, DEBUG_UNCHANGED
    tokens = [*tokens, DEBUG_TOKEN] if mode else [token for token in tokens if token != DEBUG_TOKEN]
    value = ",".join(tokens) or None
    if value is not None and len(value) > _SPECIAL_HANDLING_LENGTH:
        return False, "Failed to update DB"
    await jobs_db.update(conn, job_id, specialHandling=value, modificationTime=clock.now())
    return True, DEBUG_SUCCEEDED


# --- direct submission --------------------------------------------------------------------------------

MAX_SUBMITTED_JOBS = 5000
MAX_FILES_PER_JOB = 5000
MAX_TEXT_FIELD = 100_000
NO_JOBS = "No jobs were submitted"
VALID_JOB_LABELS = (None, "", "NULL", "user", "managed")
# Labels whose submissions are answered with their jobsetID (analysis and pilot tests).
_JOBSET_LABELS = frozenset({"user", "panda", "ptest", "rc_test", "rc_test2", "rc_alrb"})
FILE_TYPES = frozenset({"input", "output", "log", "pseudo_input"})
_INT32 = 2**31 - 1
_INT64 = 2**63 - 1
_DATETIME_KEY = "_datetime_object"
# Attributes the server sets itself whatever the submission says.
_SERVER_SET = frozenset(
    {
        "PandaID",
        "creationTime",
        "creationHost",
        "modificationTime",
        "modificationHost",
        "stateChangeTime",
        "jobStatus",
        "commandToPilot",
        "prodUserID",
        "prodUserName",
        "lockedby",
        "startTime",
        "endTime",
    }
)
_REQUIRED = ("prodSourceLabel", "computingSite", "transformation")
_JOB_TYPES = dict(JOB_ATTRIBUTES)
_FILE_TYPES_OF = dict(FILE_ATTRIBUTES)
_JOB_NAMES = tuple(name for name, _ in JOB_ATTRIBUTES)
_FILE_NAMES = tuple(name for name, _ in FILE_ATTRIBUTES)


def _value(where: str, name: str, code: str, raw: Any) -> Any:
    """One attribute value checked against its column type; InvalidInput names the field.

    The string ``"NULL"`` is panda-client's marker of an unset attribute, stored as NULL as upstream does.
    """
    if raw is None or raw == "NULL":
        return None
    if code in ("B", "i", "P"):
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise InvalidInput(f"{where}: {name} must be an integer")
        bound = _INT32 if code == "i" else _INT64
        if not -bound - 1 <= raw <= bound:
            raise InvalidInput(f"{where}: {name} is out of range")
        return raw
    if code == "f":
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise InvalidInput(f"{where}: {name} must be a number")
        if raw != raw or raw in (float("inf"), float("-inf")):
            raise InvalidInput(f"{where}: {name} must be a finite number")
        return float(raw)
    if code == "t":
        text = raw.get(_DATETIME_KEY) if isinstance(raw, dict) and len(raw) == 1 else None
        if not isinstance(text, str):
            raise InvalidInput(
                f'{where}: {name} must be {{"{_DATETIME_KEY}": "YYYY-MM-DD HH:MM:SS[.ffffff]"}}'
            )
        for pattern in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S"):
            try:
                return datetime.strptime(text, pattern).replace(tzinfo=UTC)
            except ValueError:
                continue
        raise InvalidInput(f"{where}: {name} is not a date and time (YYYY-MM-DD HH:MM:SS[.ffffff])")
    if not isinstance(raw, str):
        raise InvalidInput(f"{where}: {name} must be a string")
    limit = int(code[1:]) if code.startswith("s") else MAX_TEXT_FIELD
    if len(raw) > limit:
        raise InvalidInput(f"{where}: {name} is longer than {limit} characters")
    if "\x00" in raw:
        raise InvalidInput(f"{where}: {name} contains a NUL character")
    return raw


def _positional(where: str, values: Any, names: Sequence[str], kind: str) -> list[Any]:
    if not isinstance(values, list):
        raise InvalidInput(f"{where}: a {kind} must be an array of its attribute values")
    if len(values) > len(names):
        raise InvalidInput(f"{where}: a {kind} has at most {len(names)} attribute values, got {len(values)}")
    return values


@dataclass(slots=True)
class _Parsed:
    job: dict[str, Any]
    files: list[dict[str, Any]]


def _parse_file(where: str, raw: Any) -> dict[str, Any]:
    # A serialized file is its FileSpec values followed by one null (an upstream placeholder).
    if isinstance(raw, list) and len(raw) == len(_FILE_NAMES) + 1:
        if raw[-1] is not None:
            raise InvalidInput(f"{where}: the value after the file attributes must be null")
        raw = raw[:-1]
    values = _positional(where, raw, _FILE_NAMES, "file")
    spec = {
        name: _value(where, name, _FILE_TYPES_OF[name], value)
        for name, value in zip(_FILE_NAMES, values, strict=False)
    }
    spec.pop("row_ID", None)
    if not spec.get("lfn"):
        raise InvalidInput(f"{where}: lfn is required")
    if spec.get("type") not in FILE_TYPES:
        raise InvalidInput(f"{where}: type must be one of {sorted(FILE_TYPES)}")
    return spec


def _parse_job(index: int, raw: Any) -> _Parsed:
    where = f"job {index}"
    if not isinstance(raw, list):
        raise InvalidInput(f"{where}: a job must be an array of its attribute values")
    files_raw: Any = []
    if raw and isinstance(raw[-1], list):
        files_raw = raw[-1]
        raw = raw[:-1]
    values = _positional(where, raw, _JOB_NAMES, "job")
    # Every value is checked, even of the attributes the server then sets itself.
    checked = {
        name: _value(where, name, _JOB_TYPES[name], value)
        for name, value in zip(_JOB_NAMES, values, strict=False)
    }
    job = {name: value for name, value in checked.items() if name not in _SERVER_SET}
    for name in _REQUIRED:
        if not job.get(name):
            raise InvalidInput(f"{where}: {name} is required")
    label = job.get("job_label")
    if label not in VALID_JOB_LABELS:
        raise InvalidInput(f"job_label={label} is not valid")
    if len(files_raw) > MAX_FILES_PER_JOB:
        raise InvalidInput(f"{where}: at most {MAX_FILES_PER_JOB} files per job")
    files = [_parse_file(f"{where} file {n}", item) for n, item in enumerate(files_raw)]
    return _Parsed(job, files)


def deserialize(text: str) -> list[_Parsed]:
    """The submitted jobs, checked field by field; the first :data:`MAX_SUBMITTED_JOBS` are kept."""
    try:
        decoded = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"Failed to deserialize jobs: {exc}") from exc
    if not isinstance(decoded, list):
        raise InvalidInput("Failed to deserialize jobs: expected a JSON array of jobs")
    if not decoded:
        raise InvalidInput(NO_JOBS)
    return [_parse_job(index, raw) for index, raw in enumerate(decoded[:MAX_SUBMITTED_JOBS])]


async def submit(
    conn: AsyncConnection, clock: Clock, identity: Identity, text: str, *, production: bool
) -> list[list[Any]]:
    """job/submit: store directly submitted jobs; ``[PandaID, jobDefinitionID, jobsetID or jobName]``
    per job, in order.

    The jobs skip task processing and, there being no data to stage, are ``activated`` at the
    ``computingSite`` they name (which must be a known queue), ready for the next pilot.
    """
    parsed = deserialize(text)
    first = parsed[0].job
    vo = first.get("VO") or identity.vo or "atlas"
    submitter = identity.user_name
    if vo == "lsst" and first.get("prodUserName"):
        submitter = clean_user_id(first["prodUserName"])
    sites: dict[str, bool] = {}
    for index, item in enumerate(parsed):
        if item.job["prodSourceLabel"] == "managed" and not production:
            raise InvalidInput(
                f"{identity.handler_dn} is missing production for prodSourceLabel=managed submission"
            )
        site = item.job["computingSite"]
        if site not in sites:
            sites[site] = await queues_db.get(conn, site) is not None
        if not sites[site]:
            raise InvalidInput(f"job {index}: computingSite={site} is not a known queue")
    panda_ids = await sequences.allocate(conn, sequences.PANDA_ID, len(parsed))
    now = clock.now()
    rows: list[dict[str, Any]] = []
    files: list[dict[str, Any]] = []
    answers: list[list[Any]] = []
    for panda_id, item in zip(panda_ids, parsed, strict=True):
        job = {name: None for name in _JOB_NAMES} | item.job
        label = job["prodSourceLabel"]
        if label in _JOBSET_LABELS and job["jobsetID"] is None:
            job["jobsetID"] = panda_ids[0]
        job.update(
            PandaID=panda_id,
            creationTime=now,
            creationHost="bamboo",
            modificationTime=now,
            stateChangeTime=now,
            jobStatus="activated",
            commandToPilot=None,
            prodUserID=identity.handler_dn[:250],
            prodUserName=submitter[:60],
            VO=job["VO"] or vo,
            jobDefinitionID=job["jobDefinitionID"] or 0,
            jobName=job["jobName"] or f"direct.{panda_id}",
            attemptNr=job["attemptNr"] or 1,
            currentPriority=job["currentPriority"] if job["currentPriority"] is not None else 0,
            assignedPriority=job["assignedPriority"] if job["assignedPriority"] is not None else 0,
            jobParameters=job["jobParameters"] or "",
            origin_panda_id=panda_id,
        )
        rows.append(job)
        for spec in item.files:
            files.append({**spec, "PandaID": panda_id, "status": spec.get("status") or "unknown"})
        tail: Any = {"jobsetID": job["jobsetID"]} if label in _JOBSET_LABELS else job["jobName"]
        answers.append([panda_id, job["jobDefinitionID"], tail])
    await jobs_db.insert(conn, rows, files)
    log.info("%s submitted %d jobs directly", submitter, len(rows))
    return answers
