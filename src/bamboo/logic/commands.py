"""Task commands: recorded in the request's transaction, executed by the commando agent at once.

Registering (api-v1.md §2 common notes) locks the task, checks the command against the task's
status (:func:`bamboo.logic.states.command_accepted`) and replaces any command still queued for the
task. The commando agent (woken on commit) then executes it (domain.md §2.3): the task goes to the
command's "doing" status, its jobs are killed, paused or released, and it moves on to the "done"
status as soon as nothing is left to wait for. Every status change goes through
:func:`bamboo.logic.task_status.change`, which checks it against the transition table.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import archive as archive_db
from bamboo.db import commands as commands_db
from bamboo.db import es_jobs, notify
from bamboo.db import feeder as feeder_db
from bamboo.db import tasks as tasks_db
from bamboo.logic import killing, merge_jobs, scouting, task_status, taskparams
from bamboo.logic.clock import Clock
from bamboo.logic.states import (
    COMMAND_DOING_STATUS,
    JOB_FINAL,
    command_accepted,
    command_executable,
)
from bamboo.logic.task_admin import format_split_rule, parse_split_rule

log = logging.getLogger(__name__)

OK = 0
DB_ERROR = 1
NOT_FOUND = 2
NEW_PARAMETERS_ACCEPTED = 3
REJECTED = 4
RETRY_ACTIVE_USER_TASK = 5
BATCH = 50
# domain.md §2.3: retry gives files out of attempts five more.
RETRY_EXTRA_ATTEMPTS = 5
_RETRY_ACTIVE_STATUSES = frozenset({"running", "scouting", "pending"})
_KILL_FOR_JEDI = 50
_REASSIGN_BY_JEDI = 51
_FORCE_KILL_FOR_JEDI = 52


@dataclass(frozen=True, slots=True)
class CommandResult:
    code: int
    message: str


def registered_message(command: str, task_id: int) -> str:
    return f"command={command} is registered for task ID {task_id}. will be executed in a few minutes"


def rejected_message(command: str, status: str, extra: str = "") -> str:
    # Upstream leaves the trailing space when there is no extra text; clients may compare it.
    return (
        f"Command rejected: the {command} command is not accepted if the task is in {status} status {extra}"
    )


def not_found_message(task_id: int) -> str:
    return f"jediTaskID={task_id} not found"


def reactivation_message(task_id: int, status: str) -> str:
    """Upstream's answer to a re-execution with new parameters (code 3), as a resubmission gives it."""
    return (
        f"reactivation accepted. jediTaskID={task_id} (currently in {status} state) "
        "will be re-executed with old and/or new input"
    )


def qualified_comment(command: str, qualifiers: list[str], requester: str) -> str:
    """``"<qualifiers> <cmd> by <user>"``, as upstream writes command comments."""
    return " ".join([*qualifiers, f"{command} by {requester}"])


async def task_owner(conn: AsyncConnection, task_id: int) -> str | None:
    """The compact user name that owns the task, or None for an unknown task."""
    task = await tasks_db.get(conn, task_id)
    return task["userName"] if task else None


async def register(
    conn: AsyncConnection,
    clock: Clock,
    task_id: int,
    command: str,
    comment: str,
    *,
    requester: str,
    production: bool = False,
) -> CommandResult:
    """Queue a command for a task, or say why not (codes of ``sendCommandTaskPanda``)."""
    task = await commands_db.lock_task(conn, task_id)
    if task is None:
        return CommandResult(NOT_FOUND, not_found_message(task_id))
    status = task["status"]
    keeps_status = command == "reassign" and comment.startswith("site:")
    if not command_accepted(command, status, keeps_status=keeps_status):
        return CommandResult(REJECTED, rejected_message(command, status))
    if command == "retry" and status == "exhausted" and not production:
        return CommandResult(REJECTED, rejected_message(command, status, "and production role is missing"))
    await commands_db.replace(conn, task_id, command, comment, requester, clock.now())
    await notify.announce(conn, "commando")
    log.info("task %s: command %s registered by %s (%s)", task_id, command, requester, comment)
    return CommandResult(OK, registered_message(command, task_id))


