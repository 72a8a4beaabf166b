"""``/api/v1/event/*``: the event service's range hand-out and reports (api-v1.md §2.4).

Behaviour lives in ``logic/events.py``. The answers follow what Harvester reads (clients.md §3.2,
§3.3): ``StatusCode``, ``eventRanges``, ``Returns`` and ``Commands`` inside ``data``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from bamboo.api.call import Call
from bamboo.api.envelope import Reply, failure
from bamboo.api.registry import Access, DbUse, Module
from bamboo.api.v1 import registry
from bamboo.auth.identity import has_production_role
from bamboo.logic import events

event = Module(registry, "event")

Timeout = Annotated[int, "Accepted for compatibility; not used."]


@event.endpoint(method="GET", access=Access.PRODUCTION)
async def get_available_event_range_count(
    call: Call,
    job_id: Annotated[int, "PandaID of the consumer job."],
    jobset_id: Annotated[int, "The job's jobset."],
    task_id: Annotated[int, "The job's jediTaskID."],
    timeout: Timeout = 60,
) -> Reply:
    """How many ranges the job could still take: ready with attempts left, of its jobset (jumbo: task)."""
    count = await events.available_count(call.db, job_id=job_id, jobset_id=jobset_id, task_id=task_id)
    return Reply(data=count)


@event.endpoint(method="GET")
async def get_event_range_statuses(
    call: Call,
    job_task_ids: Annotated[
        Any,
        "JSON text of a list of {task_id, panda_id} (job_id also accepted), or the parameter "
        f"repeated, one object each; at most {events.MAX_STATUS_ITEMS}.",
    ],
) -> Reply:
    """Status, error code and diagnostic of each range the jobs hold: ``{PandaID: {eventRangeID: ...}}``.

    Without the production role a caller reads its own jobs only.
    """
    pairs = events.parse_job_task_ids(job_task_ids)
    reader = None if _is_production(call) else call.caller.user_name
    return Reply(data=await events.range_statuses(call.db, pairs, reader))


@event.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def acquire_event_ranges(
    call: Call,
    job_id: Annotated[int, "PandaID of the consumer job asking."],
    jobset_id: Annotated[int, "The job's jobset."],
    task_id: Annotated[int | None, "The job's jediTaskID (checked when given)."] = None,
    n_ranges: Annotated[
        int, f"How many ranges at most (1 or more; {events.MAX_RANGES_PER_ACQUIRE} at most are given)."
    ] = 10,
    timeout: Timeout = 60,
    scattered: Annotated[bool, "Spread the ranges over the files rather than in file order."] = False,
    segment_id: Annotated[int | None, "Only ranges of this input dataset (datasetID)."] = None,
) -> Reply:
    """Hand ready event ranges of the job's jobset (jumbo jobs: of the task) to the job.

    Each range goes to one job only. When the jobset has none left, its consumers that never took
    a range and have not started are closed, and the caller gets an empty list.
    """
    ranges = await events.acquire(
        call.db,
        call.state.clock,
        job_id=job_id,
        jobset_id=jobset_id,
        task_id=task_id,
        n_ranges=n_ranges,
        scattered=scattered,
        segment_id=segment_id,
    )
    return Reply(data={"StatusCode": 0, "eventRanges": ranges})


@event.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def update_event_ranges(
    call: Call,
    event_ranges: Annotated[
        Any,
        "JSON text (or a list) of range reports (version 0) or of {zipFile?, eventRanges} chunks "
        f"(versions 1, 2); at most {events.MAX_RANGES_PER_UPDATE} ranges.",
    ],
    timeout: Timeout = 120,
    version: Annotated[int, "0 plain, 1 with zip files, 2 fine-grained (ready ranges, activated jobs)."] = 0,
) -> Reply:
    """Record range reports: ``Returns`` has true (written), null (acknowledged) or false (refused)
    per range, in order; ``Commands`` the pilot command of the jobs that have one."""
    result = await events.update(call.db, call.state.clock, event_ranges, version)
    commands = {str(panda_id): command for panda_id, command in result.commands.items() if command}
    return Reply(data={"StatusCode": 0, "Returns": result.returns, "Commands": commands})


@event.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def update_single_event_range(
    call: Call,
    event_range_id: Annotated[str, "<jediTaskID>-<PandaID>-<fileID>-<job_processID>-<attemptNr>"],
    event_range_status: Annotated[str, "running, transferring, finished, failed or fatal."],
    core_count: Annotated[int | None, "Cores used."] = None,
    cpu_consumption_time: Annotated[float | None, "CPU seconds used."] = None,
    object_store_id: Annotated[int | str | None, "Object store the output went to (an integer)."] = None,
    timeout: Timeout = 60,
) -> Reply:
    """One range report; ``data`` = ``{"Command": <JSON text of {PandaID: command}>}``.

    A non-final status is acknowledged with success true.
    """
    report: dict[str, Any] = {"eventRangeID": event_range_id, "eventStatus": event_range_status}
    for key, value in (
        ("coreCount", core_count),
        ("cpuConsumptionTime", cpu_consumption_time),
        ("objstoreID", object_store_id),
    ):
        if value is not None:
            report[key] = value
    result = await events.update(call.db, call.state.clock, [report], 0)
    if result.returns[0] is False:
        return failure(f"event range not updated: {result.reasons[0]}")
    return Reply(data={"Command": json.dumps({str(k): v for k, v in result.commands.items()})})


def _is_production(call: Call) -> bool:
    return has_production_role(call.caller, call.state.settings.production_dns)
