"""The data carousel: tape-resident task inputs staged to disk, and the tasks waiting for them
(domain.md §9.3, api-v1.md §2.11).

A staging request (``data_carousel_requests``) covers one tape-resident dataset; tasks relate to
it (``data_carousel_relations``). Its statuses follow the table in :mod:`bamboo.logic.states`:
``queued`` (made by the refiner) -> ``staging`` (the carousel agent submitted a DDM rule to a disk
destination) -> ``done`` (every file staged, or given up after the backend's attempts); an active
request no task needs any more is ``cancelled``, as is one resubmitted elsewhere; a done one nobody
uses may be ``retired``.

The task side: the refiner makes the datasets of a task whose master input is tape-resident as for
any input, with rows for the files already on disk, leaves the master open (``toupdate``) and puts
the task in ``staging``; once the request has its rule the task is resumed (``staged``), then
``ready``; the feeder adds the files as they reach disk and the generator makes jobs for them; the
input closes when the request ends, files given up becoming failed rows (so such a task ends
``finished``, not ``done``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.config import Settings
from bamboo.db import carousel as carousel_db
from bamboo.db import notify
from bamboo.logic import task_status
from bamboo.logic.catalog import CatalogFile, DataManagement, check_rse
from bamboo.logic.clock import Clock
from bamboo.logic.errors import BambooError, InvalidInput
from bamboo.logic.states import (
    REQUEST_ACTIVE,
    REQUEST_REUSABLE,
    TASK_FINAL,
    check_request_transition,
)
from bamboo.logic.tape_simulator import OK, REPLICATING, StagingBackend, TapeParameters, TapeSimulator
from bamboo.logic.taskparams import RefinedTask

log = logging.getLogger(__name__)

BATCH = 50
# Rule lifetimes (domain.md §9.3): long enough to stage, then kept a month for reuse.
STAGING_LIFETIME = timedelta(days=15)
DONE_LIFETIME = timedelta(days=30)
# Task parameters that select part of a dataset: the carousel stages whole datasets (domain.md §9.3).
_PARTIAL_INPUT_KEYS = ("nFiles", "nEvents", "skipFilesUsedBy")
# Tasks in these statuses no longer need their input: a request only they relate to is cancelled.
_NOT_WAITING = TASK_FINAL | {"aborting", "toabort", "tobroken", "finishing", "passed"}
NOT_FOUND = "failed to get corresponding request"


@dataclass(frozen=True, slots=True)
class CarouselPolicy:
    destinations: tuple[str, ...]
    max_staging_per_tape: int

    @classmethod
    def from_settings(cls, settings: Settings) -> CarouselPolicy:
        return cls(tuple(settings.carousel_destinations), settings.carousel_max_staging_per_tape)


@dataclass(frozen=True, slots=True)
class InputStaging:
    """What the feeder needs to know about a task's staged master input."""

    active: bool
    given_up: frozenset[str]


def backend_for(settings: Settings) -> StagingBackend:
    """The staging backend of this server: the tape simulator (no external DDM is configured)."""
    return TapeSimulator(TapeParameters.from_settings(settings))


def eligible(params: dict[str, Any], refined: RefinedTask) -> bool:
    """Whether the task's tape input goes through the carousel: it reads whole datasets."""
    return not refined.no_input and not any(params.get(key) for key in _PARTIAL_INPUT_KEYS)