async def retry(
    conn: AsyncConnection,
    clock: Clock,
    task_id: int,
    qualifiers: list[str],
    *,
    requester: str,
    production: bool,
    new_parameters: dict[str, Any] | None = None,
) -> CommandResult:
    """``task/retry``: a retry command, or, for a user task still running, its failed inputs now.

    An analysis task that is still running cannot be retried as a whole; upstream instead gives its
    failed inputs more attempts at once (code 5 internally, answered as success). ``new_parameters``
    are merged into the stored task parameters (None removes a key) only once the retry is
    accepted, and the answer is then code 3: upstream re-executes through a resubmission, which
    answers 3, and pbook takes any other code for a failed retry with new options.

    Raises:
        InvalidInput: the merged parameters are not a valid task.
    """
    task = await commands_db.lock_task(conn, task_id)
    if task is None:
        return CommandResult(NOT_FOUND, not_found_message(task_id))
    merged = None if new_parameters is None else _merged_parameters(task, new_parameters)
    if task["status"] in _RETRY_ACTIVE_STATUSES and task["prodSourceLabel"] == "user":
        if merged is not None:
            await _store_parameters(conn, task, merged)
        reopened = await _reopen_exhausted_rows(conn, clock, task_id)
        if reopened:
            await notify.announce(conn, "generator")
        return CommandResult(
            OK if merged is None else NEW_PARAMETERS_ACCEPTED,
            f"retry has been triggered for failed jobs while the task is still {task['status']}",
        )
    comment = qualified_comment("retry", qualifiers, requester)
    result = await register(
        conn, clock, task_id, "retry", comment, requester=requester, production=production
    )
    if merged is None or result.code != OK:
        return result
    await _store_parameters(conn, task, merged)
    return CommandResult(NEW_PARAMETERS_ACCEPTED, reactivation_message(task_id, task["status"]))


async def kill_unfinished_jobs(
    conn: AsyncConnection, clock: Clock, task_id: int, code: int | None, *, requester: str, production: bool
) -> list[bool]:
    """Kill every job of the task with ``code``; one boolean per job id, in PandaID order.

    A job is killed when the caller owns it or has the production role and it is not final yet.
    Archived jobs are final: they are listed, never killed.
    """
    if code not in killing.KILL_CODES:
        raise ValueError(f"unknown kill code {code}")
    all_jobs = await commands_db.unfinished_jobs(conn, task_id, final=())
    allowed = [job for job in all_jobs if production or job["prodUserName"] == requester]
    killed = set(await killing.kill(conn, clock, allowed, code, requester))
    if killed:
        await notify.announce(conn, "generator")
    answers = {job["PandaID"]: job["PandaID"] in killed for job in all_jobs}
    answers.update((panda_id, False) for panda_id in await archive_db.archived_ids_of_task(conn, task_id))
    return [answers[panda_id] for panda_id in sorted(answers)]


def _merged_parameters(task: dict[str, Any], new_parameters: dict[str, Any]) -> dict[str, Any]:
    """The task's stored parameters with the new ones merged in (None removes a key), checked.

    Raises:
        InvalidInput: the merged parameters are not a valid task.
    """
    params = orjson.loads(task["task_params"])
    for key, value in new_parameters.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = value
    taskparams.validate(params)
    taskparams.refine(params)
    return params


async def _store_parameters(conn: AsyncConnection, task: dict[str, Any], params: dict[str, Any]) -> None:
    # The generator refines the stored parameters each cycle, so the jobs a retry makes use them.
    # It takes the job sizes from the split rule, though (where task/change_split_rule and the
    # retry rules change them), so new sizes among the parameters go there too.
    rules = parse_split_rule(task["splitRule"])
    for tag, value in taskparams.refine(params).split.size_tags().items():
        if value is None:
            rules.pop(tag, None)
        else:
            rules[tag] = value
    text = orjson.dumps(params).decode()
    await tasks_db.update(conn, task["jediTaskID"], task_params=text, splitRule=format_split_rule(rules))


