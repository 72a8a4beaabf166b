"""``/api/v1/pilot/*``: job dispatch to pilots and Harvester, and their status reports."""

from __future__ import annotations

from typing import Annotated, Any

from bamboo.api.call import Call
from bamboo.api.dispatch import bind_parameters
from bamboo.api.envelope import Reply, failure
from bamboo.api.params import ParameterError
from bamboo.api.registry import Access, DbUse, Module
from bamboo.api.v1 import registry
from bamboo.auth.dn import clean_user_id
from bamboo.auth.identity import has_production_role
from bamboo.logic import dispatch
from bamboo.logic import pilot as pilot_logic
from bamboo.logic.states import PILOT_REPORTABLE

pilot = Module(registry, "pilot")

NO_ROLE = "no production/pilot role in VOMS FQANs or non pilot owner"
STATUS_INVALID = 50
Text = Annotated[str | None, "As reported by the pilot."]
Number = Annotated[int | None, "As reported by the pilot."]
Measure = Annotated[int | float | None, "As reported by the pilot."]


@pilot.endpoint(method="POST", db=DbUse.WRITE)
async def acquire_jobs(
    call: Call,
    site_name: Annotated[str, "The PanDA queue asking for work."],
    timeout: Annotated[int, "Accepted for compatibility; not used."] = 60,
    memory: Annotated[int | None, "Memory available, MB (jobs needing more are not given)."] = None,
    disk_space: Annotated[int | None, "Scratch space available, MB."] = None,
    prod_source_label: Annotated[str | None, "user, managed, unified, test... (which jobs to take)."] = None,
    node: Annotated[str | None, "Worker node name."] = None,
    computing_element: Annotated[str | None, "Computing element of the worker."] = None,
    prod_user_id: Annotated[
        str | None, "Only jobs of this user (DN); forced to the caller without role."
    ] = None,
    get_proxy_key: Annotated[str | None, "Accepted for compatibility; proxies are not handed out."] = None,
    task_id: Annotated[int | None, "Only jobs of this task."] = None,
    n_jobs: Annotated[int, "How many jobs at most."] = 1,
    background: Annotated[bool | None, "Accepted for compatibility; not used."] = None,
    resource_type: Annotated[str | None, "Only jobs of this resource type."] = None,
    harvester_id: Annotated[
        str | None, "Accepted for compatibility; worker bookkeeping is not kept yet."
    ] = None,
    worker_id: Annotated[
        int | None, "Accepted for compatibility; worker bookkeeping is not kept yet."
    ] = None,
    scheduler_id: Annotated[str | None, "Who submitted the pilot."] = None,
    job_type: Annotated[str | None, "Accepted for compatibility; not used."] = None,
    via_topic: Annotated[bool | None, "Accepted for compatibility; not used."] = None,
    remaining_time: Annotated[Any, "Seconds the worker has left (jobs needing more are not given)."] = None,
) -> Reply:
    """Hand activated jobs of a queue to a pilot or Harvester; each job goes to one caller only."""
    identity = call.caller
    if has_production_role(identity, call.state.settings.production_dns):
        owner = clean_user_id(prod_user_id) if prod_user_id else None
    else:
        if prod_source_label != "user":
            return failure(NO_ROLE)
        owner = identity.user_name
    try:
        remaining = int(remaining_time) if remaining_time not in (None, "") else None
    except (TypeError, ValueError):
        remaining = None
    request = dispatch.AcquireRequest(
        site_name=site_name,
        prod_source_label=prod_source_label,
        n_jobs=n_jobs,
        memory=memory,
        disk_space=disk_space,
        remaining_time=remaining,
        resource_type=resource_type,
        task_id=task_id,
        node=node,
        computing_element=computing_element,
        scheduler_id=scheduler_id,
        user_name=owner,
    )
    jobs = await dispatch.acquire(call.db, call.state.clock, request, call.state.queue_statuses)
    if not jobs:
        return failure(dispatch.NO_JOBS)
    return Reply(data={"StatusCode": 0, "jobs": jobs})


@pilot.endpoint(method="GET")
async def get_job_status(
    call: Call,
    job_ids: Annotated[list[int], "PandaIDs of the jobs."],
    timeout: Annotated[int, "Accepted for compatibility; not used."] = 60,
) -> Reply:
    """Status and attempt number of each job (``not found`` for unknown ones)."""
    return Reply(data=await pilot_logic.job_statuses(call.db, job_ids))


