"""Event picking (file_server/upload_event_picking_request): a task over the files holding chosen events.

There is no event index here, so where an event lives follows a convention of the local catalog:

* A dataset holds run ``R`` when its name has the data-taking form
  ``<project>.<run>.<stream>.<step>.<data type>.<tag>`` (``data18_13TeV.00348885.physics_Main.
  merge.AOD.f937_m1972``) and its second field is ``R`` as a number (leading zeros optional).
  ``stream_name``, ``data_type`` and ``ami_tag`` must equal the third, fifth and sixth fields when
  given; ``dataset_name`` (comma-separated) restricts the search to those datasets.
* Inside such a dataset the events are numbered from 1 in catalog order: the first file holds
  events 1..n_events, the next one the following n_events, and so on (files without n_events
  hold none). ``input_file_list`` (comma- or newline-separated names) restricts the files.
* With ``include_guids`` a line ``run event guid`` names the file by its GUID directly.

The request is stored as it arrives (:func:`accept`); the event-picking agent (:func:`resolve`)
finds the files, registers them as a new catalog dataset (``user_dataset_name``, or
``user.<requester>.eventpick.<request id>``) and submits, as the requester, a task with one job
per file whose job parameters carry the picked events (``--eventPickEvtList=<run>:<event>,...``)
after ``parameters``. The task id, or why nothing was submitted, is stored on the request row.
``locked_by``, ``n_sites`` and ``ei_api`` are stored as sent and not used.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.auth.identity import AuthMethod, Identity
from bamboo.db import catalog as catalog_db
from bamboo.db import event_picking as picking_db
from bamboo.db import notify
from bamboo.logic import taskparams, tasks
from bamboo.logic.catalog import CatalogFile, DataManagement
from bamboo.logic.clock import Clock
from bamboo.logic.errors import BambooError, InvalidInput

log = logging.getLogger(__name__)

MAX_LIST_BYTES = 10 * 1024 * 1024
NO_CONTENT_LENGTH = "ERROR: Cannot get content-length from HTTP request."
FAILURE_PREFIX = "ERROR: Cannot upload the Event Picking request: "
# Picked events travel in every job's parameters: bounded so the task parameters stay small.
MAX_PICKS = 1000
MAX_FIELD_CHARS = 1000
QUEUED = "queued"
DONE = "done"
FAILED = "failed"
BATCH = 20
TEXT_PARAMS = (
    "run_event_list",
    "data_type",
    "stream_name",
    "dataset_name",
    "ami_tag",
    "user_dataset_name",
    "locked_by",
    "parameters",
    "input_file_list",
    "n_sites",
    "user_task_name",
    "ei_api",
)
_VO_OF_FQAN = re.compile(r"^/([^/]+)")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def size_refusal(content_length: int) -> str:
    return f"ERROR: Run/event list is too large. Exceeded size limit {content_length}>{MAX_LIST_BYTES}."


@dataclass(frozen=True, slots=True)
class Pick:
    run: int
    event: int
    guid: str | None = None


def parse_picks(text: str, *, include_guids: bool) -> list[Pick]:
    """``run event`` lines (``run event guid`` with GUIDs); any other line is ignored."""
    picks = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != (3 if include_guids else 2):
            continue
        try:
            run, event = int(fields[0]), int(fields[1])
        except ValueError:
            continue
        if run < 0 or event < 0:
            continue
        picks.append(Pick(run, event, fields[2] if include_guids else None))
    return picks


async def accept(
    conn: AsyncConnection, clock: Clock, identity: Identity, params: dict[str, Any], *, production: bool
) -> int:
    """Store a request for the event-picking agent; returns its id.

    Raises:
        InvalidInput: no usable pick line, too many picks, or an over-long parameter (the message
            has upstream's failure prefix).
    """
    for name in TEXT_PARAMS:
        if name != "run_event_list" and len(params[name]) > MAX_FIELD_CHARS:
            raise InvalidInput(f"{FAILURE_PREFIX}{name} is longer than {MAX_FIELD_CHARS} characters")
    picks = parse_picks(params["run_event_list"], include_guids=params["include_guids"])
    if not picks:
        expected = "run event guid" if params["include_guids"] else "run event"
        raise InvalidInput(f"{FAILURE_PREFIX}no '{expected}' line in run_event_list")
    if len(picks) > MAX_PICKS:
        raise InvalidInput(f"{FAILURE_PREFIX}{len(picks)} events picked, at most {MAX_PICKS}")
    now = clock.now()
    request_id = await picking_db.insert_request(
        conn,
        {
            **{name: params[name] for name in TEXT_PARAMS},
            "include_guids": params["include_guids"],
            "requester": identity.user_name,
            "requester_dn": identity.dn,
            "requester_fqans": list(identity.fqans),
            "requester_vo": identity.vo,
            "production": production,
            "status": QUEUED,
            "created_at": now,
            "modified_at": now,
        },
    )
    await notify.announce(conn, "event_picking")
    log.info("event picking request %s by %s: %d events", request_id, identity.user_name, len(picks))
    return request_id


# --- the agent ------------------------------------------------------------------------------------
class _Unresolved(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def resolve(conn: AsyncConnection, clock: Clock, dm: DataManagement) -> int:
    """Turn a batch of queued requests into tasks (or failures with a reason), in this transaction."""
    done = 0
    for request in await picking_db.claim_requests(conn, QUEUED, BATCH):
        try:
            task_id, message = await _resolve_one(conn, clock, dm, request)
        except _Unresolved as exc:
            await _finish(conn, clock, request, FAILED, None, exc.reason)
        except BambooError as exc:
            # The parameters were validated before the dataset was registered, so only a refusal
            # validation cannot foresee gets here; the request still ends with its reason rather
            # than stopping the agent on every cycle.
            await _finish(conn, clock, request, FAILED, None, f"task submission refused: {exc.message}")
        else:
            await _finish(conn, clock, request, DONE, task_id, message)
        done += 1
    return done


async def _finish(
    conn: AsyncConnection,
    clock: Clock,
    request: dict[str, Any],
    status: str,
    task_id: int | None,
    message: str,
) -> None:
    await picking_db.update_request(
        conn,
        request["request_id"],
        status=status,
        jediTaskID=task_id,
        message=message[:1000],
        modified_at=clock.now(),
    )
    log.info("event picking request %s %s: %s", request["request_id"], status, message)


async def _resolve_one(
    conn: AsyncConnection, clock: Clock, dm: DataManagement, request: dict[str, Any]
) -> tuple[int, str]:
    picks = parse_picks(request["run_event_list"], include_guids=request["include_guids"])
    allowed_files = _names(request["input_file_list"])
    found: dict[str, CatalogFile] = {}
    matched: set[Pick] = set()
    if request["include_guids"]:
        by_guid = await picking_db.files_by_guid(conn, sorted({p.guid for p in picks if p.guid}))
        for pick in picks:
            row = next((r for r in by_guid if r["guid"] == pick.guid and _allowed(r, allowed_files)), None)
            if row is not None:
                found.setdefault(row["lfn"], _catalog_file(row))
                matched.add(pick)
    else:
        for run in sorted({p.run for p in picks}):
            for dataset in await _datasets_of_run(conn, request, run):
                rows = await catalog_db.files(conn, dataset)
                for pick in (p for p in picks if p.run == run):
                    row = _file_holding(rows, pick.event)
                    if row is not None and _allowed(row, allowed_files):
                        found.setdefault(row["lfn"], _catalog_file(row))
                        matched.add(pick)
    if not found:
        raise _Unresolved(f"none of the {len(picks)} picked events is in a file of the catalog")
    dataset_name = request["user_dataset_name"] or _default_name(request, "eventpick")
    if await catalog_db.dataset_exists(conn, dataset_name):
        raise _Unresolved(f"dataset {dataset_name} already exists")
    identity = _requester(request)
    params = _task_parameters(
        request, dataset_name, identity, sorted(matched, key=lambda p: (p.run, p.event))
    )
    # Checked before anything is written: a refusal then leaves no dataset behind (the failure is
    # recorded in this same transaction, which commits).
    try:
        taskparams.validate(params)
    except InvalidInput as exc:
        raise _Unresolved(f"task submission refused: {exc.message}") from exc
    try:
        await dm.register_files(conn, clock, dataset_name, list(found.values()))
    except InvalidInput as exc:
        raise _Unresolved(f"cannot register dataset {dataset_name}: {exc.message}") from exc
    task_id = await tasks.submit(conn, clock, identity, params, None, is_production=request["production"])
    missing = len(set(picks) - matched)
    message = f"jediTaskID={task_id} over {len(found)} files of {dataset_name}"
    if missing:
        message += f"; {missing} picked events not found"
    return task_id, message


def _names(text: str) -> set[str]:
    return {name for name in re.split(r"[,\s]+", text) if name}


def _allowed(row: dict[str, Any], allowed_files: set[str]) -> bool:
    return not allowed_files or row["lfn"] in allowed_files


def _catalog_file(row: dict[str, Any]) -> CatalogFile:
    return CatalogFile(
        lfn=row["lfn"],
        scope=row["scope"],
        guid=row["guid"],
        fsize=row["fsize"],
        checksum=row["checksum"],
        n_events=row["n_events"],
    )


async def _datasets_of_run(conn: AsyncConnection, request: dict[str, Any], run: int) -> list[str]:
    """The catalog datasets that hold ``run`` by the naming convention, filtered by the request."""
    explicit = _names(request["dataset_name"])
    if explicit:
        candidates = await picking_db.existing_datasets(conn, sorted(explicit))
    else:
        candidates = sorted(
            set(await picking_db.datasets_with_field(conn, str(run)))
            | set(await picking_db.datasets_with_field(conn, f"{run:08d}"))
        )
    wanted = {2: request["stream_name"], 4: request["data_type"], 5: request["ami_tag"]}
    selected = []
    for name in candidates:
        fields = name.split(":")[-1].rstrip("/").split(".")
        if len(fields) < 6 or not fields[1].isdigit() or int(fields[1]) != run:
            continue
        if all(not value or fields[index] == value for index, value in wanted.items()):
            selected.append(name)
    return selected


def _file_holding(rows: list[dict[str, Any]], event: int) -> dict[str, Any] | None:
    """The file holding the ``event``-th event of its dataset (numbered from 1 in catalog order)."""
    first = 1
    for row in rows:
        count = row["n_events"] or 0
        if first <= event < first + count:
            return row
        first += count
    return None


def _default_name(request: dict[str, Any], kind: str) -> str:
    user = _NAME_CHARS.sub("", request["requester"]) or "anonymous"
    return f"user.{user}.{kind}.{request['request_id']}"


def _requester(request: dict[str, Any]) -> Identity:
    """The requester as the agent submits for it: DN, FQANs and VO recorded with the request."""
    return Identity(
        dn=request["requester_dn"],
        fqans=tuple(request["requester_fqans"]),
        method=AuthMethod.TOKEN if request["requester_vo"] else AuthMethod.X509,
        vo=request["requester_vo"],
    )


def _task_parameters(
    request: dict[str, Any], dataset: str, identity: Identity, picks: list[Pick]
) -> dict[str, Any]:
    vo = identity.vo or next((m.group(1) for f in identity.fqans if (m := _VO_OF_FQAN.match(f))), None)
    if vo is None:
        raise _Unresolved("the requester's VO is unknown (no token VO, no VOMS FQAN)")
    name = request["user_task_name"] or _default_name(request, "eventpicktask")
    events = ",".join(f"{p.run}:{p.event}" for p in picks)
    job_parameters: list[dict[str, Any]] = []
    if request["parameters"]:
        job_parameters.append({"type": "constant", "value": request["parameters"]})
    job_parameters += [
        {"type": "template", "param_type": "input", "value": '--inputFiles="${IN/T}"', "dataset": dataset},
        {"type": "constant", "value": f"--eventPickEvtList={events}"},
    ]
    return {
        "taskName": name,
        "vo": vo,
        "prodSourceLabel": "user",
        "architecture": "",
        "transUses": "",
        "transPath": "runEventPicking",
        "processingType": "eventpicking",
        # One job per file; the jobs are short, so no scouts hold the others back.
        "nFilesPerJob": 1,
        "skipScout": True,
        "jobParameters": job_parameters,
        "log": {
            "type": "template",
            "param_type": "log",
            "dataset": f"{name}.log/",
            "value": f"{name}.log.$JEDITASKID.${{SN}}.log.tgz",
        },
    }