# --- execution (the commando agent) ---------------------------------------------------------------
async def execute(conn: AsyncConnection, clock: Clock) -> int:
    """Execute queued commands and advance commands in progress. Returns how many made progress."""
    progress = 0
    for command in await commands_db.claim(conn, [commands_db.QUEUED, commands_db.IN_PROGRESS], BATCH):
        task = await commands_db.lock_task(conn, command["jediTaskID"])
        if task is None:
            await commands_db.mark(conn, command["jediTaskID"], commands_db.FAILED, clock.now())
            continue
        if command["status"] == commands_db.QUEUED:
            progress += await _start(conn, clock, command, task)
        else:
            progress += await _advance(conn, clock, command, task)
    return progress


async def _start(conn: AsyncConnection, clock: Clock, command: dict[str, Any], task: dict[str, Any]) -> int:
    name = command["command"]
    comment = command["comment"] or ""
    keeps_status = name == "reassign" and comment.startswith("site:")
    if not command_executable(name, task["status"], keeps_status=keeps_status):
        # The task moved on between registration and pickup (a pilot finished the last job), or
        # is in the middle of another command.
        log.info("task %s: command %s dropped in status %s", task["jediTaskID"], name, task["status"])
        await commands_db.mark(conn, task["jediTaskID"], commands_db.FAILED, clock.now())
        return 1
    doing = COMMAND_DOING_STATUS.get(name)
    if doing is not None and not keeps_status:
        await _set_status(conn, clock, task, doing, error_dialog=comment)
        task = {**task, "status": doing, "oldStatus": _old_status(task, doing)}
    if name == "pause":
        await commands_db.set_job_status(conn, task["jediTaskID"], "activated", "throttled", clock.now())
        return await _finish_command(conn, clock, task)
    if name == "resume":
        return await _resume(conn, clock, task)
    if name == "avalanche":
        await scouting.avalanche(conn, clock, task)
        return await _finish_command(conn, clock, task)
    if name == "release":
        # Bamboo has no tape staging yet, so no input of the task waits to be released.
        return await _finish_command(conn, clock, task)
    if name in ("retry", "incexec"):
        return await _retry(conn, clock, task, command)
    await commands_db.mark(conn, task["jediTaskID"], commands_db.IN_PROGRESS, clock.now())
    return await _advance(conn, clock, {**command, "status": commands_db.IN_PROGRESS}, task)


async def _advance(conn: AsyncConnection, clock: Clock, command: dict[str, Any], task: dict[str, Any]) -> int:
    """kill / finish / reassign: end the jobs the command ends, then move to the done status.

    Returns 1 when something changed, 0 while waiting for running jobs (a soft finish).
    """
    name = command["command"]
    comment = command["comment"] or ""
    requester = command["requester"] or "bamboo"
    task_id = task["jediTaskID"]
    changed = 0
    if name == "kill":
        changed = len(await _kill(conn, clock, task_id, None, _KILL_FOR_JEDI, requester))
    elif name == "finish":
        soft = comment.startswith("soft")
        only = killing.QUEUED_JOB_STATUSES if soft else None
        changed = len(
            await _kill(conn, clock, task_id, only, _FORCE_KILL_FOR_JEDI, requester, keep_merges=soft)
        )
    elif name == "reassign":
        return await _reassign(conn, clock, task, comment, requester)
    remaining = await commands_db.unfinished_jobs(conn, task_id, final=sorted(JOB_FINAL))
    if remaining:
        return 1 if changed else 0
    if name == "kill":
        await _set_status(conn, clock, task, "toabort")
        await notify.announce(conn, "finisher")
    else:
        await _exhaust_remaining(conn, clock, task_id)
        await _set_status(conn, clock, task, "passed")
        await notify.announce(conn, "finisher")
    return await _finish_command(conn, clock, task)


