"""Tasks: submission and the read endpoints of ``/api/v1/task/*`` (api-v1.md §2.1)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import re2
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.auth.identity import Identity
from bamboo.db import jobs as jobs_db
from bamboo.db import notify, sequences
from bamboo.db import tasks as tasks_db
from bamboo.db.schema import TASK_FIELDS
from bamboo.db.schema import tasks as tasks_table
from bamboo.db.types import UTCDateTime
from bamboo.logic import resource_types, shares, taskparams
from bamboo.logic.clock import Clock
from bamboo.logic.errors import BambooError, InvalidInput
from bamboo.logic.states import TASK_FINAL

DEFAULT_PRIORITY = 100
ANALYSIS_PRIORITY = 1000
# Task-parameter keys copied onto the task record, with the column they fill.
_COPIED = {
    "taskName": "taskName",
    "vo": "vo",
    "prodSourceLabel": "prodSourceLabel",
    "processingType": "processingType",
    "workingGroup": "workingGroup",
    "countryGroup": "countryGroup",
    "campaign": "campaign",
    "architecture": "architecture",
    "transUses": "transUses",
    "transHome": "transHome",
    "transPath": "transPath",
    "site": "site",
    "cloud": "cloud",
    "coreCount": "coreCount",
    "ramCount": "ramCount",
    "baseRamCount": "baseRamCount",
    "walltime": "walltime",
    "cpuTime": "cpuTime",
    "mergeRamCount": "mergeRamCount",
    "mergeCoreCount": "mergeCoreCount",
    "container_name": "container_name",
    "framework": "framework",
    "gshare": "gshare",
}
_RAM_UNIT_KEYS = ("ramUnit", "ramCountUnit")
_TASK_ID_IN_MESSAGE = re.compile(r"jediTaskID=(\d+)")
_REGEX_CHARS = set("^$*+?\\|()")
MAX_FILTER_PATTERN_CHARS = 256
_RE2_OPTIONS = re2.Options()
# A refused pattern is answered to the client; RE2 need not also write it to stderr.
_RE2_OPTIONS.log_errors = False
MAX_DETAIL_WINDOW = timedelta(days=90)


class SubmissionRefused(BambooError):
    """task/submit refused with one of PanDA's return codes (data = the code)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message, data=code)
        self.code = code


async def submit(
    conn: AsyncConnection,
    clock: Clock,
    identity: Identity,
    params: dict[str, Any],
    parent_tid: int | None,
    *,
    is_production: bool,
) -> int:
    """Register a new task from its parameters and return its jediTaskID.

    Non-production callers always own what they submit and get analysis defaults (domain.md §1.1);
    the parameters are validated now so the caller learns about a bad key at once.

    Raises:
        InvalidInput: a parameter is missing or malformed (the message names it).
        SubmissionRefused: a production prodSourceLabel without the production role, a parent task
            that cannot be found or a unique task name that is taken.
    """
    if len(orjson.dumps(params)) > taskparams.MAX_TASK_PARAMS_BYTES:
        raise InvalidInput(f"task parameters larger than {taskparams.MAX_TASK_PARAMS_BYTES} bytes")
    params = dict(params)
    if not is_production or not params.get("userName"):
        params["userName"] = identity.user_name
    if not is_production or "taskType" not in params:
        params["taskType"] = "anal"
        params["taskPriority"] = ANALYSIS_PRIORITY
    if parent_tid is not None:
        params["parent_tid"] = parent_tid
    taskparams.validate(params)
    if not is_production and params["prodSourceLabel"] in taskparams.PRODUCTION_SOURCE_LABELS:
        raise SubmissionRefused(
            4, f"prodSourceLabel={params['prodSourceLabel']} requires the production role; use user"
        )
    user_name = params["userName"]
    if params.get("parentTaskName"):
        parent = await tasks_db.newest_by_name(conn, user_name, params["parentTaskName"])
        if parent is None:
            raise SubmissionRefused(
                11, f'failed to find parent with user="{user_name}" name={params["parentTaskName"]}'
            )
        params["parent_tid"] = parent["jediTaskID"]
    if params.get("uniqueTaskName") and params["taskType"] == "anal":
        existing = await tasks_db.newest_by_name(conn, user_name, params["taskName"])
        if existing is not None:
            if existing["status"] not in TASK_FINAL:
                raise SubmissionRefused(
                    2,
                    f"jediTaskID={existing['jediTaskID']} is in the {existing['status']} state for "
                    f"outDS={params['taskName']}. You cannot submit duplicated tasks. ",
                )
            raise SubmissionRefused(
                4,
                f"jediTaskID={existing['jediTaskID']} with the same name ended in {existing['status']}; "
                "re-executing a finished task with new input is not supported yet, use a new taskName",
            )
    (task_id,) = await sequences.allocate(conn, sequences.JEDI_TASK_ID)
    now = clock.now()
    priority = params.get("taskPriority") or DEFAULT_PRIORITY
    record: dict[str, Any] = {column: params.get(key) for key, column in _COPIED.items()}
    record.update(
        jediTaskID=task_id,
        status="registered",
        superStatus="registered",
        userName=user_name,
        taskType=params["taskType"],
        taskPriority=priority,
        currentPriority=params.get("currentPriority") or priority,
        ramUnit=next((params[key] for key in _RAM_UNIT_KEYS if params.get(key)), None),
        parent_tid=params.get("parent_tid"),
        reqID=params.get("reqID") or task_id,
        goal=taskparams.goal_per_mille(params),
        creationDate=now,
        modificationTime=now,
        stateChangeTime=now,
        attemptNr=0,
        task_params=orjson.dumps(params).decode(),
        submitter_dn=identity.dn,
    )
    # The task's resource type (domain.md §6.3) before its share: shares may select on it.
    record["resource_type"] = resource_types.match_task(
        await resource_types.resource_type_list(conn),
        params.get("coreCount"),
        params.get("ramCount"),
        params.get("baseRamCount"),
        ram_per_core=(record["ramUnit"] or "MBPerCore").lower().startswith("mbpercore"),
    )
    record["gshare"] = await shares.assign(conn, record)
    await tasks_db.insert(conn, record)
    await notify.announce(conn, "refiner")
    return task_id


