"""Direct changes to tasks by operators (api-v1.md §2.1, domain.md §2.3): attributes, priority,
split rules, reactivation, more attempts, job cloning and jumbo jobs.

Unlike the task commands these take effect in the request's transaction, not through the commando.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import task_admin as admin_db
from bamboo.db import tasks as tasks_db
from bamboo.db.schema import task_files as task_files_table
from bamboo.db.schema import tasks as tasks_table
from bamboo.logic import resource_types, task_status
from bamboo.logic.clock import Clock
from bamboo.logic.taskparams import column_problem

# api-v1.md §2.1 change_attribute: the names clients send, and the task column each one sets.
CHANGEABLE_ATTRIBUTES = {
    "ramCount": "ramCount",
    "wallTime": "walltime",
    "cpuTime": "cpuTime",
    "coreCount": "coreCount",
}
# api-v1.md §3.9, in upstream order (the order shows in the refusal message).
CHANGEABLE_SPLIT_RULES = (
    "AI", "TW", "EC", "MF", "NG", "NI", "NF", "ES", "NJ",
    "AV", "IL", "LI", "LC", "CC", "OT", "UZ", "IM", "NP",
)  # fmt: skip
INVALID_SPLIT_RULE = 2
# Jobs not yet running take a new priority; running ones keep the one they were dispatched with.
_QUEUED_JOB_STATUSES = ("defined", "assigned", "waiting", "activated", "throttled", "pending")
_REACTIVATED_TYPES = ("input", "pseudo_input", "random_seed")
_INCREASE_ALLOWED = ("running", "scouting", "ready")
_CLONING_MODES = {"runonce": 1, "storeonce": 2}
_CLONING_RULES = ("UC", "ES", "EC", "NS")
_CLONING_EVENT_SERVICE = 2
_DEFAULT_CLONES = 2
_JUMBO_WAITING = "W"
_JUMBO_DISABLED = "D"
TASK_NOT_FOUND = "Task not found"
# Upstream's answers when the database refuses the change; we refuse values beyond their column
# before the database does, so both backends answer alike.
ATTRIBUTE_NOT_CHANGED = "Exception while changing the attribute"
PRIORITY_NOT_CHANGED = "Exception while changing the priority"
JUMBO_DONE, JUMBO_NOT_FOUND = 0, 2
INCREASE_OK, INCREASE_NOT_FOUND, INCREASE_REJECTED = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a change did: ``code`` 0 for success, and the message the envelope carries."""

    code: int
    message: str | None

    @property
    def ok(self) -> bool:
        return self.code == 0


def _changed(count: int) -> Outcome:
    return Outcome(0, f"{count} tasks changed") if count else Outcome(1, TASK_NOT_FOUND)


def parse_split_rule(text: str | None) -> dict[str, str]:
    """``"NF=3,NG=2"`` as ``{"NF": "3", "NG": "2"}``, in the order written."""
    rules: dict[str, str] = {}
    for item in (text or "").split(","):
        tag, sep, value = item.partition("=")
        if sep and tag:
            rules[tag] = value
    return rules


def format_split_rule(rules: dict[str, str]) -> str | None:
    """The inverse of :func:`parse_split_rule`; None for no rule, as the refiner stores it."""
    return ",".join(f"{tag}={value}" for tag, value in rules.items()) or None


async def _update_split_rule(
    conn: AsyncConnection, task_id: int, changes: dict[str, Any], **values: Any
) -> int:
    """Apply ``changes`` (tag -> value, None removes the tag) to the task's split rule, and set
    ``values`` on the task; returns 0 when the task does not exist."""
    task = await tasks_db.get(conn, task_id)
    if task is None:
        return 0
    rules = parse_split_rule(task["splitRule"])
    for tag, value in changes.items():
        if value is None:
            rules.pop(tag, None)
        else:
            rules[tag] = str(value)
    return await admin_db.update_task(conn, task_id, splitRule=format_split_rule(rules), **values)


async def change_attribute(conn: AsyncConnection, task_id: int, attribute: str, value: int) -> Outcome:
    """Set ramCount, wallTime, cpuTime or coreCount of a task and recompute its resource type.

    The caller checks ``attribute`` against :data:`CHANGEABLE_ATTRIBUTES`.
    """
    task = await tasks_db.get(conn, task_id)
    if task is None:
        return Outcome(1, TASK_NOT_FOUND)
    if column_problem(tasks_table.c[CHANGEABLE_ATTRIBUTES[attribute]], value):
        return Outcome(1, ATTRIBUTE_NOT_CHANGED)
    task[CHANGEABLE_ATTRIBUTES[attribute]] = value
    resource_type = resource_types.match_job(
        await resource_types.resource_type_list(conn), task["coreCount"], task_memory(task)
    )
    count = await admin_db.update_task(
        conn, task_id, **{CHANGEABLE_ATTRIBUTES[attribute]: value, "resource_type": resource_type}
    )
    return _changed(count)


def task_memory(task: dict[str, Any]) -> int:
    """Memory of one job of the task in MB, as the generator computes it (per core by default)."""
    cores = task["coreCount"] or 1
    ram = task["ramCount"] or 0
    if (task["ramUnit"] or "MBPerCore").lower().startswith("mbpercore"):
        ram *= cores
    return ram + (task["baseRamCount"] or 0)


