"""``/api/v1/harvester/*``: what Harvester instances report and read.

Behaviour lives in ``logic/harvester.py`` (instances and their ownership, heartbeats, service
metrics, dialogs, worker statistics) and ``logic/workers.py`` (update_workers,
get_current_worker_id).
"""

from __future__ import annotations

from typing import Annotated

from bamboo.api.call import Call
from bamboo.api.envelope import Reply
from bamboo.api.registry import DbUse, Module
from bamboo.api.v1 import registry
from bamboo.auth.identity import has_production_role
from bamboo.logic import harvester as harvester_logic
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
