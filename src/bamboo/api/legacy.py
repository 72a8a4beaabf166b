"""``/server/panda/<method>``: the legacy API of pilot 3.11 and older clients (clients.md §1.3, §1.4, §4).

Decoding and answer shapes only. Each method names its v1 twin and runs it through the same
pipeline as ``/api/v1`` (``api/dispatch.py``: credentials, ban list, body limits, the twin's access
level, argument checks, the transaction), so the behaviour is the twin's and lives where the twin's
module docstring says. What this module adds:

* decoding: a ``Content-Type: application/json`` body is gunzipped when it starts with the gzip
  magic, whatever ``Content-Encoding`` says (the pilot compresses without saying so); JSON values
  are then handled as form values are, so ``true`` / ``"True"`` / ``1`` mean the same thing
  whichever way the client sent them (the old server turned JSON booleans into ``"True"``);
* the wire names (``jobId``, ``state``, ``xml``...) renamed to the twin's parameters, a few wire
  values converted (epoch times, comma lists), and wire names the old server took but ignored
  dropped; any other name is refused by the twin's argument check, as v1 refuses it;
* the answer: the flat ``StatusCode`` dicts the pilot reads, or the ``[success, payload]`` pairs
  of the old user interface, as JSON; ``getStatus`` answers URL-encoded ``k=v&...`` unless the
  client accepts JSON, as the old dispatcher did.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import IO, Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from bamboo.api.dispatch import (
    PRODUCTION_REQUIRED,
    SECURE_REQUIRED,
    BadRequest,
    gunzip,
    read_body,
    read_params,
    run_pipeline,
)
from bamboo.api.envelope import JSON_MEDIA_TYPE, BareText, Reply, encode_json, plain_error
from bamboo.api.params import ParameterError
from bamboo.api.registry import Endpoint, Registry
from bamboo.api.v1.pilot import NO_ROLE
from bamboo.config import Settings
from bamboo.logic.dispatch import NO_JOBS

GZIP_MAGIC = b"\x1f\x8b"

# The old dispatcher's status codes (domain.md, API conventions).
SC_SUCCESS = 0
SC_NO_JOBS = 20
SC_FAILED = 30
SC_INVALID = 50
SC_ROLE = 60
SC_PROXY = 90
_ROLE_MESSAGES = frozenset({SECURE_REQUIRED, PRODUCTION_REQUIRED, NO_ROLE})
_INVALID_PREFIXES = ("Argument error", "Type error", "Value error")


@dataclass(frozen=True, slots=True)
class LegacyMethod:
    """One legacy method: its v1 twin, how its wire parameters map, how its answer looks.

    Attributes:
        twin: (URL module, function) of the v1 endpoint that does the work.
        answer: (the twin's reply, the wire parameters) -> the legacy payload (a dict, list, bool
            or string); a few answers take their shape from a parameter the twin does not see.
        renames: wire name -> twin parameter name; other names pass unchanged.
        ignored: wire names the old server accepted without using them.
        convert: wire values -> what the twin takes (after renaming); may raise ParameterError.
        url_encoded: answered ``k=v&...`` unless the request accepts JSON (the old dispatcher's
            default); otherwise always JSON, which every client of the method parses.
    """

    twin: tuple[str, str]
    answer: Callable[[Reply, Mapping[str, Any]], Any]
    renames: Mapping[str, str] = field(default_factory=dict)
    ignored: frozenset[str] = frozenset()
    convert: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    url_encoded: bool = False

    def adapt(self, wire: Mapping[str, Any]) -> dict[str, Any]:
        params = {
            self.renames.get(name, name): value for name, value in wire.items() if name not in self.ignored
        }
        return self.convert(params) if self.convert else params


# --- answers ---------------------------------------------------------------------------------------


def status_code(reply: Reply) -> int:
    """The old status code of a twin's reply: its own ``StatusCode``, else one from the message."""
    if isinstance(reply.data, dict) and type(reply.data.get("StatusCode")) is int:
        return reply.data["StatusCode"]
    if reply.success:
        return SC_SUCCESS
    message = reply.message or ""
    if message in _ROLE_MESSAGES:
        return SC_ROLE
    if message == NO_JOBS:
        return SC_NO_JOBS
    if message.startswith(_INVALID_PREFIXES):
        return SC_INVALID
    return SC_FAILED


