"""``/api/v1/task/*``: submitting, commanding, changing and reading tasks.

Behaviour lives in ``logic/tasks.py`` (submission, reads), ``logic/commands.py`` (kill, finish,
retry, pause, resume, reassign... executed by the commando agent), ``logic/task_admin.py``
(attribute changes, reactivate, attempts, cloning, jumbo), ``logic/shares.py`` (global shares) and
``logic/task_queries.py`` (the other reads).
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson

from bamboo.api.call import Call
from bamboo.api.envelope import Reply, failure
from bamboo.api.registry import Access, DbUse, Module
from bamboo.api.v1 import registry
from bamboo.auth.identity import has_production_role
from bamboo.logic import commands, killing, shares, task_admin, task_queries, tasks
from bamboo.logic.errors import InvalidInput

task = Module(registry, "task")

TaskId = Annotated[int, "The task's jediTaskID."]
SUBMIT_INVALID = 4


@task.endpoint(method="POST", db=DbUse.WRITE)
async def submit(
    call: Call,
    task_parameters: Annotated[
        dict, "The task parameters (taskName, vo, prodSourceLabel, jobParameters...)."
    ],
    parent_tid: Annotated[int | None, "jediTaskID of the parent task, for chained tasks."] = None,
) -> Reply:
    """Submit a task; the answer carries the new jediTaskID.

    The caller owns the task unless it has the production role and names another userName. The
    parameters are checked at once; a bad one is named in the message (data = 4).
    """
    identity = call.caller
    production = has_production_role(identity, call.state.settings.production_dns)
    try:
        task_id = await tasks.submit(
            call.db, call.state.clock, identity, task_parameters, parent_tid, is_production=production
        )
    except InvalidInput as exc:
        return failure(exc.message, SUBMIT_INVALID)
    call.on_commit.append(lambda: call.state.wake("refiner"))
    return Reply(message=tasks.submission_message(task_id), data=task_id)


def _command_reply(result: commands.CommandResult) -> Reply:
    """``success = (code == 0)``, the code in ``data`` (DESIGN §9.4)."""
    return Reply(success=result.code == commands.OK, message=result.message, data=result.code)


async def _command(call: Call, task_id: int, command: str, comment: str) -> Reply:
    result = await commands.register(
        call.db,
        call.state.clock,
        task_id,
        command,
        comment,
        requester=call.caller.user_name,
        production=_is_production(call),
    )
    if result.code == commands.OK:
        call.on_commit.append(lambda: call.state.wake("commando"))
    return _command_reply(result)


def _is_production(call: Call) -> bool:
    return has_production_role(call.caller, call.state.settings.production_dns)


@task.endpoint(method="POST", access=Access.OWNER, db=DbUse.WRITE)
async def retry(
    call: Call,
    task_id: TaskId,
    new_parameters: Annotated[
        dict | str | None, "Task parameters to change before the retry (a dict or its JSON text)."
    ] = None,
    no_child_retry: Annotated[bool, "Do not retry the task's child tasks."] = False,
    discard_events: Annotated[bool, "Discard the events already processed."] = False,
    disable_staging_mode: Annotated[bool, "Release inputs still waiting for staging."] = False,
    keep_gshare_priority: Annotated[bool, "Keep the task's current share and priority."] = False,
    ignore_hard_exhausted: Annotated[bool, "Ignore the hard exhaustion limits (production role)."] = False,
) -> Reply:
    """Retry a finished, failed or exhausted task: its failed inputs get new attempts.

    A user task that is still running has its failed inputs retried at once instead. With
    ``new_parameters`` the task parameters are updated too once the retry is accepted, answered
    with code 3 (pbook calls a retry with new options failed on any other code).
    """
    production = _is_production(call)
    flags = (
        ("sole", no_child_retry),
        ("discard", discard_events),
        ("staged", disable_staging_mode),
        ("keep", keep_gshare_priority),
        ("transcend", ignore_hard_exhausted and production),
    )
    qualifiers = [name for name, wanted in flags if wanted]
    try:
        changes = orjson.loads(new_parameters) if isinstance(new_parameters, str) else new_parameters
        if changes is not None and not isinstance(changes, dict):
            raise InvalidInput("new_parameters must be a JSON object")
        result = await commands.retry(
            call.db,
            call.state.clock,
            task_id,
            qualifiers,
            requester=call.caller.user_name,
            production=production,
            new_parameters=changes,
        )
    except (orjson.JSONDecodeError, InvalidInput) as exc:
        reason = exc.message if isinstance(exc, InvalidInput) else str(exc)
        return Reply(success=False, message=f"new parameter conversion failed with {reason}", data=1)
    accepted = result.code in (commands.OK, commands.NEW_PARAMETERS_ACCEPTED)
    if accepted:
        call.on_commit.append(lambda: call.state.wake("commando"))
        call.on_commit.append(lambda: call.state.wake("generator"))
    # success says whether the retry was accepted (DESIGN §9.4): code 0, or 3 with new parameters.
    return Reply(success=accepted, message=result.message, data=result.code)


@task.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def resume(call: Call, task_id: TaskId) -> Reply:
    """Resume a paused or throttled task (a staging task becomes staged)."""
    return await _command(call, task_id, "resume", f"resume by {call.caller.user_name}")


@task.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def release(call: Call, task_id: TaskId) -> Reply:
    """Release a task's inputs from waiting for staging."""
    return await _command(call, task_id, "release", f"release by {call.caller.user_name}")


