"""Harvester instances and what they report besides workers (api-v1.md §2.5, domain.md §8.2):
heartbeats (with command locks), service metrics, dialogs and worker statistics.

A ``harvester_id`` belongs to the caller that first used it: its compact user name is recorded as
the instance's ``owner`` by whichever write comes first (a heartbeat, a worker update...). Any
other caller needs the production role to write for that instance, so one user cannot overwrite
another's workers, metrics or statistics; the contract only asks for a secure call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import harvester as harvester_db
from bamboo.logic.clock import Clock
from bamboo.logic.errors import BambooError, InvalidInput

# Column sizes of the harvester tables (db/schema.py).
MAX_HARVESTER_ID = 50
MAX_HOST = 128
MAX_SITE = 128
MAX_RESOURCE_TYPE = 56
MAX_JOB_TYPE = 80
MAX_STATUS = 80
MAX_COMMAND = 256
# Bounds of one call: generous for any real Harvester, small enough that a request cannot make
# the server hold or write an unbounded amount.
MAX_HEARTBEAT_DATA_BYTES = 64 * 1024
MAX_COMMAND_LOCKS = 1_000
MAX_METRICS = 1_000
MAX_METRICS_TEXT = 64 * 1024
MAX_DIALOGS = 1_000
MAX_STATISTICS_TEXT = 1_000_000
MAX_STATISTICS_ROWS = 10_000
# get_worker_statistics reports what arrived within this window (domain.md §8.2).
WORKER_STATS_WINDOW = timedelta(hours=4)
# report_worker_statistics leaves this resource type out (Harvester's "not yet known").
UNDEFINED_RESOURCE_TYPE = "Undefined"
STATISTICS_OK = "OK"

_DATETIME_PREFIX = "datetime/"
_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S")
# heartbeat data keys that have a column of their own, with its size.
_INSTANCE_TEXTS = {"sw_version": 64, "commit_stamp": 100, "description": 256}


@dataclass(frozen=True, slots=True)
class Caller:
    """Who writes for an instance: the compact user name and whether it has the production role."""

    user: str
    production: bool


class NotInstanceOwner(BambooError):
    """The harvester_id belongs to another user and the caller has no production role."""


def parse_time(name: str, value: Any) -> datetime | None:
    """A Harvester timestamp: ``datetime/YYYY-MM-DD HH:MM:SS[.ffffff]`` (how its communicator
    encodes datetimes) or the same without the prefix, as UTC. None stays None.

    Raises:
        InvalidInput: anything else, naming ``name``.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.removeprefix(_DATETIME_PREFIX)
        for pattern in _TIME_FORMATS:
            try:
                return datetime.strptime(text, pattern).replace(tzinfo=UTC)
            except ValueError:
                continue
    shown = repr(value)[:60]
    raise InvalidInput(
        f"Value error: {name} must be a time as 'datetime/YYYY-MM-DD HH:MM:SS.ffffff', got {shown}"
    )


def text(name: str, value: Any, limit: int) -> str | None:
    """A text value cut to its column's size; numbers are taken as their decimal text.

    Raises:
        InvalidInput: a value that is neither text, a number nor null.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return value[:limit]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)[:limit]
    raise InvalidInput(f"Type error: {name} must be a string, got {type(value).__name__}")


def key_text(name: str, value: Any, limit: int) -> str:
    """A non-empty text that is part of a row's key: too long is refused, not cut (two different
    values cut alike would overwrite each other)."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"Type error: {name} must be a non-empty string")
    if len(value) > limit:
        raise InvalidInput(f"Value error: {name} must be at most {limit} characters")
    return value


def check_harvester_id(harvester_id: str) -> str:
    return key_text("harvester_id", harvester_id, MAX_HARVESTER_ID)


async def take_instance(conn: AsyncConnection, clock: Clock, caller: Caller, harvester_id: str) -> None:
    """Make sure ``caller`` may write for ``harvester_id``, recording it as owner on first use.

    Raises:
        NotInstanceOwner: the instance is another user's and the caller has no production role.
    """
    check_harvester_id(harvester_id)
    owner = await harvester_db.claim_instance(conn, harvester_id, caller.user, clock.now())
    check_owner(harvester_id, owner, caller)


def check_owner(harvester_id: str, owner: str | None, caller: Caller) -> None:
    if owner is not None and owner != caller.user and not caller.production:
        raise NotInstanceOwner(
            f"Permission denied: harvester_id {harvester_id} is used by another user; "
            "only its owner or a production role may act for it"
        )


async def may_read_instance(conn: AsyncConnection, caller: Caller, harvester_id: str) -> None:
    """The same rule for reads of one instance's data, without recording anything."""
    check_harvester_id(harvester_id)
    check_owner(harvester_id, await harvester_db.owner_of(conn, harvester_id), caller)