async def change_modification_time(
    conn: AsyncConnection, clock: Clock, task_id: int, hour_offset: int
) -> Outcome:
    """Set the task's modificationTime to now plus ``hour_offset`` hours (negative: agents act sooner)."""
    try:
        moment = clock.now() + timedelta(hours=hour_offset)
    except OverflowError:  # beyond the years 1..9999 a datetime can hold
        return Outcome(1, ATTRIBUTE_NOT_CHANGED)
    return _changed(await admin_db.update_task(conn, task_id, modificationTime=moment))


async def change_priority(conn: AsyncConnection, task_id: int, priority: int) -> Outcome:
    """Set the task's currentPriority and that of its jobs not yet running."""
    if column_problem(tasks_table.c.currentPriority, priority):
        return Outcome(1, PRIORITY_NOT_CHANGED)
    count = await admin_db.update_task(conn, task_id, currentPriority=priority)
    if count:
        await admin_db.set_queued_job_priority(conn, task_id, priority, _QUEUED_JOB_STATUSES)
    return _changed(count)


async def change_split_rule(conn: AsyncConnection, task_id: int, tag: str, value: str) -> Outcome:
    """Set one changeable split-rule tag; ``None``, ``""`` and ``"None"`` remove it.

    The caller checks ``tag`` against :data:`CHANGEABLE_SPLIT_RULES`.
    """
    new_value = None if value in (None, "", "None") else value
    return _changed(await _update_split_rule(conn, task_id, {tag: new_value}))


async def reactivate(conn: AsyncConnection, clock: Clock, task_id: int, *, keep_attempt_nr: bool) -> str:
    """Make a task ``ready`` with all its inputs unused again; returns upstream's message.

    A task that does not exist is not told apart (upstream's answer is the same, with 0 inputs).
    """
    now = clock.now()
    count = await admin_db.reset_files(conn, task_id, _REACTIVATED_TYPES, keep_attempt_nr=keep_attempt_nr)
    await admin_db.reset_datasets(conn, task_id, _REACTIVATED_TYPES, now)
    task = await tasks_db.get(conn, task_id)
    if task is not None:
        await task_status.change(conn, clock, task, "ready", forced_by="reactivate")
    # The trailing space is upstream's.
    return f"updated {count} inputs and task {task_id} was reactivated "


async def increase_attempts(conn: AsyncConnection, clock: Clock, task_id: int, increase: int) -> Outcome:
    """Give the ready master inputs of an active task ``increase`` more attempts.

    Rows that were out of attempts become usable again and no longer count as failed.
    """
    # The increase is added to maxAttempt in SQL; PostgreSQL refuses a bind wider than the column.
    problem = column_problem(task_files_table.c.maxAttempt, increase)
    if problem:
        return Outcome(INCREASE_REJECTED, f"increase {problem}, got {increase}")
    task = await tasks_db.get(conn, task_id)
    if task is None:
        return Outcome(INCREASE_NOT_FOUND, f"jediTaskID={task_id} not found")
    if task["status"] not in _INCREASE_ALLOWED and task["oldStatus"] not in _INCREASE_ALLOWED:
        return Outcome(
            INCREASE_REJECTED,
            f"command rejected since status={task['status']} or oldStatus={task['oldStatus']} "
            f"not in {list(_INCREASE_ALLOWED)}",
        )
    exhausted = await admin_db.exhausted_master_counts(conn, task_id)
    count = await admin_db.raise_master_attempts(conn, task_id, increase)
    now = clock.now()
    for dataset_id, reopened in exhausted.items():
        await tasks_db.bump_dataset(conn, dataset_id, now, nFilesFailed=-reopened, nFilesUsed=-reopened)
    return Outcome(
        INCREASE_OK, f"increased attemptNr for {count} inputs ({sum(exhausted.values())} reactivated)"
    )


async def enable_job_cloning(
    conn: AsyncConnection, task_id: int, mode: str | None, multiplicity: int | None, num_sites: int | None
) -> Outcome:
    """Run each job of the task as several clones at different sites (``mode`` runonce or storeonce)."""
    if await tasks_db.status_of(conn, task_id) is None:
        return Outcome(1, "task not found")
    mode = mode or "runonce"
    if mode not in _CLONING_MODES:
        return Outcome(1, f"invalid job cloning mode: {mode}")
    rules = {
        "UC": _CLONING_MODES[mode],
        "ES": 1,
        "EC": _DEFAULT_CLONES if multiplicity is None else multiplicity,
        "NS": _DEFAULT_CLONES if num_sites is None else num_sites,
    }
    await _update_split_rule(conn, task_id, rules, eventService=_CLONING_EVENT_SERVICE)
    return Outcome(0, None)


async def disable_job_cloning(conn: AsyncConnection, task_id: int) -> Outcome:
    """Stop cloning the task's jobs: the cloning split rules go and eventService is cleared."""
    changes: dict[str, Any] = dict.fromkeys(_CLONING_RULES)
    if not await _update_split_rule(conn, task_id, changes, eventService=0):
        return Outcome(1, "task not found")
    return Outcome(0, None)


async def enable_jumbo_jobs(conn: AsyncConnection, task_id: int, total: int, per_site: int | None) -> Outcome:
    """Let the task run ``total`` jumbo jobs (at most ``per_site`` per site); 0 disables them."""
    use_jumbo = _JUMBO_DISABLED if total == 0 else _JUMBO_WAITING
    rules = {"NJ": total, "MJ": per_site or total}
    if not await _update_split_rule(conn, task_id, rules, useJumbo=use_jumbo):
        return Outcome(JUMBO_NOT_FOUND, "task not found")
    return Outcome(JUMBO_DONE, "done")
