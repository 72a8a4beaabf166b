"""Choosing the queue for a task's jobs (domain.md §6.2, the generic job broker).

Pure functions on queue specs and queue loads: the generator gathers both and asks
:func:`choose_queue`. Every queue that is ruled out gets a reason, so a task that cannot run says
why in its ``errorDialog``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ANALYSIS_LABELS = frozenset({"user", "panda"})
PRODUCTION_LABELS = frozenset({"managed", "prod_test", "test", "ptest", "rc_test", "rc_test2", "rc_alrb"})


@dataclass(frozen=True, slots=True)
class TaskNeeds:
    """What a task asks of a queue.

    Attributes:
        site: the task's ``site`` parameter: a queue name, a comma list, or a regular expression.
        prod_source_label: the task's label (analysis labels need analysis or unified queues).
        core_count: cores per job (0: any).
        ram_count: memory, per core for ``MBPerCore`` units (the default), else per job.
        ram_per_core: whether ``ram_count`` is per core.
        base_ram_count: memory added per job.
        walltime: expected seconds per job (0: unknown, not checked).
    """

    site: str | None
    prod_source_label: str
    core_count: int = 1
    ram_count: int = 0
    ram_per_core: bool = True
    base_ram_count: int = 0
    walltime: int = 0


@dataclass(frozen=True, slots=True)
class QueueLoad:
    activated: int = 0
    defined: int = 0
    running: int = 0

    @property
    def weight(self) -> float:
        """Prefer queues that run much and have little queued (domain.md §6.2)."""
        return (self.running + 1) / (self.activated + self.defined + 1) / (self.defined + 1)


@dataclass(frozen=True, slots=True)
class Choice:
    queue: dict[str, Any] | None
    reasons: tuple[str, ...]

    def explain(self) -> str:
        return (
            "no queue can run this task: " + "; ".join(self.reasons) if self.reasons else "no queue defined"
        )


def site_matches(site_parameter: str, queue_name: str) -> bool:
    """Whether a task's ``site`` names this queue: exactly, in a comma list, or as a regex."""
    candidates = [item.strip() for item in site_parameter.split(",") if item.strip()]
    if queue_name in candidates:
        return True
    for candidate in candidates:
        try:
            if re.fullmatch(candidate, queue_name):
                return True
        except re.error:
            continue
    return False


def job_core_count(needs: TaskNeeds, queue: Mapping[str, Any]) -> int:
    """Cores a job gets at a queue: the queue's slot size, or the task's when the queue lets the
    job decide (-1) or accepts anything (0 / unset); single-core tasks always get one core."""
    task_cores = needs.core_count or 1
    if task_cores == 1:
        return 1
    queue_cores = queue.get("corecount")
    if queue_cores in (None, 0, -1):
        return task_cores
    return int(queue_cores)


def job_memory(needs: TaskNeeds, cores: int) -> int:
    """The job's memory in MB: per-core memory times cores (or the per-job value) plus the base."""
    ram = needs.ram_count * cores if needs.ram_per_core else needs.ram_count
    return ram + needs.base_ram_count


def _type_fits(label: str, queue_type: str) -> bool:
    if queue_type == "unified":
        return True
    if label in ANALYSIS_LABELS:
        return queue_type == "analysis"
    if label in PRODUCTION_LABELS:
        return queue_type == "production"
    return True


def rejection(needs: TaskNeeds, queue: Mapping[str, Any]) -> str | None:
    """Why this queue cannot take the task's jobs, or None when it can."""
    name = queue["name"]
    preassigned = bool(needs.site) and site_matches(needs.site or "", name)
    if needs.site and not preassigned:
        return f"{name} not in site={needs.site}"
    status = queue.get("status", "online")
    if status in ("offline", "paused"):
        return f"{name} is {status}"
    if status in ("brokeroff", "test") and not preassigned:
        return f"{name} is {status} and the task does not name it"
    if not _type_fits(needs.prod_source_label, queue.get("type", "unified")):
        return f"{name} is a {queue.get('type')} queue, the task is {needs.prod_source_label}"
    task_cores = needs.core_count
    queue_cores = queue.get("corecount")
    if task_cores == 1 and queue_cores not in (None, 0, 1, -1):
        return f"{name} has {queue_cores}-core slots, the task is single-core"
    if task_cores > 1 and queue_cores not in (None, 0, -1) and queue_cores < task_cores:
        return f"{name} has {queue_cores}-core slots, the task needs {task_cores}"
    memory = job_memory(needs, job_core_count(needs, queue))
    maxrss, minrss = queue.get("maxrss") or 0, queue.get("minrss") or 0
    if maxrss and memory > maxrss:
        return f"{name} offers at most {maxrss} MB, a job needs {memory} MB"
    if minrss and memory < minrss:
        return f"{name} wants jobs of at least {minrss} MB, a job needs {memory} MB"
    if needs.walltime:
        maxtime, mintime = queue.get("maxtime") or 0, queue.get("mintime") or 0
        if maxtime and needs.walltime > maxtime:
            return f"{name} allows {maxtime} s, a job needs {needs.walltime} s"
        if mintime and needs.walltime < mintime:
            return f"{name} wants jobs of at least {mintime} s"
    return None


def choose_queue(
    needs: TaskNeeds,
    queues: Sequence[Mapping[str, Any]],
    loads: Mapping[str, QueueLoad],
    rng: random.Random | None = None,
) -> Choice:
    """The best queue for the task: among those that pass every filter, the highest weight; ties
    are broken at random so equal queues share the work."""
    reasons: list[str] = []
    eligible: list[tuple[float, Mapping[str, Any]]] = []
    for queue in queues:
        why = rejection(needs, queue)
        if why is None:
            eligible.append((loads.get(queue["name"], QueueLoad()).weight, queue))
        else:
            reasons.append(why)
    if not eligible:
        return Choice(None, tuple(reasons))
    best = max(weight for weight, _ in eligible)
    top = [queue for weight, queue in eligible if weight == best]
    chosen = (rng or random).choice(top) if len(top) > 1 else top[0]
    return Choice(dict(chosen), ())