@task.endpoint(method="POST", db=DbUse.WRITE)
async def reassign(
    call: Call,
    task_id: TaskId,
    site: Annotated[str | None, "Queue to run the task's jobs at (the task keeps its status)."] = None,
    cloud: Annotated[str | None, "Cloud to reassign the task to."] = None,
    nucleus: Annotated[str | None, "Nucleus to reassign the task to."] = None,
    mode: Annotated[
        str | None, "soft: kill only queued jobs; nokill: kill none; default: kill all the task's jobs."
    ] = None,
) -> Reply:
    """Reassign a task to a site, cloud or nucleus; its jobs are made again there."""
    if site is not None:
        comment = f"site:{site}:y"
    elif nucleus is not None:
        comment = f"nucleus:{nucleus}:n"
    else:
        comment = f"cloud:{cloud}:n"
    if mode == "nokill":
        comment += ":nokill reassign"
    elif mode == "soft":
        comment += ":soft reassign"
    return await _command(call, task_id, "reassign", comment)


@task.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def pause(call: Call, task_id: TaskId) -> Reply:
    """Pause a task: no new jobs, and its queued jobs are throttled."""
    return await _command(call, task_id, "pause", f"pause by {call.caller.user_name}")


@task.endpoint(method="POST", access=Access.OWNER, db=DbUse.WRITE)
async def kill(
    call: Call,
    task_id: TaskId,
    broadcast: Annotated[bool, "Also tell pilots over the message bus (not available in Bamboo)."] = False,
) -> Reply:
    """Kill a task: it goes aborting, its jobs are killed, then it ends aborted."""
    return await _command(call, task_id, "kill", f"kill by {call.caller.user_name}")


@task.endpoint(method="POST", db=DbUse.WRITE)
async def kill_unfinished_jobs(
    call: Call,
    task_id: TaskId,
    code: Annotated[int | None, "Kill code (api-v1.md §3.6); none for a user kill."] = None,
    use_email_as_id: Annotated[bool, "Accepted for compatibility; Bamboo has no e-mail lookup."] = False,
) -> Reply:
    """Kill every unfinished job of a task; one boolean per job, in PandaID order."""
    if code not in killing.KILL_CODES:
        return failure(f"unknown kill code {code}")
    killed = await commands.kill_unfinished_jobs(
        call.db,
        call.state.clock,
        task_id,
        code,
        requester=call.caller.user_name,
        production=_is_production(call),
    )
    if any(killed):
        call.on_commit.append(lambda: call.state.wake("generator"))
    return Reply(data=killed)


