"""``/api/v1/harvester/*``: what Harvester instances report and the commands Bamboo sends them.

Commands (acquire_commands, acknowledge_commands, add_sweep_command) live in
``logic/harvester_commands.py``; target slots (add_target_slots) and how they steer dispatch and
brokerage in ``logic/target_slots.py``.
"""

from __future__ import annotations

from typing import Annotated

from bamboo.api.call import Call
from bamboo.api.envelope import Reply
from bamboo.api.registry import Access, DbUse, Module
from bamboo.api.v1 import registry
from bamboo.logic import harvester_commands, target_slots

harvester = Module(registry, "harvester")


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