def _refusal(reply: Reply, error_key: str = "errorDialog", code: int | None = None) -> dict[str, Any]:
    found = status_code(reply)
    if code is not None and found == SC_FAILED:
        found = code
    return {"StatusCode": found, error_key: reply.message or ""}


def _flat(reply: Reply, _wire: Mapping[str, Any]) -> dict[str, Any]:
    """The twin's data dict, flat, with its StatusCode (updateJob, getEventRanges...)."""
    if not reply.success:
        data = reply.data if isinstance(reply.data, dict) else {}
        return {**data, **_refusal(reply)}
    return {"StatusCode": SC_SUCCESS, **(reply.data or {})}


def _status_only(reply: Reply, _wire: Mapping[str, Any]) -> dict[str, Any]:
    return {"StatusCode": SC_SUCCESS} if reply.success else _refusal(reply)


def _job(reply: Reply, wire: Mapping[str, Any]) -> dict[str, Any]:
    """getJob: the first job flat (``jobs`` listed when nJobs was asked), 20 when there is none."""
    if not reply.success:
        return _refusal(reply)
    jobs = reply.data["jobs"]
    if "nJobs" in wire:
        return {"StatusCode": SC_SUCCESS, "jobs": jobs}
    return {**jobs[0], "StatusCode": SC_SUCCESS}


def _job_statuses(reply: Reply, _wire: Mapping[str, Any]) -> dict[str, Any]:
    """getStatus: statuses and attempt numbers, comma-separated in the order of ``ids``."""
    if not reply.success:
        return _refusal(reply)
    rows = reply.data
    return {
        "status": ",".join(row["status"] for row in rows),
        "attemptNr": ",".join(str(row["attempt_number"]) for row in rows),
        "StatusCode": SC_SUCCESS,
    }


def _resource_types(reply: Reply, _wire: Mapping[str, Any]) -> dict[str, Any]:
    # The pilot reads ResourceTypes as the text of a list (a bare JSON list it ignores).
    if not reply.success:
        return _refusal(reply)
    return {"StatusCode": SC_SUCCESS, "ResourceTypes": json.dumps(reply.data)}


def _credential(reply: Reply, _wire: Mapping[str, Any], *, error_key: str) -> dict[str, Any]:
    """getProxy / get_access_token: ``userProxy`` or the reason; only strings and integers, so the
    pilot's ``ast.literal_eval`` of the answer works."""
    if not reply.success:
        return _refusal(reply, error_key, SC_PROXY)
    return {"StatusCode": SC_SUCCESS, "userProxy": reply.data["user_proxy"]}


def _key_pair(reply: Reply, _wire: Mapping[str, Any]) -> dict[str, Any]:
    if not reply.success:
        return _refusal(reply)
    return {
        "StatusCode": SC_SUCCESS,
        "publicKey": reply.data["public_key"],
        "privateKey": reply.data["private_key"],
    }


def _pair(reply: Reply, _wire: Mapping[str, Any]) -> list[Any]:
    """The old user interface's ``[success, payload]``: the data, or the reason of a failure."""
    return [True, reply.data] if reply.success else [False, reply.message]


def _message_pair(reply: Reply, _wire: Mapping[str, Any]) -> list[Any]:
    return [reply.success, reply.message]


def _idds_workflow_pair(reply: Reply, wire: Mapping[str, Any]) -> list[Any]:
    # The twin splits an iDDS answer {"message", "status"} into message and data; joined again.
    if reply.success and reply.message:
        return [True, {"status": reply.data, "message": reply.message}]
    return _pair(reply, wire)


def _user_secrets(reply: Reply, wire: Mapping[str, Any]) -> list[Any]:
    """get_user_secrets: ``[true, {key: value}]`` with get_json, else ``[true, "<JSON text>"]``."""
    if not reply.success:
        return [False, reply.message]
    as_object = str(wire.get("get_json", "")).lower() in ("true", "1")
    return [True, json.loads(reply.data) if as_object else reply.data]


