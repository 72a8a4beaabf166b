"""``/api/v1/task/*``: submitting tasks and reading them."""

from __future__ import annotations

from typing import Annotated, Any

from bamboo.api.call import Call
from bamboo.api.envelope import Reply, failure
from bamboo.api.registry import DbUse, Module
from bamboo.api.v1 import registry
from bamboo.auth.identity import has_production_role
from bamboo.logic import tasks
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
