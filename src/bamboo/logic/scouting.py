"""Scouting and avalanche (domain.md §4.3, §2.2 "scout evaluation").

A task's first jobs are scouts: at most :data:`N_SCOUT_JOBS`, flagged ``sj`` in
``specialHandling``, with priority ``max(901, taskPriority + 1)``. The task waits in ``scouting``
(no further jobs) until the scouts have ended, or, for production tasks, half of them have
finished. Then their measurements (memory, walltime, CPU time and output size per event) update
the task and it avalanches: ``scouted`` and at once ``running``, and the generator makes the rest.
When no scout succeeded (or fewer than the split rule's ``SS`` asks) the task is broken.
The ``avalanche`` command skips the wait.

A task that has scouted carries ``US=3`` ("scout metrics updated") in its split rule, so a
retried task does not scout again; ``skipScout`` turns scouting off.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import notify
from bamboo.db import scouting as scouting_db
from bamboo.logic import task_status
from bamboo.logic.clock import Clock
from bamboo.logic.task_admin import format_split_rule, parse_split_rule
from bamboo.logic.taskparams import PRODUCTION_SOURCE_LABELS

log = logging.getLogger(__name__)

N_SCOUT_JOBS = 10
SCOUT_PRIORITY_FLOOR = 901
SCOUT_MARK = "sj"
BATCH = 50
SCOUTED_RULE, SCOUTED_VALUE = "US", "3"
_SUCCESS_RATE_RULE = "SS"
_EARLY_AVALANCHE_FRACTION = 0.5
# A pre-merge scout in ``merging`` has run and been measured; only its merge is still to come.
_SUCCEEDED = frozenset({"finished", "merging"})
_ENDED = frozenset({"finished", "failed", "cancelled", "closed", "merging"})
_RAM_PERCENTILE = 0.75
_TIME_PERCENTILE = 0.95
_DISK_PERCENTILE = 0.75
NO_SCOUT_SUCCEEDED = "no scout jobs succeeded"
TOO_FEW_SCOUTS_SUCCEEDED = "not enough scout jobs succeeded"


def wants_scouts(task: dict[str, Any], params: dict[str, Any]) -> bool:
    """Whether the generator's next jobs for ``task`` are its scouts."""
    if task["status"] != "ready" or params.get("skipScout"):
        return False
    return parse_split_rule(task["splitRule"]).get(SCOUTED_RULE) != SCOUTED_VALUE


def mark(job: dict[str, Any], task: dict[str, Any]) -> None:
    """Make a generated job row a scout."""
    priority = max(SCOUT_PRIORITY_FLOOR, (task["taskPriority"] or 0) + 1)
    # Appended: a scout keeps the tokens the job row was made with (e.g. "us" for secrets).
    job["specialHandling"] = ",".join(filter(None, (job.get("specialHandling"), SCOUT_MARK)))
    job["assignedPriority"] = job["currentPriority"] = priority


@dataclass(frozen=True)
class Verdict:
    """What the scouts say: keep waiting, avalanche, or break the task (with why)."""

    decision: str
    message: str = ""


WAIT = Verdict("wait")
AVALANCHE = Verdict("avalanche")


def judge(scouts: Sequence[dict[str, Any]], *, production: bool, success_rate_tenths: int | None) -> Verdict:
    """The verdict on a task's scout jobs (rows with ``jobStatus``).

    Args:
        production: production tasks avalanche once half of their scouts finished.
        success_rate_tenths: the ``SS`` split rule: the share of scouts that must succeed, in
            tenths (5 = half); None asks for at least one.
    """
    if not scouts:
        return WAIT
    finished = sum(1 for job in scouts if job["jobStatus"] in _SUCCEEDED)
    ended = sum(1 for job in scouts if job["jobStatus"] in _ENDED)
    if ended < len(scouts):
        early = production and finished >= math.ceil(len(scouts) * _EARLY_AVALANCHE_FRACTION)
        return AVALANCHE if early else WAIT
    if finished == 0:
        return Verdict("broken", NO_SCOUT_SUCCEEDED)
    if success_rate_tenths is not None and finished * 10 < success_rate_tenths * len(scouts):
        return Verdict("broken", TOO_FEW_SCOUTS_SUCCEEDED)
    return AVALANCHE