def _workflow_request(reply: Reply, _wire: Mapping[str, Any]) -> list[Any]:
    """put_workflow_request as pchain reads it: ``[true, {"status", "log", "request_id"?, ...}]``."""
    if not reply.success:
        return [False, reply.message]
    data = dict(reply.data)
    if "valid" in data:
        log = data.get("error") or f"steps: {', '.join(data.get('steps', []))}"
        return [True, {**data, "status": data["valid"], "log": log}]
    return [True, {**data, "status": True, "log": reply.message, "request_id": data["workflow_id"]}]


def _checkpoint(reply: Reply, _wire: Mapping[str, Any]) -> dict[str, Any]:
    return {"status": reply.success, "message": reply.message or ""}


def _event_picking(reply: Reply, _wire: Mapping[str, Any]) -> Any:
    return True if reply.success else f"ERROR : {reply.message}"


def _event_ranges(reply: Reply, wire: Mapping[str, Any]) -> dict[str, Any]:
    # The pilot's event service reads eventRanges as JSON text.
    answer = _flat(reply, wire)
    if reply.success:
        answer["eventRanges"] = json.dumps(answer["eventRanges"])
    return answer


# --- wire values -----------------------------------------------------------------------------------


def _wire_text(value: Any) -> Any:
    """A JSON value as the form value the old server saw: booleans as ``True``/``False``, numbers
    as their digits (an integral float without its ``.0``); lists, objects and null unchanged."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    return value


def _epoch_as_text(value: Any) -> Any:
    """The pilot's epoch seconds as the ``YYYY-MM-DD HH:MM:SS`` the twin takes; text left alone."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return value
    if not math.isfinite(seconds) or not 0 <= seconds < 253402300800:  # before year 10000
        raise ParameterError(f"Value error: '{value}' is not a time in epoch seconds.")
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _rounded(value: Any) -> Any:
    try:
        return str(round(float(value)))
    except (TypeError, ValueError, OverflowError):
        return value


def _comma_list(value: Any) -> Any:
    return [item.strip() for item in value.split(",") if item.strip()] if isinstance(value, str) else value


