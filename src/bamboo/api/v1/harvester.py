"""``/api/v1/harvester/*``: what Harvester instances report and read, and the commands Bamboo sends them.

Behaviour lives in ``logic/harvester.py`` (instances and their ownership, heartbeats, service
metrics, dialogs, worker statistics), ``logic/workers.py`` (update_workers,
get_current_worker_id), ``logic/harvester_commands.py`` (acquire_commands, acknowledge_commands,
add_sweep_command) and ``logic/target_slots.py`` (add_target_slots, and how slots steer dispatch
and brokerage).
"""

from __future__ import annotations

from typing import Annotated

from bamboo.api.call import Call
from bamboo.api.envelope import Reply
from bamboo.api.registry import Access, DbUse, Module
from bamboo.api.v1 import registry
from bamboo.auth.identity import has_production_role
from bamboo.logic import harvester as harvester_logic
from bamboo.logic import harvester_commands, target_slots
from bamboo.logic import workers as workers_logic

harvester = Module(registry, "harvester")

HarvesterId = Annotated[
    str,
    f"The Harvester instance (at most {harvester_logic.MAX_HARVESTER_ID} characters); it belongs to "
    "the user who first used it, others need the production role.",
]


def _caller(call: Call) -> harvester_logic.Caller:
    identity = call.caller
    production = has_production_role(identity, call.state.settings.production_dns)
    return harvester_logic.Caller(user=identity.user_name, production=production)


@harvester.endpoint(method="POST", db=DbUse.WRITE)
async def heartbeat(
    call: Call,
    harvester_id: HarvesterId,
    # Declared ``dict`` (null still allowed by the default) so a wrong type gets upstream's message.
    data: Annotated[
        dict,  # noqa: RUF013
        "Instance attributes (startTime as 'datetime/YYYY-MM-DD HH:MM:SS.ffffff', sw_version, "
        "commit_stamp, description...), kept whole; 'commands': [{command, computingSite, "
        f"resourceType}}] registers command locks. At most {harvester_logic.MAX_HEARTBEAT_DATA_BYTES:,} "
        "bytes as JSON.",
    ] = None,
) -> Reply:
    """Record that a Harvester instance is alive, with its host and attributes.

    Works on the first contact and without data (upstream fails both).
    """
    host = call.request.client.host if call.request.client else ""
    await harvester_logic.heartbeat(call.db, call.state.clock, _caller(call), harvester_id, data, host)
    return Reply()


@harvester.endpoint(method="POST", db=DbUse.WRITE)
async def update_workers(
    call: Call,
    harvester_id: HarvesterId,
    workers: Annotated[
        list,
        f"Worker objects (at most {workers_logic.MAX_WORKERS_PER_CALL:,}): workerID and the worker "
        "columns, pandaid_list (the worker's jobs, at most "
        f"{workers_logic.MAX_JOBS_PER_WORKER:,}) and syncLevel; unknown keys are ignored. One bad "
        "worker refuses the whole call.",
    ],
) -> Reply:
    """Insert or update the instance's workers; a final worker's running jobs may fail with code 300."""
    answers, failed = await workers_logic.update_workers(
        call.db, call.state.clock, _caller(call), harvester_id, workers
    )
    if failed:
        call.on_commit.append(lambda: call.state.wake("finaliser"))
    return Reply(data=answers)


@harvester.endpoint(method="POST", db=DbUse.WRITE)
async def update_service_metrics(
    call: Call,
    harvester_id: HarvesterId,
    metrics: Annotated[
        list,
        "[creation_time 'YYYY-MM-DD HH:MM:SS.ffffff', host, metrics JSON text] entries "
        f"(at most {harvester_logic.MAX_METRICS:,}).",
    ],
) -> Reply:
    """Store the instance's service metrics (CPU, memory, disk, certificate lifetime...)."""
    await harvester_logic.add_metrics(call.db, call.state.clock, _caller(call), harvester_id, metrics)
    return Reply(data=[True])


@harvester.endpoint(method="POST", db=DbUse.WRITE)
async def add_dialogs(
    call: Call,
    harvester_id: HarvesterId,
    dialogs: Annotated[
        list,
        "{diagID, moduleName, identifier, creationTime, messageLevel, diagMessage} objects "
        f"(at most {harvester_logic.MAX_DIALOGS:,}); each replaces the dialog with its diagID.",
    ],
) -> Reply:
    """Store the instance's diagnostic messages."""
    await harvester_logic.add_dialogs(call.db, call.state.clock, _caller(call), harvester_id, dialogs)
    return Reply()