async def _kill(
    conn: AsyncConnection,
    clock: Clock,
    task_id: int,
    only: tuple[str, ...] | None,
    code: int,
    requester: str,
    *,
    keep_merges: bool = False,
) -> list[int]:
    jobs = await commands_db.unfinished_jobs(conn, task_id, only, final=sorted(JOB_FINAL))
    if keep_merges:
        # A soft finish lets the merges of finished work run: they end what those jobs began
        # (event-service merge jobs too: they merge the ranges done, logic/es_lifecycle.py).
        jobs = [
            job
            for job in jobs
            if job["processingType"] != merge_jobs.PROCESSING_TYPE and job["eventService"] != es_jobs.MERGE
        ]
    return await killing.kill(conn, clock, jobs, code, requester, merge_when_finishing=keep_merges)


async def _reassign(
    conn: AsyncConnection, clock: Clock, task: dict[str, Any], comment: str, requester: str
) -> int:
    """``site:<s>:y``, ``cloud:<c>:n`` or ``nucleus:<n>:n``, optionally ``:nokill`` / ``:soft``.

    The task's jobs are killed (code 51) so that the generator makes them again for the new target;
    a soft reassignment kills only queued jobs, ``nokill`` none.
    """
    parts = comment.split(":")
    kind, target = parts[0], parts[1] if len(parts) > 1 else ""
    mode = " ".join(parts[3:])
    task_id = task["jediTaskID"]
    if "nokill" not in mode:
        only = killing.QUEUED_JOB_STATUSES if "soft" in mode else None
        killed = await _kill(conn, clock, task_id, only, _REASSIGN_BY_JEDI, requester)
        if killed and task["status"] == "scouting":
            # Its scouts are gone, not failed: the task scouts again at the new place.
            await _set_status(conn, clock, task, "ready", old_status=None)
            task = {**task, "status": "ready"}
    value = None if target in ("", "None") else target
    await tasks_db.update(conn, task_id, **{kind: value}, modificationTime=clock.now())
    if task["status"] == "toreassign":
        await _set_status(conn, clock, task, "reassigning")
        back = task["oldStatus"] if task["oldStatus"] in ("ready", "running", "pending") else "ready"
        await _set_status(conn, clock, {**task, "status": "reassigning"}, back)
    await notify.announce(conn, "generator")
    return await _finish_command(conn, clock, task)


async def _resume(conn: AsyncConnection, clock: Clock, task: dict[str, Any]) -> int:
    if task["status"] == "staging":
        await _set_status(conn, clock, task, "staged")
    else:
        back = task["oldStatus"] or "ready"
        await _set_status(conn, clock, task, back, old_status=None)
        await commands_db.set_job_status(conn, task["jediTaskID"], "throttled", "activated", clock.now())
    await notify.announce(conn, "generator")
    return await _finish_command(conn, clock, task)


async def _retry(conn: AsyncConnection, clock: Clock, task: dict[str, Any], command: dict[str, Any]) -> int:
    """retry / incexec (domain.md §2.3 ``retryTask``): give failed inputs new attempts."""
    task_id = task["jediTaskID"]
    comment = command["comment"] or ""
    previous = task["oldStatus"] or "finished"
    reopened = await _reopen_exhausted_rows(conn, clock, task_id)
    now = clock.now()
    datasets = await tasks_db.datasets(conn, task_id)
    for dataset in datasets:
        if dataset["type"] in ("input", "pseudo_input") and dataset["masterID"] is None:
            # incexec (reload_input) rescans the input: files the catalog gained are processed too.
            rescan = command["command"] == "incexec" and dataset["type"] == "input"
            status = feeder_db.OPEN if rescan else "ready"
            await tasks_db.update_dataset(conn, dataset["datasetID"], status=status, modificationTime=now)
        elif dataset["type"] in ("output", "log", "lib", *merge_jobs.TRANSIENT_TYPES):
            await tasks_db.update_dataset(conn, dataset["datasetID"], status="done", modificationTime=now)
    usable = await commands_db.usable_master_rows(conn, task_id)
    if command["command"] == "incexec":
        await _set_status(conn, clock, task, "rerefine")
        task = {**task, "status": "rerefine"}
    # incexec always re-runs; a retry with nothing to reprocess returns to its final status.
    reopens = usable or reopened or previous == "exhausted" or command["command"] == "incexec"
    new_status = "ready" if reopens else previous
    values: dict[str, Any] = {"attemptNr": (task["attemptNr"] or 0) + 1}
    if new_status == "ready":
        values.update(endTime=None, startTime=None)
        if "keep" not in comment.split():
            values["currentPriority"] = task["taskPriority"]
    await tasks_db.update(conn, task_id, **values)
    await _set_status(conn, clock, task, new_status, old_status=None)
    if "sole" not in comment.split():
        await _retry_children(conn, clock, task_id, command["requester"] or "bamboo")
    await notify.announce(conn, "generator")
    return await _finish_command(conn, clock, task)