async def _apply_update(call: Call, job_id: int, job_status: str, report: dict[str, Any]) -> Reply:
    if job_status not in PILOT_REPORTABLE:
        return failure(f"Invalid job status: {job_status}", {"StatusCode": STATUS_INVALID})
    data, final = await pilot_logic.update_job(call.db, call.state.clock, job_id, job_status, report)
    if final:
        call.on_commit.append(lambda: call.state.wake("finaliser"))
    return Reply(data=data)


@pilot.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def update_job(
    call: Call,
    job_id: Annotated[int, "PandaID of the job."],
    job_status: Annotated[str, "starting, running, holding, transferring, finished or failed."],
    job_sub_status: Text = None,
    start_time: Annotated[str | None, "Payload start, YYYY-MM-DD HH:MM:SS (UTC)."] = None,
    end_time: Annotated[str | None, "Payload end, YYYY-MM-DD HH:MM:SS (UTC)."] = None,
    pilot_timing: Text = None,
    site_name: Text = None,
    node: Text = None,
    scheduler_id: Text = None,
    pilot_id: Text = None,
    batch_id: Text = None,
    trans_exit_code: Number = None,
    pilot_error_code: Number = None,
    pilot_error_diag: Text = None,
    exe_error_code: Number = None,
    exe_error_diag: Text = None,
    n_events: Number = None,
    n_input_files: Number = None,
    attempt_nr: Annotated[int | None, "The job's attempt number; a stale attempt is told to stop."] = None,
    cpu_consumption_time: Number = None,
    cpu_consumption_unit: Text = None,
    cpu_conversion_factor: Measure = None,
    core_count: Number = None,
    mean_core_count: Number = None,
    max_rss: Measure = None,
    max_vmem: Measure = None,
    max_swap: Measure = None,
    max_pss: Measure = None,
    avg_rss: Measure = None,
    avg_vmem: Measure = None,
    avg_swap: Measure = None,
    avg_pss: Measure = None,
    tot_rchar: Measure = None,
    tot_wchar: Measure = None,
    tot_rbytes: Measure = None,
    tot_wbytes: Measure = None,
    rate_rchar: Measure = None,
    rate_wchar: Measure = None,
    rate_rbytes: Measure = None,
    rate_wbytes: Measure = None,
    corrupted_files: Text = None,
    cpu_architecture_level: Text = None,
    grid: Text = None,
    source_site: Text = None,
    destination_site: Text = None,
    job_metrics: Text = None,
    job_output_report: Annotated[str, "JSON {lfn: {guid, fsize, adler32|md5sum, ...}} of the outputs."] = "",
    pilot_log: Annotated[str, "The pilot's log excerpt."] = "",
    meta_data: Annotated[str, "The payload's job metadata (JSON text)."] = "",
    stdout: Annotated[str, "The payload's standard output excerpt."] = "",
    timeout: Annotated[int, "Accepted for compatibility; not used."] = 60,
) -> Reply:
    """A pilot's heartbeat or final report; the answer carries the command for the pilot.

    finished/failed park the job in holding until its outputs are registered.
    """
    report = {
        key: value
        for key, value in locals().items()
        if key not in ("call", "job_id", "job_status") and value is not None
    }
    return await _apply_update(call, job_id, job_status, report)


@pilot.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def update_jobs_bulk(
    call: Call,
    job_list: Annotated[list, "update_job parameter objects, one per job."],
    harvester_id: Annotated[str | None, "The Harvester instance sending the reports."] = None,
) -> Reply:
    """Several update_job reports at once; the answer lists one envelope per job, in order."""
    for entry in job_list:
        if not isinstance(entry, dict):
            return failure("failed with TypeError 'each job must be an object'", [])
        for key in ("job_id", "job_status"):
            if key not in entry:
                return failure(f"failed with KeyError '{key}'", [])
    endpoint = registry.lookup("pilot", "update_job")
    assert endpoint is not None
    results = []
    for entry in job_list:
        try:
            args = bind_parameters(endpoint, entry, textual=False)
        except ParameterError as exc:
            results.append(_envelope(failure(str(exc))))
            continue
        report = {key: value for key, value in args.items() if key not in ("job_id", "job_status")}
        results.append(_envelope(await _apply_update(call, args["job_id"], args["job_status"], report)))
    return Reply(data=results)


def _envelope(reply: Reply) -> dict[str, Any]:
    return {"success": reply.success, "message": reply.message, "data": reply.data}
