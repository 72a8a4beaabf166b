"""Choosing the queue for a task's jobs (domain.md §6.2, the generic job broker).

Pure functions on queue specs, queue loads and pilot activity: the generator gathers them and asks
:func:`choose_queue`. Every queue that is ruled out gets a reason, so a task that cannot run says
why in its ``errorDialog``. The filters, in order:

1. the task's ``site`` (a name, a comma list or a regex) and the queue status: ``online`` takes any
   task, ``offline`` none; ``brokeroff``, ``test`` and ``paused`` only tasks that name the queue
   (``test`` also takes test-labelled tasks); the queue type (analysis / production / unified);
2. scratch space (``maxwdir``): output + work disk + the largest input file, without the input when
   the queue reads it directly (``maxinputsize`` -1);
3. walltime within ``[mintime, maxtime]``;
4. cores and 5. memory, both skipped for a queue the task names;
6. the catchall ``allowed_processing`` / ``excluded_processing`` lists (``|``-separated);
7. pilot activity: a queue no pilot talked to recently is left out while another can take the work
   (test-labelled tasks and queues with catchall ``allow_no_pilot`` are exempt);
8. Harvester's target slots: a queue whose live slot rows give the task's jobs (its global share,
   the resource type its jobs would get there) 0 slots is left out;
9. Harvester's worker reports: among the queues left, those with more waiting workers (idle, ready,
   submitted) than activated jobs go first (:mod:`bamboo.logic.target_slots`).

A queue with capability ``ucore`` (unified resource types) is brokered as one pseudo-queue per
resource type, ``<PQ>/<type>``, whose core count and memory bounds come from the type: a
single-core task runs there in a one-core slot, an 8-core one in a full slot.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bamboo.logic.resource_types import match_job
from bamboo.logic.target_slots import SlotRow, closed_to

ANALYSIS_LABELS = frozenset({"user", "panda"})
PRODUCTION_LABELS = frozenset({"managed", "prod_test", "test", "ptest", "rc_test", "rc_test2", "rc_alrb"})
# Labels of test jobs: a test queue takes them, and they need no pilot activity (§6.2 filter 8).
TEST_LABELS = frozenset({"test", "prod_test", "install", "ptest", "rc_test", "rc_test2", "rc_alrb"})
UNIFIED_RESOURCE_TYPES = "ucore"
_UNDEFINED_TYPE = "Undefined"


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
        disk: output plus work disk per job, MB.
        largest_input: the largest input file the task still has to process, MB.
        processing_type: the task's processingType.
        gshare: the task's global share (target slots are per share).
    """

    site: str | None
    prod_source_label: str
    core_count: int = 1
    ram_count: int = 0
    ram_per_core: bool = True
    base_ram_count: int = 0
    walltime: int = 0
    disk: int = 0
    largest_input: int = 0
    processing_type: str | None = None
    gshare: str | None = None


def catchall(queue: Mapping[str, Any]) -> dict[str, str]:
    """The queue's catchall switches: CRIC's comma-separated ``catchall`` string (``key`` or
    ``key=value`` items) merged with the ``extra_queue_params`` object; a bare key maps to ``""``."""
    found: dict[str, str] = {}
    text = queue.get("catchall")
    if isinstance(text, str):
        for item in text.split(","):
            key, _, value = item.strip().partition("=")
            if key:
                found[key] = value.strip()
    extra = queue.get("extra_queue_params")
    if isinstance(extra, Mapping):
        found.update({str(key): "" if value is None else str(value) for key, value in extra.items()})
    return found


def _switched_on(queue: Mapping[str, Any], key: str) -> bool:
    value = catchall(queue).get(key)
    return value is not None and value.lower() not in ("false", "0", "no", "off")


def disables_reassign(queue: Mapping[str, Any]) -> bool:
    """Whether the queue's catchall says ``disableReassign`` (exempt from re-brokerage, §10.3)."""
    return _switched_on(queue, "disableReassign")


def allows_no_pilot(queue: Mapping[str, Any]) -> bool:
    """Whether the queue takes work without recent pilot activity (catchall ``allow_no_pilot``)."""
    return _switched_on(queue, "allow_no_pilot")


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