@task.endpoint(method="POST", access=Access.OWNER, db=DbUse.WRITE)
async def finish(
    call: Call,
    task_id: TaskId,
    soft: Annotated[bool, "Let running jobs end instead of killing them."] = False,
    broadcast: Annotated[bool, "Also tell pilots over the message bus (not available in Bamboo)."] = False,
) -> Reply:
    """Finish a task: no new jobs; it ends done, finished or failed by what it processed."""
    comment = f"{'soft ' if soft else ''}finish by {call.caller.user_name}"
    return await _command(call, task_id, "finish", comment)


@task.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def avalanche(call: Call, task_id: TaskId) -> Reply:
    """Leave scouting at once and generate the rest of the task's jobs."""
    return await _command(call, task_id, "avalanche", f"avalanche by {call.caller.user_name}")


@task.endpoint(method="POST", db=DbUse.WRITE)
async def reload_input(
    call: Call,
    task_id: TaskId,
    ignore_hard_exhausted: Annotated[bool, "Ignore the hard exhaustion limits (production role)."] = False,
) -> Reply:
    """Re-execute a task over its input, including files added since (command incexec)."""
    qualifiers = ["transcend"] if ignore_hard_exhausted and _is_production(call) else []
    return await _command(call, task_id, "incexec", commands.reload_input_comment(qualifiers))


@task.endpoint(method="GET")
async def get_status(call: Call, task_id: Annotated[Any, "The task's jediTaskID."]) -> Reply:
    """The status of a task."""
    try:
        number = int(task_id)
    except (TypeError, ValueError):
        return failure("jediTaskID must be an integer")
    status = await tasks.status(call.db, number)
    if status is None:
        return failure("Task not found")
    return Reply(data=status)


@task.endpoint(method="GET")
async def get_details(
    call: Call,
    task_id: TaskId,
    include_parameters: Annotated[bool, "Add the task's cliParams."] = False,
    include_status: Annotated[bool, "Add the task's status."] = False,
) -> Reply:
    """Input and output datasets, file statistics and job ids of a task."""
    details = await tasks.details(
        call.db, task_id, include_parameters=include_parameters, include_status=include_status
    )
    if details is None:
        return failure("Task not found or error retrieving the details")
    return Reply(data=details)


@task.endpoint(method="GET")
async def get_job_ids(call: Call, task_id: TaskId) -> Reply:
    """The PandaIDs of every job of a task."""
    return Reply(data=await tasks.job_ids(call.db, task_id))


@task.endpoint(method="GET")
async def get_task_parameters(call: Call, task_id: TaskId) -> Reply:
    """The parameters the task was submitted with."""
    params = await tasks.task_parameters(call.db, task_id)
    if params is None:
        return failure("Task not found")
    return Reply(data=params)


@task.endpoint(method="GET")
async def get_detailed_info(call: Call, task_id: TaskId) -> Reply:
    """Every attribute of a task plus its file counts and parameters."""
    record = await tasks.detailed_info(call.db, task_id)
    if record is None:
        return failure("Task not found or error retrieving task info")
    return Reply(data=record)


@task.endpoint(method="GET")
async def get_tasks_detailed_info_since(
    call: Call,
    since: Annotated[
        str | None, "Oldest modification time, YYYY-MM-DD HH:MM:SS (at most 90 days ago)."
    ] = None,
    filters: Annotated[str | None, "JSON object of field -> value (equality) or regular expression."] = None,
    n_tasks: Annotated[int, "Most tasks to return."] = 500,
) -> Reply:
    """Detail records of the caller's tasks modified since a time."""
    return Reply(
        data=await tasks.detailed_info_since(call.db, call.state.clock, call.caller, since, filters, n_tasks)
    )


def _outcome_reply(outcome: task_admin.Outcome) -> Reply:
    """``success`` from the outcome, its message, no data."""
    return Reply(success=outcome.ok, message=outcome.message)


@task.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def change_priority(
    call: Call, task_id: TaskId, priority: Annotated[int, "The new current priority."]
) -> Reply:
    """Change the current priority of a task and of its jobs not yet running."""
    return _outcome_reply(await task_admin.change_priority(call.db, task_id, priority))


# A share name longer than the gshare column cannot be a leaf; the refusal echoes this much of it.
_ECHOED_SHARE_CHARS = 64