# --- heartbeat ----------------------------------------------------------------------------------


def _command_locks(commands: Any) -> list[tuple[str, str, str]]:
    if commands is None:
        return []
    if not isinstance(commands, list):
        raise InvalidInput("Type error: data['commands'] must be a list")
    if len(commands) > MAX_COMMAND_LOCKS:
        raise InvalidInput(f"Value error: data['commands'] holds more than {MAX_COMMAND_LOCKS:,} entries")
    locks = []
    for index, entry in enumerate(commands):
        name = f"data['commands'][{index}]"
        if not isinstance(entry, dict):
            raise InvalidInput(f"Type error: {name} must be an object")
        locks.append(
            (
                key_text(f"{name}['command']", entry.get("command"), MAX_COMMAND),
                key_text(f"{name}['computingSite']", entry.get("computingSite"), MAX_SITE),
                key_text(f"{name}['resourceType']", entry.get("resourceType"), MAX_RESOURCE_TYPE),
            )
        )
    return locks


def instance_columns(data: Mapping[str, Any]) -> dict[str, Any]:
    """The instance columns a heartbeat's data sets (only the keys it holds)."""
    values: dict[str, Any] = {}
    if "startTime" in data:
        values["startTime"] = parse_time("data['startTime']", data["startTime"])
    for key, limit in _INSTANCE_TEXTS.items():
        if key in data:
            values[key] = text(f"data['{key}']", data[key], limit)
    return values


async def heartbeat(
    conn: AsyncConnection,
    clock: Clock,
    caller: Caller,
    harvester_id: str,
    data: Mapping[str, Any] | None,
    host: str,
) -> None:
    """Record that the instance is alive: its host, the time, and what ``data`` describes.

    Works on first contact and with no data (DESIGN.md §9.3). Data keys with a column of their own
    (startTime, sw_version, commit_stamp, description) fill it; the whole dict is kept in the JSON
    ``data`` column, replacing the previous one; ``commands`` registers command locks.
    """
    data = dict(data or {})
    if len(orjson.dumps(data)) > MAX_HEARTBEAT_DATA_BYTES:
        raise InvalidInput(f"Value error: data is larger than {MAX_HEARTBEAT_DATA_BYTES:,} bytes as JSON")
    values = instance_columns(data)
    locks = _command_locks(data.get("commands"))
    await take_instance(conn, clock, caller, harvester_id)
    now = clock.now()
    values.update(hostName=host[:MAX_HOST], lastUpdate=now, data=data)
    await harvester_db.update_instance(conn, harvester_id, values)
    await harvester_db.add_command_locks(conn, harvester_id, locks, now)


# --- service metrics and dialogs ----------------------------------------------------------------


async def add_metrics(
    conn: AsyncConnection, clock: Clock, caller: Caller, harvester_id: str, metrics: list
) -> None:
    """Store ``[creation_time, host, metrics JSON text]`` entries as sent."""
    if len(metrics) > MAX_METRICS:
        raise InvalidInput(f"Value error: metrics holds more than {MAX_METRICS:,} entries")
    rows = []
    for index, entry in enumerate(metrics):
        name = f"metrics[{index}]"
        if not isinstance(entry, list) or len(entry) != 3:
            raise InvalidInput(f"Type error: {name} must be [creation_time, host, metrics]")
        created, host, body = entry
        moment = parse_time(f"{name}[0]", created)
        if moment is None:
            raise InvalidInput(f"Value error: {name}[0] must be the creation time")
        if isinstance(body, dict):
            # Sent decoded instead of as JSON text: store the same text Harvester would send.
            body = orjson.dumps(body).decode()
        if not isinstance(body, str):
            raise InvalidInput(f"Type error: {name}[2] must be the metrics as JSON text")
        if len(body) > MAX_METRICS_TEXT:
            raise InvalidInput(f"Value error: {name}[2] is longer than {MAX_METRICS_TEXT:,} characters")
        rows.append(
            {
                "harvester_ID": harvester_id,
                "harvester_host": key_text(f"{name}[1]", host, MAX_HOST),
                "creation_time": moment,
                "metrics": body,
            }
        )
    await take_instance(conn, clock, caller, harvester_id)
    await harvester_db.add_metrics(conn, rows)


_DIALOG_TEXTS = {"moduleName": 100, "identifier": 100, "messageLevel": 10, "diagMessage": 500}