def _pipe_list(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split("|") if item.strip()]


def _bounded(value: int | None) -> int:
    return value if value and value > 0 else 0


def rejection(needs: TaskNeeds, queue: Mapping[str, Any]) -> str | None:
    """Why this queue (or pseudo-queue) cannot take the task's jobs, or None when it can."""
    name = queue["name"]
    shown = f"{name}/{queue['resource_type']}" if queue.get("resource_type") else name
    preassigned = bool(needs.site) and site_matches(needs.site or "", name)
    if needs.site and not preassigned:
        return f"{name} not in site={needs.site}"
    status = queue.get("status", "online")
    if status == "offline":
        return f"{name} is offline"
    if (
        status != "online"
        and not preassigned
        and not (status == "test" and needs.prod_source_label in TEST_LABELS)
    ):
        return f"{name} is {status} and the task does not name it"
    if not _type_fits(needs.prod_source_label, queue.get("type", "unified")):
        return f"{name} is a {queue.get('type')} queue, the task is {needs.prod_source_label}"
    maxwdir = _bounded(queue.get("maxwdir"))
    if maxwdir:
        direct_io = queue.get("maxinputsize") == -1
        scratch = needs.disk + (0 if direct_io else needs.largest_input)
        if scratch > maxwdir:
            return f"{name} has {maxwdir} MB of scratch, a job needs {scratch} MB"
    if needs.walltime:
        maxtime, mintime = _bounded(queue.get("maxtime")), _bounded(queue.get("mintime"))
        if maxtime and needs.walltime > maxtime:
            return f"{name} allows {maxtime} s, a job needs {needs.walltime} s"
        if mintime and needs.walltime < mintime:
            return f"{name} wants jobs of at least {mintime} s"
    if not preassigned:
        # A queue the task names takes its jobs as they are (§6.2 filters 5 and 6).
        why = _cores_and_memory(needs, queue, shown)
        if why is not None:
            return why
    switches = catchall(queue)
    allowed = _pipe_list(switches.get("allowed_processing"))
    if allowed and needs.processing_type not in allowed:
        return f"{name} allows processingType {'|'.join(allowed)} only, the task is {needs.processing_type}"
    if needs.processing_type and needs.processing_type in _pipe_list(switches.get("excluded_processing")):
        return f"{name} excludes processingType {needs.processing_type}"
    return None


def _cores_and_memory(needs: TaskNeeds, queue: Mapping[str, Any], shown: str) -> str | None:
    task_cores = needs.core_count
    queue_cores = queue.get("corecount")
    if task_cores == 1 and queue_cores not in (None, 0, 1, -1):
        return f"{shown} has {queue_cores}-core slots, the task is single-core"
    if task_cores > 1 and queue_cores not in (None, 0, -1) and queue_cores < task_cores:
        return f"{shown} has {queue_cores}-core slots, the task needs {task_cores}"
    memory = job_memory(needs, job_core_count(needs, queue))
    maxrss, minrss = _bounded(queue.get("maxrss")), _bounded(queue.get("minrss"))
    if maxrss and memory > maxrss:
        return f"{shown} offers at most {maxrss} MB, a job needs {memory} MB"
    if minrss and memory < minrss:
        return f"{shown} wants jobs of at least {minrss} MB, a job needs {memory} MB"
    return None


