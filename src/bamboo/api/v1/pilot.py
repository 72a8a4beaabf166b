"""``/api/v1/pilot/*``: job dispatch to pilots and Harvester, and their status reports.

Behaviour lives in ``logic/dispatch.py`` (acquire_jobs), ``logic/pilot.py`` (update_job,
update_jobs_bulk, get_job_status, update_worker_status) and ``logic/worker_nodes.py`` (the
worker-node catalog: update_worker_node, update_worker_node_gpu).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from bamboo.api.call import Call
from bamboo.api.dispatch import bind_parameters
from bamboo.api.envelope import Reply, failure
from bamboo.api.params import INT_MAX, INT_MIN, ParameterError
from bamboo.api.registry import Access, DbUse, Module
from bamboo.api.v1 import registry
from bamboo.auth.dn import clean_user_id
from bamboo.auth.identity import has_production_role
from bamboo.home import KeyringError
from bamboo.logic import dispatch, secrets, worker_nodes
from bamboo.logic import pilot as pilot_logic
from bamboo.logic.errors import InvalidInput
from bamboo.logic.secrets import SecretsUnavailable
from bamboo.logic.states import PILOT_REPORTABLE

pilot = Module(registry, "pilot")
log = logging.getLogger(__name__)

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
    memory: Annotated[int | None, "Memory available, MB (jobs needing more are not given; 0: any)."] = None,
    disk_space: Annotated[int | None, "Scratch space available, MB (0: any)."] = None,
    prod_source_label: Annotated[
        str | None, "user, managed (default), unified, test or an exact label: which jobs to take."
    ] = None,
    node: Annotated[str | None, "Worker node name (stored as the job's modificationHost)."] = None,
    computing_element: Annotated[str | None, "Computing element of the worker."] = None,
    prod_user_id: Annotated[
        str | None, "Only jobs of this user (DN); forced to the caller without production role."
    ] = None,
    get_proxy_key: Annotated[
        str | None,
        '"True": each job whose owner has a stored proxy carries credname and myproxy, where '
        "creds/get_proxy answers that proxy (production role only).",
    ] = None,
    task_id: Annotated[int | None, "Only jobs of this task."] = None,
    n_jobs: Annotated[int, f"How many jobs at most (1 to {dispatch.MAX_JOBS_PER_CALL})."] = 1,
    background: Annotated[bool | None, "true: only jobs flagged to run in the background."] = None,
    resource_type: Annotated[str | None, "Only jobs of this resource type."] = None,
    harvester_id: Annotated[
        str | None,
        "The Harvester instance (default: scheduler_id); with worker_id, the jobs are related to the worker.",
    ] = None,
    worker_id: Annotated[int | None, "The Harvester worker the jobs will run in."] = None,
    scheduler_id: Annotated[str | None, "Who submitted the pilot."] = None,
    job_type: Annotated[str | None, "Accepted for compatibility; not used for selection."] = None,
    via_topic: Annotated[bool | None, "Accepted for compatibility; not used."] = None,
    remaining_time: Annotated[
        Any, "Seconds the worker has left (jobs needing more walltime are not given; 0: any)."
    ] = None,
) -> Reply:
    """Hand activated jobs of a queue to a pilot or Harvester; each job goes to one caller only."""
    identity = call.caller
    production = has_production_role(identity, call.state.settings.production_dns)
    if production:
        owner = clean_user_id(prod_user_id) if prod_user_id else None
    else:
        if prod_source_label != "user":
            return failure(NO_ROLE)
        owner = identity.user_name
    request = dispatch.AcquireRequest(
        site_name=site_name,
        prod_source_label=prod_source_label,
        n_jobs=n_jobs,
        memory=memory,
        disk_space=disk_space,
        remaining_time=dispatch.seconds(remaining_time),
        resource_type=resource_type,
        task_id=task_id,
        node=node,
        computing_element=computing_element,
        scheduler_id=scheduler_id,
        user_name=owner,
        background=bool(background),
        harvester_id=harvester_id if harvester_id is not None else scheduler_id,
        worker_id=worker_id,
    )
    to_send = None
    if production:
        wants_proxy_keys = (get_proxy_key or "").strip().lower() == "true"
        to_send = _secrets_to_send(call, _proxy_base(call) if wants_proxy_keys else None)
    jobs = await dispatch.acquire(call.db, call.state.clock, request, call.state.queue_statuses, to_send)
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


def _secrets_to_send(call: Call, proxy_keys_from: str | None = None) -> dispatch.SecretsToSend:
    try:
        keyring = call.state.keyring.keyring()
    except KeyringError as exc:
        # Jobs needing secrets must not leave without them: nothing is claimed.
        log.error("secrets keyring unusable, no job handed out: %s", exc)
        raise SecretsUnavailable("secrets are unavailable on this server") from exc
    return dispatch.SecretsToSend(keyring, call.state.settings.pilot_secrets_owner, proxy_keys_from)


def _proxy_base(call: Call) -> str:
    """Where a pilot fetches its jobs' owner proxies: the configured public HTTPS base, else the
    base this pilot reached (it came with the credentials that creds/get_proxy needs there)."""
    configured = call.state.settings.public_https_url
    if configured:
        return configured.rstrip("/")
    url = call.request.url
    return f"{url.scheme}://{url.netloc}"


async def _apply_update(call: Call, job_id: int, job_status: str, report: dict[str, Any]) -> Reply:
    if job_status not in PILOT_REPORTABLE:
        return failure(f"Invalid job status: {job_status}", {"StatusCode": STATUS_INVALID})
    answer = await pilot_logic.update_job(call.db, call.state.clock, job_id, job_status, report)
    if answer.final:
        call.on_commit.append(lambda: call.state.wake("finaliser"))
    data = answer.data
    pilot_owner = call.state.settings.pilot_secrets_owner
    if pilot_owner and data.get("StatusCode") == 0:
        keyring = _secrets_to_send(call).keyring
        data = {**data, "pilotSecrets": await secrets.pilot_secrets_text(call.db, keyring, pilot_owner)}
    return Reply(data=data, message=answer.message)


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
    pilot_log: Annotated[
        str, f"The pilot's log excerpt (its last {pilot_logic.MAX_PILOT_LOG_CHARS:,} characters are kept)."
    ] = "",
    meta_data: Annotated[
        str, f"The payload's job metadata (JSON text, at most {pilot_logic.MAX_METADATA_CHARS:,} characters)."
    ] = "",
    stdout: Annotated[
        str, f"The payload's standard output (its last {pilot_logic.MAX_STDOUT_CHARS:,} characters are kept)."
    ] = "",
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


WORKER_STATUS_FAILED = "Failed to update worker status"


@pilot.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def update_worker_status(
    call: Call,
    worker_id: Annotated[Any, "The Harvester worker's workerID (an integer)."],
    harvester_id: Annotated[Any, "The Harvester instance the worker belongs to."],
    status: Annotated[Any, "started or finished: the pilot in the worker began or ended."],
    timeout: Annotated[Any, "Accepted for compatibility; not used."] = 60,
    node_id: Annotated[Any, "The node the worker runs on."] = None,
) -> Reply:
    """Record that the pilot in a Harvester worker started or finished (an unknown worker is no error)."""
    if status not in pilot_logic.WORKER_PILOT_STATUSES:
        return failure(pilot_logic.INVALID_WORKER_STATE)
    try:
        worker = int(worker_id)
    except (TypeError, ValueError, OverflowError):
        return failure(f"{WORKER_STATUS_FAILED}: worker_id must be an integer")
    if not INT_MIN <= worker <= INT_MAX:
        return failure(f"{WORKER_STATUS_FAILED}: worker_id must be a 64-bit integer")
    if isinstance(worker_id, bool) or not isinstance(harvester_id, str) or not harvester_id:
        return failure(f"{WORKER_STATUS_FAILED}: worker_id and harvester_id must name a worker")
    node = str(node_id) if node_id is not None else None
    await pilot_logic.update_worker_status(call.db, call.state.clock, harvester_id, worker, status, node)
    return Reply()


@pilot.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def update_worker_node(
    call: Call,
    site: Annotated[str, "Site (PanDA site) of the node."],
    host_name: Annotated[str, "Host name (a batch slot prefix such as slot1@ is removed)."],
    cpu_model: Annotated[str, "CPU model as the node reports it."],
    panda_queue: Annotated[str | None, "The queue the pilot serves (recorded with the node)."] = None,
    n_logical_cpus: Annotated[int | None, "Logical CPUs."] = None,
    n_sockets: Annotated[int | None, "CPU sockets."] = None,
    cores_per_socket: Annotated[int | None, "Cores per socket."] = None,
    threads_per_core: Annotated[int | None, "Hardware threads per core."] = None,
    cpu_architecture: Annotated[str | None, "e.g. x86_64."] = None,
    cpu_architecture_level: Annotated[str | None, "e.g. x86-64-v3."] = None,
    clock_speed: Annotated[float | None, "Clock speed, MHz."] = None,
    total_memory: Annotated[int | None, "Memory of the node, MB."] = None,
    total_local_disk: Annotated[int | None, "Local disk of the node, GB."] = None,
    timeout: Annotated[int, "Accepted for compatibility; not used."] = 60,
) -> Reply:
    """Register a worker node in the catalog, or refresh when it was last seen."""
    report = worker_nodes.NodeReport(
        site=site,
        host_name=host_name,
        cpu_model=cpu_model,
        panda_queue=panda_queue,
        n_logical_cpus=n_logical_cpus,
        n_sockets=n_sockets,
        cores_per_socket=cores_per_socket,
        threads_per_core=threads_per_core,
        cpu_architecture=cpu_architecture,
        cpu_architecture_level=cpu_architecture_level,
        clock_speed=clock_speed,
        total_memory=total_memory,
        total_local_disk=total_local_disk,
    )
    try:
        message = await worker_nodes.report_node(call.db, call.state.clock, report)
    except InvalidInput as exc:
        return failure(f"Worker node update failed with InvalidInput {exc.message}")
    return Reply(message=message)


@pilot.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def update_worker_node_gpu(
    call: Call,
    site: Annotated[str, "Site (PanDA site) of the node."],
    host_name: Annotated[str, "Host name (a batch slot prefix such as slot1@ is removed)."],
    vendor: Annotated[str, "GPU vendor."],
    model: Annotated[str, "GPU model."],
    count: Annotated[int, "How many GPUs of this model the node has."],
    vram: Annotated[int | None, "Memory per GPU, MB."] = None,
    architecture: Annotated[str | None, "GPU architecture."] = None,
    framework: Annotated[str | None, "Compute framework (e.g. CUDA)."] = None,
    framework_version: Annotated[str | None, "Version of the framework."] = None,
    driver_version: Annotated[str | None, "Driver version."] = None,
    timeout: Annotated[int, "Accepted for compatibility; not used."] = 60,
) -> Reply:
    """Register a node's GPUs in the catalog, or refresh their count, framework and last-seen time."""
    report = worker_nodes.GpuReport(
        site=site,
        host_name=host_name,
        vendor=vendor,
        model=model,
        count=count,
        vram=vram,
        architecture=architecture,
        framework=framework,
        framework_version=framework_version,
        driver_version=driver_version,
    )
    try:
        message = await worker_nodes.report_gpu(call.db, call.state.clock, report)
    except InvalidInput as exc:
        return failure(exc.message)
    return Reply(message=message)