def _convert(**converters: Callable[[Any], Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def convert(params: dict[str, Any]) -> dict[str, Any]:
        for name, converter in converters.items():
            if params.get(name) is not None:
                params[name] = converter(params[name])
        return params

    return convert


# --- the methods -----------------------------------------------------------------------------------

_UPDATE_JOB_RENAMES = {
    "jobId": "job_id",
    "state": "job_status",
    "jobSubStatus": "job_sub_status",
    "siteName": "site_name",
    "attemptNr": "attempt_nr",
    "schedulerID": "scheduler_id",
    "pilotID": "pilot_id",
    "batchID": "batch_id",
    "startTime": "start_time",
    "endTime": "end_time",
    "pilotTiming": "pilot_timing",
    "xml": "job_output_report",
    "metaData": "meta_data",
    "pilotLog": "pilot_log",
    "transExitCode": "trans_exit_code",
    "pilotErrorCode": "pilot_error_code",
    "pilotErrorDiag": "pilot_error_diag",
    "exeErrorCode": "exe_error_code",
    "exeErrorDiag": "exe_error_diag",
    "nEvents": "n_events",
    "nInputFiles": "n_input_files",
    "cpuConsumptionTime": "cpu_consumption_time",
    "cpuConsumptionUnit": "cpu_consumption_unit",
    "cpuConversionFactor": "cpu_conversion_factor",
    "coreCount": "core_count",
    "meanCoreCount": "mean_core_count",
    "jobMetrics": "job_metrics",
    "corruptedFiles": "corrupted_files",
    **{
        wire: wire[:3].lower() + "_" + wire[3:].lower()
        for wire in (
            "maxRSS",
            "maxVMEM",
            "maxSWAP",
            "maxPSS",
            "avgRSS",
            "avgVMEM",
            "avgSWAP",
            "avgPSS",
            "totRCHAR",
            "totWCHAR",
            "totRBYTES",
            "totWBYTES",
        )
    },
    **{wire: "rate_" + wire[4:].lower() for wire in ("rateRCHAR", "rateWCHAR", "rateRBYTES", "rateWBYTES")},
}

METHODS: dict[str, LegacyMethod] = {
    "getJob": LegacyMethod(
        twin=("pilot", "acquire_jobs"),
        answer=_job,
        renames={
            "siteName": "site_name",
            "computingElement": "computing_element",
            "prodSourceLabel": "prod_source_label",
            "diskSpace": "disk_space",
            "mem": "memory",
            "prodUserID": "prod_user_id",
            "getProxyKey": "get_proxy_key",
            "taskID": "task_id",
            "nJobs": "n_jobs",
            "resourceType": "resource_type",
            "schedulerID": "scheduler_id",
            "jobType": "job_type",
            "viaTopic": "via_topic",
        },
        ignored=frozenset({"cpu", "AtlasRelease", "countryGroup", "workingGroup", "allowOtherCountry"}),
        # The pilot measures memory (and may measure disk) in MB with decimals.
        convert=_convert(memory=_rounded, disk_space=_rounded),
    ),
    "updateJob": LegacyMethod(
        twin=("pilot", "update_job"),
        answer=_flat,
        renames=_UPDATE_JOB_RENAMES,
        ignored=frozenset(
            {"token", "timestamp", "workdir", "remainingSpace", "messageLevel", "computingElement"}
        ),
        # The pilot sends epoch seconds and a mean core count with decimals.
        convert=_convert(start_time=_epoch_as_text, end_time=_epoch_as_text, mean_core_count=_rounded),
    ),
    "getStatus": LegacyMethod(
        twin=("pilot", "get_job_status"),
        answer=_job_statuses,
        renames={"ids": "job_ids"},
        convert=_convert(job_ids=_comma_list),
        url_encoded=True,
    ),
    "updateWorkerPilotStatus": LegacyMethod(
        twin=("pilot", "update_worker_status"),
        answer=_status_only,
        renames={"workerID": "worker_id", "harvesterID": "harvester_id"},
        ignored=frozenset({"site"}),
    ),
    "setDebugMode": LegacyMethod(
        twin=("job", "set_debug_mode"),
        answer=_status_only,
        renames={"pandaID": "job_id", "modeOn": "mode"},
    ),
    "getResourceTypes": LegacyMethod(twin=("metaconfig", "get_resource_types"), answer=_resource_types),
    "get_access_token": LegacyMethod(
        twin=("creds", "get_access_token"),
        # The pilot reads the reason as ErrorDialog.
        answer=partial(_credential, error_key="ErrorDialog"),
    ),
    "getProxy": LegacyMethod(
        twin=("creds", "get_proxy"),
        answer=partial(_credential, error_key="errorDialog"),
    ),
    "getKeyPair": LegacyMethod(
        twin=("creds", "get_key_pair"),
        answer=_key_pair,
        renames={"publicKeyName": "public_key_name", "privateKeyName": "private_key_name"},
    ),
    "getEventRanges": LegacyMethod(
        twin=("event", "acquire_event_ranges"),
        answer=_event_ranges,
        renames={
            "pandaID": "job_id",
            "jobsetID": "jobset_id",
            # The pilot's event service sends taskID; older clients jediTaskID.
            "taskID": "task_id",
            "jediTaskID": "task_id",
            "nRanges": "n_ranges",
            "segmentID": "segment_id",
        },
    ),
    "updateEventRanges": LegacyMethod(
        twin=("event", "update_event_ranges"),
        answer=_flat,
        renames={"eventRanges": "event_ranges"},
    ),
    "putEventPickingRequest": LegacyMethod(
        twin=("file_server", "upload_event_picking_request"),
        answer=_event_picking,
        renames={
            "runEventList": "run_event_list",
            "eventPickDataType": "data_type",
            "eventPickStreamName": "stream_name",
            "eventPickDS": "dataset_name",
            "eventPickAmiTag": "ami_tag",
            "userDatasetName": "user_dataset_name",
            "lockedBy": "locked_by",
            "params": "parameters",
            "inputFileList": "input_file_list",
            "eventPickNumSites": "n_sites",
            "userTaskName": "user_task_name",
            "giveGUID": "include_guids",
        },
    ),
    "relay_idds_command": LegacyMethod(twin=("idds", "relay_idds_command"), answer=_pair),
    "execute_idds_workflow_command": LegacyMethod(
        twin=("idds", "execute_idds_workflow_command"), answer=_idds_workflow_pair
    ),
    "put_checkpoint": LegacyMethod(twin=("file_server", "upload_hpo_checkpoint"), answer=_checkpoint),
    "delete_checkpoint": LegacyMethod(twin=("file_server", "delete_hpo_checkpoint"), answer=_checkpoint),
    "put_file_recovery_request": LegacyMethod(
        twin=("file_server", "upload_file_recovery_request"),
        answer=_message_pair,
        renames={"jediTaskID": "task_id", "dryRun": "dry_run"},
    ),
    "put_workflow_request": LegacyMethod(
        twin=("file_server", "upload_workflow_request"),
        answer=_workflow_request,
        renames={"check": "dry_run"},
    ),
    "get_user_secrets": LegacyMethod(
        twin=("creds", "get_user_secrets"),
        answer=_user_secrets,
        ignored=frozenset({"get_json"}),
        convert=_convert(keys=_comma_list),
    ),
}


def check_twins(registry: Registry) -> None:
    """Fail at start-up if a legacy method names a v1 endpoint that does not exist."""
    for name, method in METHODS.items():
        endpoint = registry.lookup(*method.twin)
        if endpoint is None or endpoint.answers_text:
            raise ValueError(f"legacy {name}: no enveloped v1 twin {method.twin}")


# --- the request -----------------------------------------------------------------------------------


async def _read_legacy_params(
    method: LegacyMethod,
    wire: dict[str, Any],
    request: Request,
    endpoint: Endpoint,
    settings: Settings,
    spooled: list[IO[bytes]],
) -> tuple[dict[str, Any], bool]:
    """The wire parameters, decoded as the old server did (kept in ``wire`` for the answer),
    renamed for the twin; always textual, so the twin's coercion reads every value."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if request.method in ("POST", "PUT") and media_type == JSON_MEDIA_TYPE:
        limit = settings.max_body_bytes
        body = await read_body(request, limit)
        if body.startswith(GZIP_MAGIC) or request.headers.get("content-encoding", "").lower() == "gzip":
            body = gunzip(body, limit)
        decoded = _json_object(body)
    else:
        decoded, _ = await read_params(request, endpoint, settings, spooled)
    wire.update({name: _wire_text(value) for name, value in decoded.items()})
    return method.adapt(wire), True


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(400, f"received invalid JSON : {exc}") from exc
    if not isinstance(decoded, dict):
        raise BadRequest(400, "received invalid JSON : the body must be a JSON object")
    return decoded


def _accepts_json(request: Request) -> bool:
    return request.headers.get("accept", "").strip().lower() == JSON_MEDIA_TYPE


def _render(
    method: LegacyMethod,
    wire: Mapping[str, Any],
    request: Request,
    reply: Reply | BareText,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    if isinstance(reply, BareText):
        raise TypeError("check_twins admits only enveloped twins")
    answer = method.answer(reply, wire)
    if method.url_encoded and not _accepts_json(request):
        body = urlencode({key: _wire_text(value) for key, value in answer.items()})
        return Response(body, status_code=status_code, media_type="text/plain", headers=headers)
    return Response(encode_json(answer), status_code=status_code, media_type=JSON_MEDIA_TYPE, headers=headers)


async def dispatch_legacy(request: Request) -> Response:
    """Answer one ``/server/panda/<method>`` request; never raises."""
    name = request.path_params["method"]
    method = METHODS.get(name)
    if method is None:
        return plain_error(403, f"method {name} is forbidden")
    endpoint = request.app.state.registry.lookup(*method.twin)
    wire: dict[str, Any] = {}
    return await run_pipeline(
        request,
        endpoint,
        read_params=partial(_read_legacy_params, method, wire),
        render=partial(_render, method, wire, request),
        check_http_method=False,
    )