def _percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def measure(scouts: Sequence[dict[str, Any]], task: dict[str, Any]) -> dict[str, int]:
    """Task columns updated from the finished scouts (domain.md §4.3).

    ``ramCount``: 75th percentile of the peak PSS per core above ``baseRamCount``, in MB;
    ``walltime``: 95th percentile of the jobs' wall seconds; ``cpuTime``: 95th percentile of CPU
    seconds per event; ``outDiskCount``: 75th percentile of output bytes per event. A unit ending in
    ``Fixed`` was set by the user and is kept; a quantity no scout measured is not written.
    """
    finished = [job for job in scouts if job["jobStatus"] in _SUCCEEDED]
    base = task["baseRamCount"] or 0
    ram = [
        max(0.0, job["maxPSS"] / 1024 / max(job["coreCount"] or 1, 1) - base)
        for job in finished
        if job["maxPSS"]
    ]
    wall = [
        (job["endTime"] - job["startTime"]).total_seconds()
        for job in finished
        if job["startTime"] is not None and job["endTime"] is not None
    ]
    with_events = [job for job in finished if job["nEvents"]]
    cpu = [job["cpuConsumptionTime"] / job["nEvents"] for job in with_events if job["cpuConsumptionTime"]]
    disk = [job["outputFileBytes"] / job["nEvents"] for job in with_events if job["outputFileBytes"]]
    measured = {
        ("ramCount", "ramUnit"): _percentile(ram, _RAM_PERCENTILE),
        ("walltime", "walltimeUnit"): _percentile(wall, _TIME_PERCENTILE),
        ("cpuTime", "cpuTimeUnit"): _percentile(cpu, _TIME_PERCENTILE),
        ("outDiskCount", "outDiskUnit"): _percentile(disk, _DISK_PERCENTILE),
    }
    values: dict[str, int] = {}
    for (column, unit), value in measured.items():
        if value is None or (task.get(unit) or "").endswith("Fixed"):
            continue
        values[column] = math.ceil(value)
    return values


async def evaluate(conn: AsyncConnection, clock: Clock) -> int:
    """Judge the scouts of a batch of tasks in ``scouting``. Returns how many tasks moved on."""
    tasks = await scouting_db.claim_scouting(conn, BATCH)
    scouts = await scouting_db.scout_jobs(conn, [task["jediTaskID"] for task in tasks], SCOUT_MARK)
    changed = 0
    for task in tasks:
        rules = parse_split_rule(task["splitRule"])
        rate = rules.get(_SUCCESS_RATE_RULE)
        verdict = judge(
            scouts.get(task["jediTaskID"], []),
            production=task["prodSourceLabel"] in PRODUCTION_SOURCE_LABELS,
            success_rate_tenths=int(rate) if rate and rate.isdigit() else None,
        )
        if verdict.decision == "wait":
            continue
        if verdict.decision == "broken":
            await task_status.change(conn, clock, task, "tobroken", errorDialog=verdict.message)
        else:
            await avalanche(conn, clock, task, scouts.get(task["jediTaskID"], []))
        changed += 1
    return changed


async def avalanche(
    conn: AsyncConnection, clock: Clock, task: dict[str, Any], scouts: Sequence[dict[str, Any]] | None = None
) -> None:
    """scouting -> scouted (task updated from the scouts) -> running, in one go."""
    if scouts is None:
        scouts = (await scouting_db.scout_jobs(conn, [task["jediTaskID"]], SCOUT_MARK)).get(
            task["jediTaskID"], []
        )
    rules = parse_split_rule(task["splitRule"])
    rules[SCOUTED_RULE] = SCOUTED_VALUE
    metrics = measure(scouts, task)
    await task_status.change(conn, clock, task, "scouted", splitRule=format_split_rule(rules), **metrics)
    await task_status.change(conn, clock, {**task, "status": "scouted"}, "running")
    await notify.announce(conn, "generator")
    log.info("task %s: avalanche after %d scouts, measured %s", task["jediTaskID"], len(scouts), metrics)
