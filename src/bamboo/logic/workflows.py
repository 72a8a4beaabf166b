"""Workflows: chains and DAGs of tasks (api-v1.md §2.13, ``file_server/upload_workflow_request``).

A workflow is stored as submitted (``registered``) and the workflow agent turns it into tasks. The
definition Bamboo runs is a list of steps, each a task-parameter map::

    {"workflow_name": "my chain",
     "steps": [
        {"name": "gen", "task_params": {...}},
        {"name": "sim", "task_params": {...}, "depends_on": ["gen"], "input_from": "gen"},
        {"name": "ana", "task_params": {...}, "depends_on": ["sim", "gen"], "input_from": "sim"}]}

A step's task is submitted once every step it depends on has a task that succeeded (``done`` or
``finished``); ``input_from`` names one of them whose first output dataset becomes the step's input
dataset, and whose task is the new task's parent (``parent_tid``; the first dependency otherwise).
The workflow is ``running`` from its first task, ``done`` when every step's task succeeded and
``failed`` as soon as one ended failed, broken or aborted (tasks already running go on), or when
the definition is refused. Its tasks belong to its owner.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.auth.identity import Identity
from bamboo.db import workflows as workflows_db
from bamboo.logic import taskparams, tasks
from bamboo.logic.clock import Clock
from bamboo.logic.errors import BambooError, InvalidInput

log = logging.getLogger(__name__)

REGISTERED = "registered"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
STEP_SUCCEEDED = frozenset({"done", "finished"})
STEP_FAILED = frozenset({"failed", "broken", "aborted"})
TASK_ENDED = STEP_SUCCEEDED | STEP_FAILED

MAX_STEPS = 100
# A workflow holds up to MAX_STEPS task-parameter maps; each is bounded by the task submission.
MAX_REQUEST_BYTES = 8 * 1024 * 1024
MAX_NAME_CHARS = 256
MAX_ECHO_CHARS = 1000
BATCH = 20
_STEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_STEP_KEYS = frozenset({"name", "task_params", "depends_on", "input_from"})
# user_dn is what the server adds to a raw request; it is not the caller's to set.
_TOP_KEYS = frozenset({"workflow_name", "steps", "user_dn"})

RAW_SUBMIT_FAILED = "Failed to submit raw workflow request"
SUBMIT_FAILED = "Failed to submit workflow"
UPLOAD_ACCEPTED = "The request was accepted and will be processed in a few minutes"


class InvalidDefinition(InvalidInput):
    """A workflow definition Bamboo cannot run; the message says why."""


@dataclass(frozen=True)
class Step:
    """One step, ready to submit: its task parameters already read from its input step."""

    name: str
    task_params: dict[str, Any]
    depends_on: tuple[str, ...]
    parent: str | None


@dataclass(frozen=True)
class Plan:
    """A checked definition: the steps in an order where each comes after its dependencies."""

    name: str | None
    steps: tuple[Step, ...]


# --- submission ------------------------------------------------------------------------------------


def _check_size(request: dict[str, Any], failure_message: str) -> bytes:
    text = orjson.dumps(request)
    if len(text) > MAX_REQUEST_BYTES:
        raise BambooError(f"{failure_message}: the request is larger than {MAX_REQUEST_BYTES} bytes")
    return text


def _workflow_name(request: dict[str, Any]) -> str | None:
    name = request.get("workflow_name")
    return name[:MAX_NAME_CHARS] if isinstance(name, str) else None


async def _store(
    conn: AsyncConnection,
    clock: Clock,
    identity: Identity,
    request: dict[str, Any],
    *,
    kind: str,
    label: str,
    failure_message: str,
) -> dict[str, Any]:
    text = _check_size(request, failure_message)
    now = clock.now()
    record = {
        "name": _workflow_name(request),
        "kind": kind,
        "label": label,
        "owner": identity.user_name,
        "owner_dn": identity.handler_dn,
        "status": REGISTERED,
        "request": text.decode(),
        "error_dialog": None,
        "creation_time": now,
        "modification_time": now,
    }
    record["workflow_id"] = await workflows_db.insert(conn, record)
    return record


def parse_raw_params(params: dict[str, Any] | str) -> dict[str, Any]:
    """The raw request as a dict; a JSON text is decoded.

    Raises:
        BambooError: ``Failed to parse params: <params> <reason>``.
    """
    if isinstance(params, dict):
        return params
    try:
        decoded = orjson.loads(params)
    except orjson.JSONDecodeError as exc:
        raise BambooError(f"Failed to parse params: {params[:MAX_ECHO_CHARS]} {exc}") from exc
    if not isinstance(decoded, dict):
        raise BambooError(
            f"Failed to parse params: {params[:MAX_ECHO_CHARS]} the request must be a JSON object, "
            f"got {type(decoded).__name__}"
        )
    return decoded


async def submit_raw_request(
    conn: AsyncConnection, clock: Clock, identity: Identity, params: dict[str, Any] | str
) -> int:
    """workflow/submit_workflow_raw_request: store the request (label ``user``) with the caller's DN.

    Raises:
        BambooError: the params are not a JSON object, or the request is too large.
    """
    request = {**parse_raw_params(params), "user_dn": identity.handler_dn}
    record = await _store(
        conn, clock, identity, request, kind="raw", label="user", failure_message=RAW_SUBMIT_FAILED
    )
    return int(record["workflow_id"])


async def submit_definition(
    conn: AsyncConnection, clock: Clock, identity: Identity, definition: dict[str, Any], *, production: bool
) -> int:
    """workflow/submit_workflow: store the definition; label ``managed`` for the production role."""
    record = await _store(
        conn,
        clock,
        identity,
        definition,
        kind="definition",
        label="managed" if production else "user",
        failure_message=SUBMIT_FAILED,
    )
    return int(record["workflow_id"])


# --- the definition --------------------------------------------------------------------------------


def parse_definition(request: Any) -> Plan:
    """Check a workflow definition and order its steps.

    Raises:
        InvalidDefinition: the definition is malformed, names an unknown or duplicate step, has a
            cycle, or a step's task parameters are invalid; the message names the step.
    """
    if not isinstance(request, dict):
        raise InvalidDefinition(f"a workflow definition must be a JSON object, got {type(request).__name__}")
    if "steps" not in request:
        raise InvalidDefinition(
            "the workflow has no 'steps': Bamboo runs workflows given as a list of steps, each with "
            "its task parameters (docs/architecture.md, Workflows)"
        )
    unknown = sorted(set(request) - _TOP_KEYS)
    if unknown:
        raise InvalidDefinition(f"unknown workflow key {unknown[0]!r}")
    name = request.get("workflow_name")
    if name is not None and (not isinstance(name, str) or len(name) > MAX_NAME_CHARS):
        raise InvalidDefinition(f"'workflow_name' must be a string of at most {MAX_NAME_CHARS} characters")
    raw_steps = request["steps"]
    if not isinstance(raw_steps, list) or not raw_steps:
        raise InvalidDefinition("'steps' must be a non-empty list")
    if len(raw_steps) > MAX_STEPS:
        raise InvalidDefinition(f"a workflow has at most {MAX_STEPS} steps, got {len(raw_steps)}")
    declared: dict[str, dict[str, Any]] = {}
    for index, raw in enumerate(raw_steps):
        step = _check_step(index, raw)
        if step["name"] in declared:
            raise InvalidDefinition(f"duplicate step name {step['name']!r}")
        declared[step["name"]] = step
    for step in declared.values():
        for dependency in step["depends_on"]:
            if dependency not in declared:
                raise InvalidDefinition(f"step {step['name']!r} depends on unknown step {dependency!r}")
    order = _topological_order(declared)
    return Plan(name=name, steps=tuple(_resolve(declared[step_name], declared) for step_name in order))


def _check_step(index: int, raw: Any) -> dict[str, Any]:
    label = f"steps[{index}]"
    if not isinstance(raw, dict):
        raise InvalidDefinition(f"{label} must be an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _STEP_KEYS)
    if unknown:
        raise InvalidDefinition(f"{label}: unknown key {unknown[0]!r}")
    name = raw.get("name")
    if not isinstance(name, str) or not _STEP_NAME.fullmatch(name):
        raise InvalidDefinition(
            f"{label}: 'name' must be 1 to 64 letters, digits, '_', '.' or '-' (starting with a letter "
            "or digit)"
        )
    params = raw.get("task_params")
    if not isinstance(params, dict):
        raise InvalidDefinition(f"step {name!r}: 'task_params' must be an object")
    depends_on = raw.get("depends_on", [])
    if not isinstance(depends_on, list) or not all(isinstance(item, str) for item in depends_on):
        raise InvalidDefinition(f"step {name!r}: 'depends_on' must be a list of step names")
    input_from = raw.get("input_from")
    if input_from is not None and not isinstance(input_from, str):
        raise InvalidDefinition(f"step {name!r}: 'input_from' must be a step name")
    # Reading a step's output means waiting for it.
    if input_from is not None and input_from not in depends_on:
        depends_on = [*depends_on, input_from]
    if len(set(depends_on)) != len(depends_on):
        raise InvalidDefinition(f"step {name!r}: 'depends_on' names a step twice")
    return {"name": name, "task_params": params, "depends_on": tuple(depends_on), "input_from": input_from}


def _topological_order(steps: dict[str, dict[str, Any]]) -> list[str]:
    """The step names, dependencies first, in declaration order where free (Kahn's algorithm)."""
    waiting = {name: set(step["depends_on"]) for name, step in steps.items()}
    order: list[str] = []
    while waiting:
        free = [name for name, needs in waiting.items() if not needs]
        if not free:
            cycle = sorted(waiting)
            raise InvalidDefinition(
                f"the steps {', '.join(map(repr, cycle))} depend on each other in a cycle"
            )
        for name in free:
            del waiting[name]
            order.append(name)
        for needs in waiting.values():
            needs.difference_update(free)
    return order


def _items(params: dict[str, Any], param_type: str) -> list[dict[str, Any]]:
    items = params.get("jobParameters")
    if not isinstance(items, list):
        return []
    return [
        item
        for item in items
        if isinstance(item, dict) and item.get("type") == "template" and item.get("param_type") == param_type
    ]


def _resolve(step: dict[str, Any], steps: dict[str, dict[str, Any]]) -> Step:
    name = step["name"]
    params = step["task_params"]
    source = step["input_from"]
    if source is not None:
        outputs = _items(steps[source]["task_params"], "output")
        if not outputs or not isinstance(outputs[0].get("dataset"), str):
            raise InvalidDefinition(
                f"step {name!r} reads the output of {source!r}, which has no output dataset"
            )
        inputs = _items(params, "input")
        if len(inputs) != 1 or params.get("noInput"):
            raise InvalidDefinition(
                f"step {name!r}: 'input_from' needs exactly one input item (param_type input) in its "
                "jobParameters"
            )
        params = orjson.loads(orjson.dumps(params))
        _items(params, "input")[0]["dataset"] = outputs[0]["dataset"]
    if len(orjson.dumps(params)) > taskparams.MAX_TASK_PARAMS_BYTES:
        raise InvalidDefinition(
            f"step {name!r}: task parameters larger than {taskparams.MAX_TASK_PARAMS_BYTES} bytes"
        )
    try:
        taskparams.validate(params)
    except InvalidInput as exc:
        raise InvalidDefinition(f"step {name!r}: {exc.message}") from exc
    depends_on = step["depends_on"]
    parent = source if source is not None else (depends_on[0] if depends_on else None)
    return Step(name=name, task_params=params, depends_on=depends_on, parent=parent)


# --- the agent ---------------------------------------------------------------------------------------


async def advance_batch(conn: AsyncConnection, clock: Clock) -> int:
    """One step of the workflow agent: act on the workflows that have something to do.

    Each workflow is handled in a savepoint, so one that trips a bug fails alone (with a pointer
    to the log) and the others go on.

    Returns:
        How many workflows changed (tasks created, status or bookkeeping written).
    """
    changed = 0
    for workflow in await workflows_db.claim_actionable(conn, TASK_ENDED, BATCH):
        try:
            async with conn.begin_nested():
                changed += await advance(conn, clock, workflow)
        except Exception:
            log.exception("workflow %s: processing failed", workflow["workflow_id"])
            await _fail(conn, clock, workflow, "internal error while processing; see the server log")
            changed += 1
    return changed


async def advance(conn: AsyncConnection, clock: Clock, workflow: dict[str, Any]) -> int:
    """Bring one workflow up to date: submit the steps that may start, then set its status.

    Safe to repeat: a step whose task exists has a row in ``workflow_steps``, written in the same
    transaction as the task, and is never submitted again.

    Returns:
        1 if anything was written, else 0.
    """
    workflow_id = workflow["workflow_id"]
    try:
        plan = parse_definition(orjson.loads(workflow["request"]))
    except InvalidDefinition as exc:
        await _fail(conn, clock, workflow, exc.message)
        return 1
    created = {row["step_name"]: row for row in await workflows_db.steps_with_task_status(conn, workflow_id)}
    newly_ended = [
        name for name, row in created.items() if not row["task_ended"] and row["status"] in TASK_ENDED
    ]
    # Recorded so that the agent claims this workflow again only when another task ends.
    await workflows_db.mark_steps_ended(conn, workflow_id, newly_ended)
    failed = next((row for row in created.values() if row["status"] in STEP_FAILED), None)
    if failed is not None:
        await _fail(
            conn,
            clock,
            workflow,
            f"step {failed['step_name']!r} (task {failed['jediTaskID']}) ended {failed['status']}",
        )
        return 1
    succeeded = {name for name, row in created.items() if row["status"] in STEP_SUCCEEDED}
    if len(succeeded) == len(plan.steps):
        await _set_status(conn, clock, workflow, DONE)
        return 1
    task_ids = {name: row["jediTaskID"] for name, row in created.items()}
    try:
        async with conn.begin_nested():
            started = await _submit_ready_steps(conn, clock, workflow, plan, task_ids, succeeded)
    except BambooError as exc:
        await _fail(conn, clock, workflow, exc.message)
        return 1
    if started and workflow["status"] == REGISTERED:
        await _set_status(conn, clock, workflow, RUNNING)
    return 1 if started or newly_ended else 0


async def _submit_ready_steps(
    conn: AsyncConnection,
    clock: Clock,
    workflow: dict[str, Any],
    plan: Plan,
    task_ids: dict[str, int],
    succeeded: set[str],
) -> int:
    owner = Identity(dn=workflow["owner_dn"])
    production = workflow["label"] == "managed"
    started = 0
    for step in plan.steps:
        if step.name in task_ids or not all(name in succeeded for name in step.depends_on):
            continue
        # The workflow's owner owns its tasks, whatever userName the parameters carry.
        params = {**step.task_params, "userName": workflow["owner"]}
        parent_tid = task_ids[step.parent] if step.parent is not None else None
        try:
            task_id = await tasks.submit(conn, clock, owner, params, parent_tid, is_production=production)
        except BambooError as exc:
            raise BambooError(f"step {step.name!r}: {exc.message}") from exc
        await workflows_db.insert_step(conn, workflow["workflow_id"], step.name, task_id, clock.now())
        task_ids[step.name] = task_id
        started += 1
    return started


async def _set_status(
    conn: AsyncConnection, clock: Clock, workflow: dict[str, Any], status: str, error: str | None = None
) -> None:
    await workflows_db.update(
        conn, workflow["workflow_id"], status=status, error_dialog=error, modification_time=clock.now()
    )
    workflow["status"] = status


async def _fail(conn: AsyncConnection, clock: Clock, workflow: dict[str, Any], reason: str) -> None:
    await _set_status(conn, clock, workflow, FAILED, reason[:500])


# --- file_server/upload_workflow_request ------------------------------------------------------------


@dataclass(frozen=True)
class UploadResult:
    message: str
    data: Any
    stored: bool


def _upload_error(reason: str) -> BambooError:
    # The trailing space is upstream's.
    return BambooError(f"Cannot upload the workflow request: {reason} ")


async def upload_request(
    conn: AsyncConnection,
    clock: Clock,
    identity: Identity,
    data: str,
    *,
    production: bool,
    dry_run: bool,
    sync: bool,
) -> UploadResult:
    """file_server/upload_workflow_request: store a request for the agent, or process it now.

    ``dry_run`` checks the definition and creates nothing: data = ``{"valid": true, "workflow_name",
    "steps": [names in submission order]}`` or ``{"valid": false, "error": reason}``. ``sync``
    stores it and submits the steps that can start at once: data = ``{"workflow_id", "status",
    "tasks": {step: jediTaskID}}``; a definition that cannot run is refused and nothing is stored.
    Otherwise it is stored for the agent: data = ``{"workflow_id"}``.

    Raises:
        BambooError: ``Cannot upload the workflow request: <reason> `` (not a JSON object, too
            large, or with ``sync`` a definition that cannot run).
    """
    try:
        request = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise _upload_error(f"data is not valid JSON: {exc}") from exc
    if not isinstance(request, dict):
        raise _upload_error(f"data must be a JSON object, got {type(request).__name__}")
    if dry_run:
        try:
            plan = parse_definition(request)
        except InvalidDefinition as exc:
            return UploadResult("", {"valid": False, "error": exc.message}, stored=False)
        return UploadResult(
            "",
            {"valid": True, "workflow_name": plan.name, "steps": [s.name for s in plan.steps]},
            stored=False,
        )
    if sync:
        try:
            parse_definition(request)
        except InvalidDefinition as exc:
            raise _upload_error(exc.message) from exc
    stored = {**request, "user_dn": identity.handler_dn}
    if len(orjson.dumps(stored)) > MAX_REQUEST_BYTES:
        raise _upload_error(f"the request is larger than {MAX_REQUEST_BYTES} bytes")
    record = await _store(
        conn,
        clock,
        identity,
        stored,
        kind="raw",
        label="managed" if production else "user",
        failure_message="Cannot upload the workflow request",
    )
    workflow_id = int(record["workflow_id"])
    if not sync:
        return UploadResult(UPLOAD_ACCEPTED, {"workflow_id": workflow_id}, stored=True)
    await advance(conn, clock, record)
    steps = await workflows_db.steps_with_task_status(conn, workflow_id)
    return UploadResult(
        "",
        {
            "workflow_id": workflow_id,
            "status": record["status"],
            "tasks": {row["step_name"]: row["jediTaskID"] for row in steps},
        },
        stored=True,
    )