async def _retry_children(conn: AsyncConnection, clock: Clock, task_id: int, requester: str) -> None:
    for child in await commands_db.child_tasks(conn, task_id):
        if command_accepted("retry", child["status"]) and child["status"] != "exhausted":
            await commands_db.replace(
                conn, child["jediTaskID"], "retry", f"retry by {requester}", requester, clock.now()
            )


async def _reopen_exhausted_rows(conn: AsyncConnection, clock: Clock, task_id: int) -> int:
    """Give master rows out of attempts ``RETRY_EXTRA_ATTEMPTS`` more; they no longer count failed."""
    rows = await commands_db.exhausted_master_rows(conn, task_id)
    per_dataset: Counter[int] = Counter()
    for row in rows:
        values: dict[str, Any] = {"proc_status": "ready"}
        if row["maxAttempt"] is not None:
            values["maxAttempt"] = max(row["maxAttempt"], row["attemptNr"]) + RETRY_EXTRA_ATTEMPTS
        if row["maxFailure"] is not None:
            values["maxFailure"] = max(row["maxFailure"], row["failedAttempt"]) + RETRY_EXTRA_ATTEMPTS
        await tasks_db.update_file(conn, row["fileID"], **values)
        per_dataset[row["datasetID"]] += 1
    now = clock.now()
    for dataset_id, count in per_dataset.items():
        await tasks_db.bump_dataset(conn, dataset_id, now, nFilesFailed=-count, nFilesUsed=-count)
    return len(rows)


async def _exhaust_remaining(conn: AsyncConnection, clock: Clock, task_id: int) -> None:
    """A finished task processes nothing more: usable rows are used up and count as failed."""
    rows = await commands_db.usable_master_rows(conn, task_id)
    per_dataset: Counter[int] = Counter()
    for row in rows:
        attempts = max(row["attemptNr"], row["maxAttempt"] or 0)
        await tasks_db.update_file(
            conn, row["fileID"], attemptNr=attempts, maxAttempt=attempts, proc_status="exhausted"
        )
        per_dataset[row["datasetID"]] += 1
    now = clock.now()
    for dataset_id, count in per_dataset.items():
        await tasks_db.bump_dataset(conn, dataset_id, now, nFilesFailed=count, nFilesUsed=count)


def _old_status(task: dict[str, Any], new: str) -> str | None:
    """What ``oldStatus`` becomes (domain.md §2.3): kept when coming from pending or throttled."""
    if task["status"] == "pending" or (task["status"] == "throttled" and new in ("paused", "toreassign")):
        return task["oldStatus"]
    return task["status"]


async def _set_status(
    conn: AsyncConnection,
    clock: Clock,
    task: dict[str, Any],
    new: str,
    *,
    error_dialog: str | None = None,
    old_status: Any = ...,
) -> None:
    values: dict[str, Any] = {"oldStatus": _old_status(task, new) if old_status is ... else old_status}
    if error_dialog is not None:
        values["errorDialog"] = error_dialog[:510]
    await task_status.change(conn, clock, task, new, **values)


async def _finish_command(conn: AsyncConnection, clock: Clock, task: dict[str, Any]) -> int:
    await commands_db.mark(conn, task["jediTaskID"], commands_db.DONE, clock.now())
    return 1


def reload_input_comment(qualifiers: list[str]) -> str:
    """The comment of an ``incexec`` without new parameters: ``[{}, [<qualifiers>]]``."""
    return orjson.dumps([{}, qualifiers]).decode()
