"""Commands for Harvester instances (api-v1.md §2.5, §3.5; domain.md §8.2).

Bamboo queues commands; the instance fetches them (``acquire_commands``: ``new`` -> ``retrieved``)
and confirms them (``acknowledge_commands``: -> ``acknowledged``). Two kinds are produced here:

* ``KILL_WORKERS`` (the sweeper), from ``harvester/add_sweep_command`` and
  ``bamboo harvester command QUEUE kill-workers``: an *action*. Every sweep is kept, because two
  sweeps of one instance may name different queues or statuses; only an identical one still waiting
  is not queued twice.
* ``SET_N_WORKERS_JOBTYPE:<queue>`` (the pilot-streaming agent): a *target*. The newest supersedes
  the ones the instance has not fetched yet, so it never receives stale targets.

This is our reading of "inserting a command replaces an existing one with the same (harvester,
command) unless it is still fresh": an unfetched target is replaced, a fetched one is left alone
(the instance may be acting on it).

The instance serving a queue is the one its catalog entry names (spec key ``harvester``, set with
``bamboo queue set QUEUE --harvester ID``), else the one that last reported workers for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import harvester_commands as commands_db
from bamboo.db import queues as queues_db
from bamboo.logic.clock import Clock
from bamboo.logic.errors import BambooError, InvalidInput

KILL_WORKERS = "KILL_WORKERS"
SET_N_WORKERS_PREFIX = "SET_N_WORKERS_JOBTYPE:"
MAX_HARVESTER_ID = 50
MAX_COMMANDS_PER_CALL = 1000
MAX_LIST = 1000
MAX_NAME = 128
# Worker statuses a sweep may name (api-v1.md §3.5; ``pending`` is Harvester's own).
WORKER_STATUSES = frozenset(
    {
        "submitted",
        "to_submit",
        "ready",
        "running",
        "idle",
        "finished",
        "failed",
        "cancelled",
        "missed",
        "pending",
    }
)

QUEUE_UNKNOWN = "Error retrieving queue configuration from DB"
NOT_SERVED = "Queue not served by any harvester ID"
NOT_GENERATED = "Problem generating command. Check PanDA server logs"


class CommandNotQueued(BambooError):
    """A command that could not be queued; the message is one of the contract's texts."""


def check_harvester_id(harvester_id: str) -> None:
    if not harvester_id or len(harvester_id) > MAX_HARVESTER_ID:
        raise InvalidInput(f"harvester_id must be 1 to {MAX_HARVESTER_ID} characters")


async def acquire(
    conn: AsyncConnection, clock: Clock, harvester_id: str, n_commands: int
) -> list[dict[str, Any]]:
    """harvester/acquire_commands: hand the oldest waiting commands to the instance, each once.

    ``n_commands`` below 1 is refused; above :data:`MAX_COMMANDS_PER_CALL` it is capped (the
    instance asks again for the rest).
    """
    check_harvester_id(harvester_id)
    if n_commands < 1:
        raise InvalidInput("n_commands must be at least 1")
    rows = await commands_db.claim_new(
        conn, harvester_id, min(n_commands, MAX_COMMANDS_PER_CALL), clock.now()
    )
    return [
        {
            "command_id": row["command_id"],
            "command": row["command"],
            "params": None if row["params"] is None else orjson.loads(row["params"]),
            "ack_requested": 1 if row["ack_requested"] else 0,
            # Naive UTC, as upstream's isoformat() of its database timestamps prints it.
            "creation_date": row["creation_date"].replace(tzinfo=None).isoformat(),
        }
        for row in rows
    ]


async def acknowledge(conn: AsyncConnection, clock: Clock, command_ids: Sequence[Any]) -> None:
    """harvester/acknowledge_commands: the listed commands are done (unknown ids are ignored)."""
    if len(command_ids) > MAX_LIST:
        raise InvalidInput(f"command_ids may list at most {MAX_LIST} ids")
    ids: list[int] = []
    for value in command_ids:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
            raise InvalidInput(f"command_ids must be positive integers, got {value!r}")
        ids.append(value)
    await commands_db.acknowledge(conn, ids, clock.now())


async def serving_harvester(
    conn: AsyncConnection, queue: str, spec: dict[str, Any] | None = None
) -> str | None:
    """The instance serving a queue: the catalog's ``harvester``, else the last one to report workers."""
    if spec is None:
        row = await queues_db.get(conn, queue)
        spec = row["spec"] if row else {}
    named = spec.get("harvester")
    if isinstance(named, str) and named:
        return named
    return await commands_db.last_reporting_harvester(conn, queue)