@task.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def reassign_global_share(
    call: Call,
    task_id_list: Annotated[list[int], "jediTaskIDs of the tasks to move."],
    share: Annotated[str, "The leaf global share to move them to."],
    reassign_running_jobs: Annotated[bool, "Also move the tasks' starting and running jobs."],
) -> Reply:
    """Move tasks and their waiting jobs to another global share (a leaf of the share tree).

    ``data`` is 0 on success and 1 when ``share`` is not a leaf; unknown task ids are passed over.
    """
    code = await shares.reassign(call.db, task_id_list, share, reassign_running_jobs=reassign_running_jobs)
    if code == shares.REASSIGN_NOT_LEAF:
        # The wording and the trailing space are upstream's.
        message = f"Share {share[:_ECHOED_SHARE_CHARS]} is not a leave share "
        return Reply(success=False, message=message, data=code)
    return Reply(success=True, message=None, data=code)


@task.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def change_attribute(
    call: Call,
    task_id: TaskId,
    attribute_name: Annotated[str, "ramCount, wallTime, cpuTime or coreCount."],
    value: Annotated[int, "The new value."],
) -> Reply:
    """Change the memory, walltime, CPU time or core count of a task; its resource type follows."""
    if attribute_name not in task_admin.CHANGEABLE_ATTRIBUTES:
        return failure(
            f"{attribute_name} is not a valid attribute. "
            f"Valid attributes are {list(task_admin.CHANGEABLE_ATTRIBUTES)}"
        )
    return _outcome_reply(await task_admin.change_attribute(call.db, task_id, attribute_name, value))


@task.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def change_modification_time(
    call: Call, task_id: TaskId, hour_offset: Annotated[int, "Hours from now (negative: in the past)."]
) -> Reply:
    """Set a task's modification time relative to now; a time in the past makes agents act on it."""
    return _outcome_reply(
        await task_admin.change_modification_time(call.db, call.state.clock, task_id, hour_offset)
    )


@task.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def change_split_rule(
    call: Call,
    task_id: TaskId,
    attribute_name: Annotated[str, "The two-letter split-rule tag (api-v1.md §3.9)."],
    value: Annotated[str, 'The new value; "" or "None" removes the tag.'],
) -> Reply:
    """Change one split rule of a task."""
    if attribute_name not in task_admin.CHANGEABLE_SPLIT_RULES:
        return failure(
            f"{attribute_name} is not a valid attribute. "
            f"Valid attributes are {list(task_admin.CHANGEABLE_SPLIT_RULES)}",
            task_admin.INVALID_SPLIT_RULE,
        )
    return _outcome_reply(await task_admin.change_split_rule(call.db, task_id, attribute_name, value))


@task.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def reactivate(
    call: Call,
    task_id: TaskId,
    keep_attempt_nr: Annotated[bool, "Keep the attempt numbers of the input files."] = False,
    trigger_job_generation: Annotated[bool, "Wake the job generator at once."] = False,
) -> Reply:
    """Make a task ready again with all its inputs unused (a missing task is not told apart)."""
    message = await task_admin.reactivate(call.db, call.state.clock, task_id, keep_attempt_nr=keep_attempt_nr)
    if trigger_job_generation:
        call.on_commit.append(lambda: call.state.wake("generator"))
    return Reply(message=message, data=0)


@task.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def increase_attempts(
    call: Call, task_id: TaskId, increase: Annotated[int, "Attempts to add to each input file."]
) -> Reply:
    """Give the input files of an active task more attempts; exhausted files become usable again."""
    if increase < 0:
        return failure(f"increase must be a positive integer, got {increase}")
    outcome = await task_admin.increase_attempts(call.db, call.state.clock, task_id, increase)
    if outcome.ok:
        call.on_commit.append(lambda: call.state.wake("generator"))
    return Reply(success=outcome.ok, message=outcome.message, data=outcome.code)