def pseudo_queues(queue: Mapping[str, Any], rt_rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The specs brokerage tries for a queue: the queue itself, or for a ``ucore`` queue one
    pseudo-queue per resource type (domain.md §6.1 ``capability``).

    A pseudo-queue keeps the queue's name (jobs go to the real queue) and records its
    ``resource_type``; a single-core type gets one-core slots, a multi-core type the queue's slots.
    Memory bounds are the type's per-core bounds, within the queue's own per-core share, times the
    slot's cores.
    """
    if queue.get("capability") != UNIFIED_RESOURCE_TYPES or not rt_rows:
        return [dict(queue)]
    slot = queue.get("corecount")
    slot_cores = slot if isinstance(slot, int) and slot > 0 else None
    queue_max, queue_min = _bounded(queue.get("maxrss")), _bounded(queue.get("minrss"))
    specs = []
    for row in rt_rows:
        if row["resource_name"] == _UNDEFINED_TYPE:
            continue
        single = row["maxcore"] == 1
        if not single and slot_cores == 1:
            continue
        cores = 1 if single else slot
        spec = {**queue, "resource_type": row["resource_name"], "corecount": cores}
        if isinstance(cores, int) and cores > 0:
            per_core_max = [v for v in (row["maxrampercore"], queue_max // (slot_cores or 1)) if v]
            per_core_min = [v for v in (row["minrampercore"], queue_min // (slot_cores or 1)) if v]
            spec["maxrss"] = min(per_core_max) * cores if per_core_max else None
            spec["minrss"] = max(per_core_min) * cores if per_core_min else None
        specs.append(spec)
    return specs


def _slot_rejection(
    needs: TaskNeeds, spec: Mapping[str, Any], rows: Sequence[SlotRow], rt_rows: Sequence[Mapping[str, Any]]
) -> str | None:
    if not rows:
        return None
    resource_type = spec.get("resource_type")
    if resource_type is None and rt_rows:
        cores = job_core_count(needs, spec)
        resource_type = match_job(list(rt_rows), cores, job_memory(needs, cores))
    if closed_to(rows, needs.gshare, resource_type):
        return f"{spec['name']} has 0 target slots for {needs.gshare or 'the task'}'s {resource_type} jobs"
    return None


def _needs_no_pilot(needs: TaskNeeds, queue: Mapping[str, Any]) -> bool:
    return needs.prod_source_label in TEST_LABELS or allows_no_pilot(queue)


def choose_queue(
    needs: TaskNeeds,
    queues: Sequence[Mapping[str, Any]],
    loads: Mapping[str, QueueLoad],
    rng: random.Random | None = None,
    *,
    rt_rows: Sequence[Mapping[str, Any]] = (),
    active: frozenset[str] | None = None,
    slots: Mapping[str, Sequence[SlotRow]] | None = None,
    waiting: Mapping[str, int] | None = None,
) -> Choice:
    """The best queue for the task: among those that pass every filter, the highest weight; ties
    are broken at random so equal queues share the work.

    Args:
        rt_rows: the resource types, in table order, for ``ucore`` queues' pseudo-queues.
        active: the queues with recent pilot activity; None when not checked. Queues outside it are
            left out as long as an active (or exempt) queue qualifies, so a fresh installation
            whose pilots have not come yet still gets work.
        slots: the live target slot rows per queue; a queue giving the task's jobs 0 is left out.
        waiting: workers waiting for work per queue (Harvester's reports); queues with more of
            them than activated jobs are preferred.
    """
    reasons: list[str] = []
    eligible: list[dict[str, Any]] = []
    for queue in queues:
        refused = []
        for spec in pseudo_queues(queue, rt_rows):
            why = rejection(needs, spec)
            if why is None and slots:
                why = _slot_rejection(needs, spec, slots.get(spec["name"], ()), rt_rows)
            if why is None:
                eligible.append(spec)
                break
            refused.append(why)
        else:
            reasons.append(" / ".join(dict.fromkeys(refused)))
    if active is not None:
        lively = [spec for spec in eligible if spec["name"] in active or _needs_no_pilot(needs, spec)]
        if lively:
            reasons.extend(
                f"{spec['name']} has had no pilot recently" for spec in eligible if spec not in lively
            )
            eligible = lively
    if not eligible:
        return Choice(None, tuple(reasons))
    if waiting:
        hungry = [
            spec
            for spec in eligible
            if waiting.get(spec["name"], 0) > loads.get(spec["name"], QueueLoad()).activated
        ]
        eligible = hungry or eligible
    weights = [loads.get(spec["name"], QueueLoad()).weight for spec in eligible]
    best = max(weights)
    top = [spec for weight, spec in zip(weights, eligible, strict=True) if weight == best]
    chosen = (rng or random).choice(top) if len(top) > 1 else top[0]
    return Choice(chosen, ())
