"""Pilot streaming: telling Harvester how many workers to submit where the work is (domain.md §8.2).

For each queue whose catalog entry asks for it (spec key ``pilot_streaming: true``), at most once
per period, the agent sizes new workers per job type (``user`` / ``managed``) and resource type from
the queue's activated jobs and the workers its Harvester reports (``report_worker_statistics``, last
4 h), and queues ``SET_N_WORKERS_JOBTYPE:<queue>`` with params ``{jobType: {resourceType: n}}`` for
the instance serving the queue (:func:`bamboo.logic.harvester_commands.serving_harvester`).

The rule (:func:`new_workers`), our reading of domain.md §8.2:

1. running cores ``R`` = running workers x cores per worker (1 for single-core resource types, the
   queue's ``corecount`` otherwise);
2. target queued cores ``T = max(40 % of R, 75 x corecount)``, no more than the activated jobs need
   (there is no point queueing pilots for work that is not there), and at least ``5 x corecount``;
3. ``T`` is shared between the kinds (job type, resource type) in proportion to the cores their
   activated jobs need; the floor with no demand goes to ``managed``/SCORE;
4. a kind's target workers = its cores / cores per worker, rounded up; high-memory kinds never get
   more workers than they have activated jobs (they are the scarce slots, the HIMEM limit);
   ``managed``/SCORE always targets at least one worker, so a queue never has no pilot waiting;
5. new workers = target - the kind's queued workers (submitted, to_submit, pending, ready), at least
   0; kinds with no new worker are left out, and a queue with none gets no command.

The period lives in the commands themselves: a queue whose last ``SET_N_WORKERS_JOBTYPE`` is newer
than the period is not sized again, so an agent step that finds nothing due does nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import harvester_commands as commands_db
from bamboo.logic import harvester_commands, queues, resource_types, target_slots
from bamboo.logic.clock import Clock

SPEC_KEY = "pilot_streaming"
RUNNING_SHARE = 0.4
CORES_PER_SLOT_TARGET = 75
CORES_PER_SLOT_FLOOR = 5
FLOOR_KIND = ("managed", "SCORE")
QUEUED_WORKER_STATUSES = frozenset({"submitted", "to_submit", "pending", "ready"})
ANALYSIS_LABELS = frozenset({"user", "panda"})

Kind = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Demand:
    """Activated jobs of one kind at a queue and the cores they need."""

    jobs: int
    cores: int


def worker_cores(resource_type: str, single_core_types: frozenset[str], corecount: int) -> int:
    return 1 if resource_type in single_core_types else corecount


def new_workers(
    corecount: int,
    demand: Mapping[Kind, Demand],
    workers: Mapping[Kind, Mapping[str, int]],
    single_core_types: frozenset[str],
) -> dict[str, dict[str, int]]:
    """New workers per job type and resource type for one queue (the rule in the module docstring).

    Args:
        corecount: cores of the queue's multi-core slots (at least 1).
        demand: activated jobs per (job type, resource type).
        workers: reported workers per (job type, resource type) and status.
        single_core_types: resource types whose workers have one core.
    """
    corecount = max(1, corecount)
    running = sum(
        statuses.get("running", 0) * worker_cores(kind[1], single_core_types, corecount)
        for kind, statuses in workers.items()
    )
    needed = sum(d.cores for d in demand.values())
    target = max(RUNNING_SHARE * running, CORES_PER_SLOT_TARGET * corecount)
    target = max(min(target, needed), CORES_PER_SLOT_FLOOR * corecount)
    shares: dict[Kind, float] = (
        {kind: target * d.cores / needed for kind, d in demand.items() if d.cores > 0}
        if needed
        else {FLOOR_KIND: float(target)}
    )
    shares.setdefault(FLOOR_KIND, 0.0)
    answer: dict[str, dict[str, int]] = {}
    for kind, cores in shares.items():
        per_worker = worker_cores(kind[1], single_core_types, corecount)
        wanted = math.ceil(cores / per_worker - 1e-9)
        if "HIMEM" in kind[1]:
            wanted = min(wanted, demand.get(kind, Demand(0, 0)).jobs)
        if kind == FLOOR_KIND:
            wanted = max(wanted, 1)
        queued = sum(n for status, n in workers.get(kind, {}).items() if status in QUEUED_WORKER_STATUSES)
        if wanted - queued > 0:
            answer.setdefault(kind[0], {})[kind[1]] = wanted - queued
    return answer


def job_type(prod_source_label: str | None) -> str:
    """The worker job type a job needs (api-v1.md §3.7): analysis labels ``user``, else ``managed``."""
    return "user" if prod_source_label in ANALYSIS_LABELS else "managed"


def _demand(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[Kind, Demand]]:
    by_queue: dict[str, dict[Kind, Demand]] = {}
    for row in rows:
        kind = (job_type(row["prodSourceLabel"]), row["resource_type"] or resource_types.UNDEFINED)
        kinds = by_queue.setdefault(row["computingSite"], {})
        old = kinds.get(kind, Demand(0, 0))
        kinds[kind] = Demand(old.jobs + int(row["n"]), old.cores + int(row["cores"] or 0))
    return by_queue


def _workers(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[Kind, dict[str, int]]]:
    by_queue: dict[str, dict[Kind, dict[str, int]]] = {}
    for row in rows:
        statuses = by_queue.setdefault(row["computingSite"], {}).setdefault(
            (row["jobType"], row["resourceType"]), {}
        )
        statuses[row["status"]] = statuses.get(row["status"], 0) + int(row["n_workers"])
    return by_queue


async def stream(conn: AsyncConnection, clock: Clock, period: timedelta) -> int:
    """One agent step: a command for each due queue that asks for pilot streaming; returns how many."""
    now = clock.now()
    specs = [spec for spec in await queues.list_specs(conn) if spec.get(SPEC_KEY) is True]
    if not specs:
        return 0
    names = [spec["name"] for spec in specs]
    last = await commands_db.last_command_dates(
        conn, [f"{harvester_commands.SET_N_WORKERS_PREFIX}{name}" for name in names]
    )
    due = [
        spec
        for spec in specs
        if (when := last.get(f"{harvester_commands.SET_N_WORKERS_PREFIX}{spec['name']}")) is None
        or now - when >= period
    ]
    if not due:
        return 0
    due_names = [spec["name"] for spec in due]
    demand = _demand(await commands_db.activated_by_kind(conn, due_names))
    workers = _workers(
        await commands_db.worker_stats(conn, now - target_slots.WORKER_STATS_WINDOW, due_names)
    )
    single = frozenset(
        row["resource_name"] for row in await resource_types.resource_type_list(conn) if row["maxcore"] == 1
    )
    sent = 0
    for spec in due:
        harvester_id = await harvester_commands.serving_harvester(conn, spec["name"], spec)
        if harvester_id is None or len(harvester_id) > harvester_commands.MAX_HARVESTER_ID:
            continue
        corecount = spec.get("corecount")
        targets = new_workers(
            corecount if isinstance(corecount, int) and corecount > 0 else 1,
            demand.get(spec["name"], {}),
            workers.get(spec["name"], {}),
            single,
        )
        if targets:
            await harvester_commands.set_n_workers(conn, clock, harvester_id, spec["name"], targets)
            sent += 1
    return sent