async def add_dialogs(
    conn: AsyncConnection, clock: Clock, caller: Caller, harvester_id: str, dialogs: list
) -> None:
    """Store dialogs; each replaces the instance's dialog with the same diagID."""
    if len(dialogs) > MAX_DIALOGS:
        raise InvalidInput(f"Value error: dialogs holds more than {MAX_DIALOGS:,} entries")
    rows: dict[int, dict[str, Any]] = {}
    for index, entry in enumerate(dialogs):
        name = f"dialogs[{index}]"
        if not isinstance(entry, dict):
            raise InvalidInput(f"Type error: {name} must be an object")
        diag_id = entry.get("diagID")
        if not isinstance(diag_id, int) or isinstance(diag_id, bool) or not -(2**63) <= diag_id < 2**63:
            raise InvalidInput(f"Type error: {name}['diagID'] must be a 64-bit integer")
        row: dict[str, Any] = {"harvester_id": harvester_id, "diagID": diag_id}
        row["creationTime"] = parse_time(f"{name}['creationTime']", entry.get("creationTime"))
        for key, limit in _DIALOG_TEXTS.items():
            row[key] = text(f"{name}['{key}']", entry.get(key), limit)
        rows[diag_id] = row  # the same diagID twice in one call: the later one wins, as in two calls
    await take_instance(conn, clock, caller, harvester_id)
    await harvester_db.put_dialogs(conn, [rows[key] for key in sorted(rows)])


# --- worker statistics --------------------------------------------------------------------------


def parse_worker_statistics(statistics: str) -> list[tuple[str, str, str, int]]:
    """``{jobType: {resourceType: {status: n}}}`` JSON text as (jobType, resourceType, status, n)
    rows, the ``Undefined`` resource type left out.

    Raises:
        InvalidInput: not that shape, a key too long for its column, a count that is not a
            non-negative integer, or more than :data:`MAX_STATISTICS_ROWS` rows.
    """
    if len(statistics) > MAX_STATISTICS_TEXT:
        raise InvalidInput(f"Value error: statistics is longer than {MAX_STATISTICS_TEXT:,} characters")
    try:
        decoded = orjson.loads(statistics)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"Value error: statistics is not valid JSON: {exc}") from exc
    shape = "statistics must be JSON {jobType: {resourceType: {status: number of workers}}}"
    if not isinstance(decoded, dict):
        raise InvalidInput(f"Type error: {shape}")
    rows = []
    for job_type, by_resource in decoded.items():
        if not isinstance(by_resource, dict):
            raise InvalidInput(f"Type error: {shape}")
        key_text("statistics jobType", job_type, MAX_JOB_TYPE)
        for resource_type, by_status in by_resource.items():
            if not isinstance(by_status, dict):
                raise InvalidInput(f"Type error: {shape}")
            key_text("statistics resourceType", resource_type, MAX_RESOURCE_TYPE)
            for status, count in by_status.items():
                key_text("statistics status", status, MAX_STATUS)
                if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count < 2**31:
                    raise InvalidInput(
                        f"Type error: {shape}; {job_type}/{resource_type}/{status} is {count!r}"
                    )
                if resource_type != UNDEFINED_RESOURCE_TYPE:
                    rows.append((job_type, resource_type, status, count))
                if len(rows) > MAX_STATISTICS_ROWS:
                    raise InvalidInput(
                        f"Value error: statistics holds more than {MAX_STATISTICS_ROWS:,} counts"
                    )
    return rows


async def report_worker_statistics(
    conn: AsyncConnection, clock: Clock, caller: Caller, harvester_id: str, panda_queue: str, statistics: str
) -> None:
    """Replace the instance's worker counts of one queue by the reported ones."""
    site = key_text("panda_queue", panda_queue, MAX_SITE)
    counts = parse_worker_statistics(statistics)
    await take_instance(conn, clock, caller, harvester_id)
    now = clock.now()
    rows = [
        {
            "harvester_ID": harvester_id,
            "computingSite": site,
            "jobType": job_type,
            "resourceType": resource_type,
            "status": status,
            "n_workers": count,
            "lastUpdate": now,
        }
        for job_type, resource_type, status, count in counts
    ]
    await harvester_db.replace_worker_stats(conn, harvester_id, site, rows)


async def worker_statistics(conn: AsyncConnection, clock: Clock) -> dict[str, Any]:
    """``{computingSite: {harvesterID: {jobType: {resourceType: {status: n}}}}}`` of the reports
    of the last 4 h."""
    tree: dict[str, Any] = {}
    for row in await harvester_db.worker_stats_since(conn, clock.now() - WORKER_STATS_WINDOW):
        by_type = tree.setdefault(row["computingSite"], {}).setdefault(row["harvester_ID"], {})
        by_type.setdefault(row["jobType"], {}).setdefault(row["resourceType"], {})[row["status"]] = row[
            "n_workers"
        ]
    return tree