def _parameters(request: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(request["parameters"])
    return value


# --- the refiner's side ---------------------------------------------------------------------------


async def request_for_task(
    conn: AsyncConnection,
    clock: Clock,
    dm: DataManagement,
    task: dict[str, Any],
    dataset: str,
    listing: list[CatalogFile],
) -> dict[str, Any] | None:
    """Relate the task to a request staging ``dataset`` (reused or made ``queued``), or None when the
    dataset is on disk, or tape-resident with every file already on disk and no request to join."""
    tape_rse = await dm.tape_rse(conn, dataset)
    if tape_rse is None:
        return None
    request = await carousel_db.latest_of_dataset(conn, dataset, REQUEST_REUSABLE)
    if request is not None and request["status"] == "done" and not all(f.on_disk for f in listing):
        # Files were given up (or the dataset went back to tape): a new task asks the tape again.
        request = None
    if request is None:
        if all(f.on_disk for f in listing):
            return None
        now = clock.now()
        request_id = await carousel_db.insert_request(
            conn,
            {
                "dataset": dataset,
                "source_rse": tape_rse,
                "source_tape": tape_rse,
                "status": "queued",
                "total_files": len(listing),
                "staged_files": 0,
                "dataset_size": sum(f.fsize or 0 for f in listing),
                "staged_size": 0,
                "creation_time": now,
                "modification_time": now,
                "parameters": orjson.dumps(
                    {
                        "task_id": task["jediTaskID"],
                        "task_type": task.get("prodSourceLabel"),
                        "task_user": task.get("userName"),
                        "task_gshare": task.get("gshare"),
                        "excluded_dst_list": [],
                    }
                ).decode(),
            },
        )
        await notify.announce(conn, "carousel")
        request = await carousel_db.get(conn, request_id)
        assert request is not None
        log.info("task %s: staging request %s queued for %s", task["jediTaskID"], request_id, dataset)
    await carousel_db.relate(conn, request["request_id"], task["jediTaskID"])
    return request


async def input_staging(conn: AsyncConnection, task_id: int, dataset: str) -> InputStaging | None:
    """The staging state of the task's master input, None when it is not staged for the task."""
    request = await carousel_db.request_of_task(conn, task_id, dataset)
    if request is None:
        return None
    given_up = frozenset(_parameters(request).get("given_up", ()))
    return InputStaging(active=request["status"] in REQUEST_ACTIVE, given_up=given_up)


# --- the agent ------------------------------------------------------------------------------------


async def cycle(conn: AsyncConnection, clock: Clock, backend: StagingBackend, policy: CarouselPolicy) -> int:
    """One carousel step: submit queued requests (within the per-tape limit), then poll the ones
    that were staging. Returns how many requests or tasks changed."""
    changed = 0
    # Read first: a request staged in this step is polled next time, so its tasks are seen staged.
    staging = await carousel_db.claim(conn, "staging", BATCH)
    per_tape = await carousel_db.staging_per_tape(conn)
    for request in await carousel_db.claim(conn, "queued", BATCH):
        if await _cancel_if_unused(conn, clock, backend, request):
            changed += 1
            continue
        if per_tape.get(request["source_tape"], 0) >= policy.max_staging_per_tape:
            continue
        destination = _next_destination(request, policy)
        if destination is None:
            log.warning("staging request %s: no destination left to stage to", request["request_id"])
            continue
        await stage(conn, clock, backend, request, destination)
        per_tape[request["source_tape"]] = per_tape.get(request["source_tape"], 0) + 1
        changed += 1
    for request in staging:
        changed += await _poll(conn, clock, backend, request)
    return changed


def _next_destination(request: dict[str, Any], policy: CarouselPolicy) -> str | None:
    excluded = set(_parameters(request).get("excluded_dst_list", ()))
    return next((rse for rse in policy.destinations if rse not in excluded), None)


async def stage(
    conn: AsyncConnection, clock: Clock, backend: StagingBackend, request: dict[str, Any], destination: str
) -> dict[str, Any]:
    """Submit the request's rule; the request is ``staging`` and its staging tasks are resumed."""
    check_request_transition(request["status"], "staging")
    rule_id = await backend.submit_rule(
        conn, clock, request["dataset"], destination, request["source_rse"], STAGING_LIFETIME
    )
    now = clock.now()
    values = {
        "status": "staging",
        "ddm_rule_id": rule_id,
        "destination_rse": destination,
        "start_time": now,
        "modification_time": now,
    }
    await carousel_db.update(conn, request["request_id"], **values)
    for task in await carousel_db.related_tasks(conn, request["request_id"], ["staging"]):
        # The task command `resume` of a staging task (domain.md §9.3): the input has its rule.
        await task_status.change(conn, clock, task, "staged", errorDialog=None)
    log.info("staging request %s: rule %s to %s", request["request_id"], rule_id, destination)
    return {**request, **values}


async def _poll(conn: AsyncConnection, clock: Clock, backend: StagingBackend, request: dict[str, Any]) -> int:
    if await _cancel_if_unused(conn, clock, backend, request):
        return 1
    changed = 0
    for task in await carousel_db.related_tasks(conn, request["request_id"], ["staged"]):
        await task_status.change(conn, clock, task, "ready")
        changed += 1
    # A task that joined the request after its rule was made is resumed here.
    for task in await carousel_db.related_tasks(conn, request["request_id"], ["staging"]):
        await task_status.change(conn, clock, task, "staged", errorDialog=None)
        changed += 1
    progress = await backend.poll_rule(conn, clock, request["ddm_rule_id"])
    now = clock.now()
    values: dict[str, Any] = {"check_time": now}
    if len(progress.staged) != request["staged_files"]:
        values.update(
            staged_files=len(progress.staged),
            staged_size=progress.staged_bytes,
            last_staged_time=now,
            modification_time=now,
        )
        changed += 1
    if progress.state != REPLICATING:
        check_request_transition(request["status"], "done")
        parameters = {**_parameters(request), "given_up": list(progress.stuck)}
        values.update(
            status="done", end_time=now, modification_time=now, parameters=orjson.dumps(parameters).decode()
        )
        await backend.extend_rule(conn, clock, request["ddm_rule_id"], DONE_LIFETIME)
        changed += 1
        # Not polled again: a task resumed just now goes on at once.
        for task in await carousel_db.related_tasks(conn, request["request_id"], ["staged"]):
            await task_status.change(conn, clock, task, "ready")
        if progress.state != OK:
            log.warning(
                "staging request %s: %d files given up after %d failed attempts",
                request["request_id"],
                len(progress.stuck),
                progress.failed_attempts,
            )
    await carousel_db.update(conn, request["request_id"], **values)
    if changed:
        await notify.announce(conn, "feeder")
    return changed


async def _cancel_if_unused(
    conn: AsyncConnection, clock: Clock, backend: StagingBackend, request: dict[str, Any]
) -> bool:
    if await carousel_db.count_related(conn, request["request_id"], sorted(_NOT_WAITING)):
        return False
    await cancel(conn, clock, backend, request)
    log.info("staging request %s cancelled: no task waits for it", request["request_id"])
    return True


async def cancel(
    conn: AsyncConnection, clock: Clock, backend: StagingBackend, request: dict[str, Any]
) -> None:
    check_request_transition(request["status"], "cancelled")
    if request["ddm_rule_id"]:
        await backend.cancel_rule(conn, clock, request["ddm_rule_id"])
    now = clock.now()
    await carousel_db.update(
        conn, request["request_id"], status="cancelled", end_time=now, modification_time=now
    )


# --- the API's side (api-v1.md §2.11) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    message: str
    data: dict[str, Any]


async def find_request(conn: AsyncConnection, request_id: int | None, dataset: str | None) -> dict[str, Any]:
    """The request named by id (which wins) or the dataset's newest one.

    Raises:
        BambooError: ``failed to get corresponding request``.
    """
    request = None
    if request_id is not None:
        request = await carousel_db.get(conn, request_id, lock=True)
    elif dataset is not None:
        found = await carousel_db.latest_of_dataset(conn, dataset)
        if found is not None:
            request = await carousel_db.get(conn, found["request_id"], lock=True)
    if request is None:
        raise BambooError(NOT_FOUND)
    return request


def _summary(request: dict[str, Any]) -> dict[str, Any]:
    return {
        "request_id": request["request_id"],
        "dataset": request["dataset"],
        "status": request["status"],
        "ddm_rule_id": request["ddm_rule_id"],
    }


async def change_destination(
    conn: AsyncConnection,
    clock: Clock,
    backend: StagingBackend,
    policy: CarouselPolicy,
    request_id: int | None,
    dataset: str | None,
) -> Outcome:
    """Cancel the active request and stage the dataset again at another destination."""
    old = await find_request(conn, request_id, dataset)
    failed = f"failed to resubmit request_id={old['request_id']} : "
    if old["status"] not in REQUEST_ACTIVE:
        raise BambooError(failed + f"status={old['status']} not queued or staging")
    parameters = _parameters(old)
    excluded = list(parameters.get("excluded_dst_list", ()))
    if old["destination_rse"] and old["destination_rse"] not in excluded:
        excluded.append(old["destination_rse"])
    destination = next((rse for rse in policy.destinations if rse not in excluded), None)
    if destination is None:
        raise BambooError(failed + f"no destination left besides {','.join(excluded)}")
    await cancel(conn, clock, backend, old)
    now = clock.now()
    new_id = await carousel_db.insert_request(
        conn,
        {
            "dataset": old["dataset"],
            "source_rse": old["source_rse"],
            "source_tape": old["source_tape"],
            "status": "queued",
            "total_files": old["total_files"],
            "staged_files": 0,
            "dataset_size": old["dataset_size"],
            "staged_size": 0,
            "creation_time": now,
            "modification_time": now,
            "parameters": orjson.dumps(
                {
                    **parameters,
                    "resub_from": old["request_id"],
                    "prev_dst": old["destination_rse"],
                    "excluded_dst_list": excluded,
                }
            ).decode(),
        },
    )
    moved = await carousel_db.move_relations(conn, old["request_id"], new_id)
    new = await carousel_db.get(conn, new_id)
    assert new is not None
    await stage(conn, clock, backend, new, destination)
    await notify.announce(conn, "carousel")
    return Outcome(
        f"new request resubmitted, destination changed; {moved} related tasks moved to the new request; "
        "no iDDS here, so no iDDS requests submitted",
        {"request_id": old["request_id"], "new_request_id": new_id, "dataset": old["dataset"]},
    )


async def change_source(
    conn: AsyncConnection,
    clock: Clock,
    backend: StagingBackend,
    request_id: int | None,
    dataset: str | None,
    *,
    cancel_fts: bool,
    change_src_expr: bool,
    source_rse: str | None,
) -> Outcome:
    """Recall from another tape (or from any copy); ``cancel_fts`` restarts the transfers in flight."""
    request = await find_request(conn, request_id, dataset)
    status = request["status"]
    if status not in REQUEST_ACTIVE:
        raise BambooError(
            f"request_id={request['request_id']} status={status} not queued or staging; skipped"
        )
    failed = f"failed to change source request_id={request['request_id']} : "
    if change_src_expr:
        new_source = None
        message = f"status={status} source replica expression is dropped"
    else:
        if source_rse is None:
            raise BambooError(failed + "source_rse is required unless change_src_expr is true")
        try:
            new_source = check_rse(source_rse)
        except InvalidInput as exc:
            raise BambooError(failed + exc.message) from exc
        message = f"status={status} changed source_rse from {request['source_rse']} to {new_source}"
    if request["ddm_rule_id"]:
        await backend.change_source(conn, clock, request["ddm_rule_id"], new_source, restart=cancel_fts)
    parameters = {**_parameters(request), "prev_src": request["source_rse"]}
    await carousel_db.update(
        conn,
        request["request_id"],
        source_rse=new_source,
        parameters=orjson.dumps(parameters).decode(),
        modification_time=clock.now(),
    )
    return Outcome(
        message,
        {
            "request_id": request["request_id"],
            "dataset": request["dataset"],
            "source_rse": new_source,
            "ddm_rule_id": request["ddm_rule_id"],
        },
    )


async def force_to_staging(
    conn: AsyncConnection,
    clock: Clock,
    backend: StagingBackend,
    policy: CarouselPolicy,
    request_id: int | None,
    dataset: str | None,
) -> Outcome:
    """Stage a queued request now, whatever the per-tape limit."""
    request = await find_request(conn, request_id, dataset)
    failed = f"failed to stage request_id={request['request_id']} : "
    if request["status"] != "queued":
        raise BambooError(failed + f"status={request['status']} not queued")
    destination = _next_destination(request, policy)
    if destination is None:
        raise BambooError(failed + "no destination left")
    staged = await stage(conn, clock, backend, request, destination)
    await notify.announce(conn, "carousel")
    return Outcome(f"status has become {staged['status']}", _summary(staged))


async def retire_unused(
    conn: AsyncConnection, clock: Clock, request_id: int | None, dataset: str | None
) -> Outcome:
    """Retire a done request no unfinished task relates to: it is no longer reused."""
    request = await find_request(conn, request_id, dataset)
    failed = f"failed to retire request_id={request['request_id']} : "
    if request["status"] != "done":
        raise BambooError(failed + f"status={request['status']} not done")
    in_use = await carousel_db.count_related(conn, request["request_id"], sorted(TASK_FINAL))
    if in_use:
        raise BambooError(failed + f"{in_use} related tasks not finished")
    check_request_transition("done", "retired")
    now = clock.now()
    await carousel_db.update(conn, request["request_id"], status="retired", modification_time=now)
    return Outcome("retired successfully", _summary({**request, "status": "retired"}))