def queue_computing_elements(spec: dict[str, Any]) -> set[str]:
    """The CEs a queue's catalog entry lists (CRIC's ``queues[].ce_endpoint``)."""
    found: set[str] = set()
    entries = spec.get("queues")
    if isinstance(entries, list):
        for entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("ce_endpoint"), str):
                found.add(entry["ce_endpoint"])
    return found


def _names(label: str, values: Sequence[Any]) -> list[str]:
    if len(values) > MAX_LIST:
        raise InvalidInput(f"{label} may list at most {MAX_LIST} entries")
    for value in values:
        if not isinstance(value, str) or not value or len(value) > MAX_NAME:
            raise InvalidInput(f"{label} entries must be non-empty strings of at most {MAX_NAME} characters")
    return list(values)


def sweep_params(
    queue: str, spec: dict[str, Any], status_list: Sequence[Any], ce_list: Sequence[Any], hosts: Sequence[Any]
) -> dict[str, Any]:
    """The ``KILL_WORKERS`` parameters for a sweep of ``queue`` (api-v1.md §2.5).

    An empty ``ce_list`` means every CE (``"ALL"``). Otherwise the CEs are kept only if the queue
    lists them; a queue whose entry lists no CE cannot be checked, so the list goes as given. A list
    none of whose CEs belong to the queue is refused rather than widened to every CE.
    """
    statuses = _names("status_list", status_list)
    if not statuses:
        raise InvalidInput("status_list must name at least one worker status")
    unknown = sorted(set(statuses) - WORKER_STATUSES)
    if unknown:
        raise InvalidInput(
            f"unknown worker status {unknown[0]!r}; known: {', '.join(sorted(WORKER_STATUSES))}"
        )
    ces = _names("ce_list", ce_list)
    computing_element: str | list[str] = "ALL"
    if ces:
        known = queue_computing_elements(spec)
        kept = [ce for ce in ces if ce in known] if known else ces
        if not kept:
            raise InvalidInput(f"none of the CEs in ce_list serves queue {queue}")
        computing_element = kept
    return {
        "status": statuses,
        "computingSite": [queue],
        "computingElement": computing_element,
        "submissionHost": _names("submission_host_list", hosts),
    }


async def add_sweep(
    conn: AsyncConnection,
    clock: Clock,
    queue: str,
    status_list: Sequence[Any],
    ce_list: Sequence[Any],
    submission_host_list: Sequence[Any],
) -> int:
    """Queue ``KILL_WORKERS`` for the instance serving ``queue``; return the command id."""
    row = await queues_db.get(conn, queue) if len(queue) <= MAX_NAME else None
    if row is None:
        raise CommandNotQueued(QUEUE_UNKNOWN)
    spec = row["spec"]
    harvester_id = await serving_harvester(conn, queue, spec)
    if harvester_id is None:
        raise CommandNotQueued(NOT_SERVED)
    if len(harvester_id) > MAX_HARVESTER_ID:
        raise CommandNotQueued(NOT_GENERATED)
    params = sweep_params(queue, spec, status_list, ce_list, submission_host_list)
    return await commands_db.insert_command(
        conn, harvester_id, KILL_WORKERS, orjson.dumps(params).decode(), clock.now(), supersede=False
    )


async def set_n_workers(
    conn: AsyncConnection, clock: Clock, harvester_id: str, queue: str, targets: dict[str, dict[str, int]]
) -> int:
    """Queue ``SET_N_WORKERS_JOBTYPE:<queue>``, replacing an unfetched earlier target."""
    return await commands_db.insert_command(
        conn,
        harvester_id,
        f"{SET_N_WORKERS_PREFIX}{queue}",
        orjson.dumps(targets, option=orjson.OPT_SORT_KEYS).decode(),
        clock.now(),
        supersede=True,
    )


# Worker statuses a sweep from the CLI kills when none is named: every status that is not final.
LIVE_WORKER_STATUSES = ("submitted", "to_submit", "ready", "running", "idle", "pending")


async def overview(conn: AsyncConnection) -> dict[str, Any]:
    """``bamboo harvester list``: the instances with their last heartbeat, and the workers of each
    instance by queue and status (from the worker rows update_workers keeps)."""
    workers: dict[tuple[str, str], dict[str, int]] = {}
    for row in await commands_db.worker_counts(conn):
        key = (row["harvesterID"], row["computingSite"] or "")
        workers.setdefault(key, {})[row["status"] or ""] = int(row["n"])
    return {
        "instances": await commands_db.instances(conn),
        "workers": [
            {"harvester_id": harvester_id, "queue": queue, "statuses": statuses}
            for (harvester_id, queue), statuses in workers.items()
        ],
    }