@harvester.endpoint(method="POST", db=DbUse.WRITE)
async def report_worker_statistics(
    call: Call,
    harvester_id: HarvesterId,
    panda_queue: Annotated[str, "The queue the counts are of."],
    statistics: Annotated[
        str,
        "JSON text {jobType: {resourceType: {status: number of workers}}} ('Undefined' types are skipped).",
    ],
) -> Reply:
    """Replace the instance's worker counts of one queue."""
    await harvester_logic.report_worker_statistics(
        call.db, call.state.clock, _caller(call), harvester_id, panda_queue, statistics
    )
    return Reply(message=harvester_logic.STATISTICS_OK)


@harvester.endpoint(method="GET")
async def get_worker_statistics(call: Call) -> Reply:
    """Worker counts reported in the last 4 hours.

    ``{computingSite: {harvesterID: {jobType: {resourceType: {status: n}}}}}``.
    """
    return Reply(data=await harvester_logic.worker_statistics(call.db, call.state.clock))


@harvester.endpoint(method="GET")
async def get_current_worker_id(call: Call, harvester_id: HarvesterId) -> Reply:
    """The largest workerID the instance has reported (0 when none)."""
    return Reply(data=await workers_logic.current_worker_id(call.db, _caller(call), harvester_id))


@harvester.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def acquire_commands(
    call: Call,
    harvester_id: Annotated[str, "The Harvester instance fetching its commands."],
    n_commands: Annotated[
        int,
        f"How many commands at most (at least 1; above {harvester_commands.MAX_COMMANDS_PER_CALL}: capped).",
    ],
    timeout: Annotated[int, "Accepted for compatibility; not used."] = 30,
) -> Reply:
    """The oldest new commands of the instance, now ``retrieved``; each is handed out once."""
    return Reply(data=await harvester_commands.acquire(call.db, call.state.clock, harvester_id, n_commands))


@harvester.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def acknowledge_commands(
    call: Call,
    command_ids: Annotated[
        list,
        f"Ids of the commands carried out (at most {harvester_commands.MAX_LIST}); unknown ids are ignored.",
    ],
    timeout: Annotated[int, "Accepted for compatibility; not used."] = 30,
) -> Reply:
    """Mark commands ``acknowledged``."""
    await harvester_commands.acknowledge(call.db, call.state.clock, command_ids)
    return Reply()


@harvester.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def add_sweep_command(
    call: Call,
    panda_queue: Annotated[str, "The queue whose workers are to be killed."],
    status_list: Annotated[list[str], "Worker statuses to kill (submitted, idle, running...)."],
    ce_list: Annotated[
        list[str], "Computing elements to sweep (empty: all); kept only if the queue lists them."
    ],
    submission_host_list: Annotated[list[str], "Submission hosts to sweep."],
) -> Reply:
    """Queue a ``KILL_WORKERS`` command for the Harvester instance serving the queue.

    The instance is the one the queue's catalog entry names (``harvester``), else the one that last
    reported workers for the queue.
    """
    await harvester_commands.add_sweep(
        call.db, call.state.clock, panda_queue, status_list, ce_list, submission_host_list
    )
    return Reply()


@harvester.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def add_target_slots(
    call: Call,
    panda_queue: Annotated[str, "The queue."],
    slots: Annotated[
        int, "Target number of jobs of this kind at the queue (0: none; -1 deletes the setting)."
    ],
    global_share: Annotated[str | None, "Global share the target is for (default: any)."] = None,
    resource_type: Annotated[str | None, "Resource type the target is for (default: any)."] = None,
    expiration_date: Annotated[
        str | None, "Days the target stays valid (a number, as upstream reads it; default: until changed)."
    ] = None,
) -> Reply:
    """Set the target slots of a queue for a global share and resource type.

    Dispatch hands out no job of a kind whose target is 0 or reached, and brokerage avoids queues
    whose target for the task's kind is 0 (``logic/target_slots.py``).
    """
    message = await target_slots.set_target_slots(
        call.db, call.state.clock, panda_queue, slots, global_share, resource_type, expiration_date
    )
    queue = panda_queue
    call.on_commit.append(lambda: call.state.queue_statuses.forget_slots(queue))
    return Reply(message=message)