def submission_message(task_id: int) -> str:
    return f"succeeded. new jediTaskID={task_id}"


def names_no_task(task_id: int) -> bool:
    """Whether ``task_id`` lies beyond the jediTaskID column, so no task can have it.

    Endpoints whose task id is unannotated (upstream's) cast it with ``int()`` unbounded; such a
    number would fail the query (SQLite cannot bind it) instead of finding nothing.
    """
    return taskparams.column_problem(tasks_table.c.jediTaskID, task_id) is not None


async def status(conn: AsyncConnection, task_id: int) -> str | None:
    if names_no_task(task_id):
        return None
    return await tasks_db.status_of(conn, task_id)


async def job_ids(conn: AsyncConnection, task_id: int) -> list[int]:
    return await jobs_db.ids_of_task(conn, task_id)


async def task_parameters(conn: AsyncConnection, task_id: int) -> dict[str, Any] | None:
    task = await tasks_db.get(conn, task_id)
    return orjson.loads(task["task_params"]) if task else None


async def details(
    conn: AsyncConnection, task_id: int, *, include_parameters: bool, include_status: bool
) -> dict[str, Any] | None:
    """task/get_details: input/output dataset names, file statistics and job ids."""
    task = await tasks_db.get(conn, task_id)
    if task is None:
        return None
    datasets = await tasks_db.datasets(conn, task_id)
    inputs = [d for d in datasets if d["type"] == "input"]
    outputs = [d for d in datasets if d["type"] in ("output", "log")]
    counts = await tasks_db.file_status_counts(
        conn,
        [
            d["datasetID"]
            for d in datasets
            if d["masterID"] is None and d["type"] in ("input", "pseudo_input")
        ],
    )
    by_status: dict[str, int] = {}
    for (_, file_status), count in counts.items():
        label = "tobedone" if file_status == "ready" else file_status
        by_status[label] = by_status.get(label, 0) + count
    result: dict[str, Any] = {
        "inDS": ",".join(d["containerName"] or d["datasetName"] for d in inputs),
        "outDS": ",".join(d["containerName"] or d["datasetName"] for d in outputs),
        "statistics": ",".join(f"{name}*{count}" for name, count in sorted(by_status.items())),
        "PandaID": await jobs_db.ids_of_task(conn, task_id),
        "mergeStatus": None,
        "mergePandaID": [],
    }
    if include_status:
        result["status"] = task["status"]
    if include_parameters:
        result["cliParams"] = orjson.loads(task["task_params"]).get("cliParams")
    return result


def _master_totals(datasets: list[dict[str, Any]]) -> dict[str, int]:
    masters = [d for d in datasets if d["masterID"] is None and d["type"] in ("input", "pseudo_input")]
    totals = {
        key: sum(d[key] for d in masters)
        for key in ("nFiles", "nFilesFinished", "nFilesFailed", "nFilesMissing")
    }
    n_files = totals["nFiles"]
    totals["pctFinished"] = round(100 * totals["nFilesFinished"] / n_files) if n_files else 0
    totals["pctFailed"] = round(100 * totals["nFilesFailed"] / n_files) if n_files else 0
    return totals


def _detail_record(task: dict[str, Any], datasets: list[dict[str, Any]]) -> dict[str, Any]:
    params = orjson.loads(task["task_params"])
    record = {field: task[field] for field in TASK_FIELDS}
    record["job_execution_params"] = task["job_params_template"]
    record["task_creation_arguments"] = params.get("cliParams")
    record["raw_task_params"] = params
    record.update(_master_totals(datasets))
    return record