@task.endpoint(method="GET")
async def get_datasets_and_files(
    call: Call,
    task_id: Annotated[Any, "The task's jediTaskID."],
    dataset_types: Annotated[list[str], "Dataset types to include."] = ("input", "pseudo_input"),  # type: ignore[assignment]
    dataset_only: Annotated[bool, "Accepted for compatibility; files are always listed."] = False,
) -> Reply:
    """The datasets of a task with their files (name, scope, fileID, status)."""
    try:
        number = int(task_id)
    except (TypeError, ValueError):
        return failure("jediTaskID must be an integer")
    found = await task_queries.datasets_and_files(call.db, number, dataset_types)
    if not found:
        return failure("No data found for the task")
    return Reply(data=found)


@task.endpoint(method="GET")
async def get_job_descriptions(
    call: Call,
    task_id: TaskId,
    unsuccessful_only: Annotated[bool, "Only failed, cancelled and closed jobs."] = False,
) -> Reply:
    """Full records of the jobs of a task, with their duration and kind of job."""
    return Reply(
        data=await task_queries.job_descriptions(call.db, task_id, unsuccessful_only=unsuccessful_only)
    )


@task.endpoint(method="GET")
async def get_parent_detailed_info(call: Call, task_id: TaskId) -> Reply:
    """Every attribute of a task's parent task, as get_detailed_info gives it."""
    return Reply(data=await task_queries.parent_detailed_info(call.db, task_id))


@task.endpoint(method="GET")
async def get_tasks_modified_since(
    call: Call,
    since: Annotated[str, "Oldest modification time, YYYY-MM-DD HH:MM:SS (at most 30 days ago)."],
    dn: Annotated[str | None, "The owner's DN (default: the caller's)."] = None,
    full: Annotated[bool, "Add each task's datasets, statistics and job ids (at most 500 tasks)."] = False,
    min_task_id: Annotated[int | None, "Only tasks with a greater jediTaskID."] = None,
    prod_source_label: Annotated[str, "Only tasks of this label."] = "user",
) -> Reply:
    """A user's tasks modified since a time, keyed by reqID."""
    found = await task_queries.tasks_modified_since(
        call.db,
        call.state.clock,
        call.caller.dn if dn is None else dn,
        since,
        full=full,
        min_task_id=min_task_id,
        prod_source_label=prod_source_label,
    )
    return Reply(data=found)


@task.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def enable_job_cloning(
    call: Call,
    jedi_task_id: TaskId,
    mode: Annotated[str | None, "runonce (default: only the first clone runs) or storeonce."] = None,
    multiplicity: Annotated[int | None, "Clones per job (default 2)."] = None,
    num_sites: Annotated[int | None, "Sites the clones run at (default 2)."] = None,
) -> Reply:
    """Run each job of a task as several clones at different sites."""
    return _outcome_reply(
        await task_admin.enable_job_cloning(call.db, jedi_task_id, mode, multiplicity, num_sites)
    )


@task.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def disable_job_cloning(call: Call, jedi_task_id: TaskId) -> Reply:
    """Stop cloning the jobs of a task."""
    return _outcome_reply(await task_admin.disable_job_cloning(call.db, jedi_task_id))


@task.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def enable_jumbo_jobs(
    call: Call,
    task_id: TaskId,
    jumbo_jobs_total: Annotated[int, "Jumbo jobs of the task (0 disables them)."],
    jumbo_jobs_per_site: Annotated[int | None, "Most jumbo jobs per site (default: the total)."] = None,
) -> Reply:
    """Let a task run jumbo jobs, which take event ranges from the whole task."""
    outcome = await task_admin.enable_jumbo_jobs(call.db, task_id, jumbo_jobs_total, jumbo_jobs_per_site)
    return Reply(success=outcome.ok, message=outcome.message, data=outcome.code)


@task.endpoint(method="GET")
async def get_jumbo_job_datasets(
    call: Call,
    from_offset: Annotated[int, "Oldest modification, in days ago."],
    to_offset: Annotated[int, "Newest modification, in days ago."] = 0,
) -> Reply:
    """Output datasets of finished managed jumbo tasks modified in a window, by jediTaskID."""
    found = await task_queries.jumbo_job_datasets(call.db, call.state.clock, from_offset, to_offset)
    return Reply(data=found)
