"""Target slots (``harvester/add_target_slots``) and how they steer dispatch and brokerage.

A slot row says how many jobs of one kind a queue should hold: key (queue, global share, resource
type), where an empty share or resource type means "any". Rules, where the contract leaves them
to us:

* A row applies to a job when its share and resource type are empty or equal to the job's. Every
  applicable row must allow the job (so a queue-wide row caps the whole queue and a narrower row
  further limits one kind); rows whose ``expirationTime`` has passed are ignored.
* ``numSlots = 0``: no new job of that kind is handed out (``pilot/acquire_jobs``) or brokered to
  the queue (job generation).
* ``numSlots = n > 0``: at most ``n`` jobs of that kind hold a slot, i.e. are ``sent``,
  ``starting`` or ``running`` at the queue. A full row blocks like 0; otherwise one acquire takes
  no more jobs than the smallest remaining room of the queue's rows, so no cap is overrun by a
  single call. Concurrent calls on several replicas may overrun a cap by at most one call's worth:
  the cap steers, it is not a lock.
* Brokerage (job generation) leaves out a queue whose live rows give the task's jobs 0 slots, and
  among the queues left prefers those whose Harvester reports (``report_worker_statistics``, last
  4 h) more idle, ready or submitted workers than the queue has activated jobs: workers there are
  waiting for work (``logic/brokerage.py``).
* ``slots = -1`` deletes the row; ``expiration_date`` is a number of days of validity (the
  contract's quirk), none meaning "until changed".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import harvester_commands as slots_db
from bamboo.db import queues as queues_db
from bamboo.logic.clock import Clock
from bamboo.logic.errors import InvalidInput

MAX_GSHARE = 32
MAX_RESOURCE_TYPE = 56
MAX_SLOTS = 10_000_000
MAX_DAYS = 3650
# Counting a row's jobs stops here: beyond it the exact number changes nothing for a decision.
MAX_COUNT = MAX_SLOTS


@dataclass(frozen=True, slots=True)
class SlotRow:
    gshare: str
    resource_type: str
    num_slots: int
    expiration: datetime | None

    def live(self, now: datetime) -> bool:
        return self.expiration is None or self.expiration > now

    def covers(self, gshare: str | None, resource_type: str | None) -> bool:
        return (not self.gshare or self.gshare == gshare) and (
            not self.resource_type or self.resource_type == resource_type
        )


def rows_from(records: Iterable[Mapping[str, Any]]) -> tuple[SlotRow, ...]:
    return tuple(
        SlotRow(r["gshare"] or "", r["resourceType"] or "", int(r["numSlots"]), r["expirationTime"])
        for r in records
    )


def live_rows(rows: Iterable[SlotRow], now: datetime) -> tuple[SlotRow, ...]:
    return tuple(row for row in rows if row.live(now))


def closed_to(rows: Iterable[SlotRow], gshare: str | None, resource_type: str | None) -> bool:
    """Whether one of these (live) rows gives 0 slots to jobs of this share and resource type."""
    return any(row.num_slots == 0 and row.covers(gshare, resource_type) for row in rows)


def live_by_queue(records: Iterable[Mapping[str, Any]], now: datetime) -> dict[str, tuple[SlotRow, ...]]:
    """The live slot rows of each queue (brokerage reads them once per cycle)."""
    grouped: dict[str, list[SlotRow]] = {}
    for record in records:
        (row,) = rows_from([record])
        if row.live(now):
            grouped.setdefault(record["pandaQueueName"], []).append(row)
    return {queue: tuple(rows) for queue, rows in grouped.items()}


# Reported worker statuses of workers that wait for work or will ask for it soon.
WAITING_WORKER_STATUSES = frozenset({"idle", "ready", "submitted"})
# How old a worker report may be to count (as harvester/get_worker_statistics reads them).
WORKER_STATS_WINDOW = timedelta(hours=4)


def waiting_workers(stat_rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Workers waiting for work per queue, from report_worker_statistics rows (all instances)."""
    waiting: dict[str, int] = {}
    for row in stat_rows:
        if row["status"] in WAITING_WORKER_STATUSES and row["n_workers"] > 0:
            waiting[row["computingSite"]] = waiting.get(row["computingSite"], 0) + int(row["n_workers"])
    return waiting


@dataclass(frozen=True, slots=True)
class DispatchLimits:
    """What the slots of a queue allow one acquire: kinds it must not take, and at most how many."""

    # (gshare, resource type) keys of full rows; "" stands for any.
    blocked: tuple[tuple[str, str], ...] = ()
    budget: int | None = None

    @property
    def closed(self) -> bool:
        """A full row covering every kind: nothing may be handed out."""
        return ("", "") in self.blocked


async def dispatch_limits(
    conn: AsyncConnection, queue: str, rows: Sequence[SlotRow], now: datetime
) -> DispatchLimits:
    """The limits the queue's live slot rows put on one acquire (counting the jobs capped rows hold)."""
    blocked: list[tuple[str, str]] = []
    budget: int | None = None
    for row in live_rows(rows, now):
        room = 0
        if row.num_slots > 0:
            holding = await slots_db.count_holding(conn, queue, row.gshare, row.resource_type, row.num_slots)
            room = row.num_slots - holding
        if room <= 0:
            blocked.append((row.gshare, row.resource_type))
        else:
            budget = room if budget is None else min(budget, room)
    return DispatchLimits(tuple(blocked), budget)


def _optional(value: str | None, label: str, longest: int) -> str:
    if value is None:
        return ""
    if len(value) > longest:
        raise InvalidInput(f"{label} must be at most {longest} characters")
    return value


def _days(expiration_date: str | None) -> int | None:
    if expiration_date is None:
        return None
    try:
        days = int(expiration_date)
    except (TypeError, ValueError):
        raise InvalidInput(
            f"expiration_date must be a whole number of days of validity, got {expiration_date!r}"
        ) from None
    if not 0 < days <= MAX_DAYS:
        raise InvalidInput(f"expiration_date must be between 1 and {MAX_DAYS} days, got {days}")
    return days


async def set_target_slots(
    conn: AsyncConnection,
    clock: Clock,
    queue: str,
    slots: int,
    global_share: str | None,
    resource_type: str | None,
    expiration_date: str | None,
) -> str:
    """harvester/add_target_slots: upsert (or with -1 delete) one slot row; return the message."""
    if not -1 <= slots <= MAX_SLOTS:
        raise InvalidInput(
            f"slots must be -1 (delete), 0 or a positive number up to {MAX_SLOTS}, got {slots}"
        )
    if len(queue) > 128 or await queues_db.status_of(conn, queue) is None:
        raise InvalidInput(f"unknown queue {queue[:128]!r}")
    gshare = _optional(global_share, "global_share", MAX_GSHARE)
    rtype = _optional(resource_type, "resource_type", MAX_RESOURCE_TYPE)
    days = _days(expiration_date)
    now = clock.now()
    if slots == -1:
        await slots_db.delete_slots(conn, queue, gshare, rtype)
    else:
        expiration = None if days is None else now + timedelta(days=days)
        await slots_db.set_slots(conn, queue, gshare, rtype, slots, now, expiration)
    return f"set numSlots={slots} for PQ={queue} gshare={global_share} resource={resource_type}"