async def detailed_info(conn: AsyncConnection, task_id: int) -> dict[str, Any] | None:
    task = await tasks_db.get(conn, task_id)
    if task is None:
        return None
    return _detail_record(task, await tasks_db.datasets(conn, task_id))


def _parse_filters(filters: str | None) -> tuple[dict[str, Any], dict[str, re2._Regexp]]:
    """Split ``filters`` into SQL equality criteria and regular expressions on the records.

    Patterns run on RE2, whose time is linear in the text, so a pattern such as ``(.|.)*X`` cannot
    hold a worker; a pattern RE2 cannot compile (back-references, look-arounds) is refused.
    """
    if not filters:
        return {}, {}
    try:
        decoded = orjson.loads(filters)
    except orjson.JSONDecodeError as exc:
        raise BambooError("filters is not valid JSON") from exc
    if not isinstance(decoded, dict):
        raise BambooError("filters must be a JSON object")
    equal: dict[str, Any] = {}
    patterns: dict[str, re2._Regexp] = {}
    for field, value in decoded.items():
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise BambooError(f"filters: the value of {field} must be a string or an integer")
        text = str(value)
        if "\x00" in text:
            raise BambooError(f"filters: the value of {field} must not contain NUL characters")
        if isinstance(value, str) and _REGEX_CHARS & set(text):
            patterns[field] = _compile_pattern(field, text)
        else:
            if field not in TASK_FIELDS:
                raise BambooError("Failed to retrieve task IDs")
            equal[field] = _filter_value(field, value)
    return equal, patterns


def _compile_pattern(field: str, text: str) -> re2._Regexp:
    if len(text) > MAX_FILTER_PATTERN_CHARS:
        raise BambooError(
            f"filters: the regular expression for {field} is longer than "
            f"{MAX_FILTER_PATTERN_CHARS} characters"
        )
    try:
        return re2.compile(text, options=_RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else exc
        raise BambooError(
            f"filters: the regular expression for {field} is invalid or not supported "
            f"(no back-references or look-arounds): {reason}"
        ) from exc


def _filter_value(field: str, value: str | int) -> Any:
    """The equality value for a task column, in the column's type (a mismatch is a clear refusal)."""
    column = tasks_table.c[field]
    if isinstance(column.type, sa.Integer):
        number = value if isinstance(value, int) else _parse_int(value)
        if number is None:
            raise BambooError(f"filters: the value of {field} must be an integer, got {str(value)[:40]!r}")
        problem = taskparams.column_problem(column, number)
        if problem:
            raise BambooError(f"filters: the value of {field} {problem}")
        return number
    if isinstance(column.type, sa.String):
        return str(value)
    if isinstance(column.type, UTCDateTime):
        try:
            return datetime.strptime(str(value), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        except ValueError as exc:
            raise BambooError(f"filters: the value of {field} must be a time YYYY-MM-DD HH:MM:SS") from exc
    raise BambooError(f"filters: {field} cannot be filtered on")


def _parse_int(text: str) -> int | None:
    digits = text[1:] if text[:1] == "-" else text
    # The length bound keeps int() clear of Python's 4,300-digit conversion limit.
    if not digits.isdigit() or not digits.isascii() or len(digits) > 30:
        return None
    return int(text)


async def detailed_info_since(
    conn: AsyncConnection,
    clock: Clock,
    identity: Identity,
    since: str | None,
    filters: str | None,
    n_tasks: int,
) -> list[dict[str, Any]]:
    """task/get_tasks_detailed_info_since: the caller's tasks modified in the window (≤ 90 days).

    The SQL criteria always include ``userName`` = the caller's compact name unless ``filters``
    has a ``userName`` equality key, which replaces it (api-v1.md §2.1).

    Raises:
        BambooError: ``filters`` or ``since`` is malformed; the message says which part.
    """
    equal, patterns = _parse_filters(filters)
    oldest = clock.now() - MAX_DETAIL_WINDOW
    start = oldest
    if since:
        try:
            parsed = datetime.strptime(since, "%Y-%m-%d %H:%M:%S").replace(tzinfo=oldest.tzinfo)
        except ValueError as exc:
            raise BambooError("Failed to retrieve task IDs") from exc
        start = max(parsed, oldest)
    user_name = equal.pop("userName", identity.user_name)
    ids = await tasks_db.ids_for_user(conn, user_name, start, equal, max(0, min(n_tasks, 10_000)))
    found = await tasks_db.get_many(conn, ids)
    datasets = await tasks_db.datasets_of_tasks(conn, ids)
    records = []
    for task in found:
        record = _detail_record(task, [d for d in datasets if d["jediTaskID"] == task["jediTaskID"]])
        if all(
            pattern.search(str(record.get(field))) for field, pattern in patterns.items() if field in record
        ):
            records.append(record)
    return records
