"""``/api/v1/file_server/*``: the file cache and the requests worked through by agents (api-v1.md §2.6).

Lost-file recovery requests live in ``logic/file_recovery.py``, event-picking requests in
``logic/event_picking.py``, workflow requests in ``logic/workflows.py``; each is a stored row that
an agent of ``agents/runner.py`` processes.
"""

from __future__ import annotations

from typing import Annotated

from bamboo.api.call import Call
from bamboo.api.envelope import Reply, failure
from bamboo.api.registry import Access, DbUse, Module
from bamboo.api.v1 import registry
from bamboo.auth.identity import has_production_role
from bamboo.logic import event_picking, file_recovery, workflows

file_server = Module(registry, "file_server")

PickText = Annotated[str, "Stored with the request (see docs/architecture.md, event picking)."]


@file_server.endpoint(method="POST", access=Access.OWNER, db=DbUse.WRITE)
async def upload_file_recovery_request(
    call: Call,
    task_id: Annotated[int | None, "jediTaskID of the task whose output files are lost."] = None,
    dry_run: Annotated[bool | None, "Only write to the log what would be done."] = None,
    dataset: Annotated[str | None, "An output dataset: all its files are lost (task found from it)."] = None,
    # PanDA's List[str] with default None: a null is accepted as the default (api/params.py).
    files: Annotated[list[str], "Names of the lost output files (default: all of dataset)."] = None,  # type: ignore[assignment]  # noqa: RUF013
    no_child_retry: Annotated[bool, "Leave child tasks that failed on the lost files alone."] = True,
    resurrect_datasets: Annotated[bool, "Re-create an output dataset that is gone from the catalog."] = False,
    force: Annotated[bool, "Retry the task even if none of the files is found lost."] = False,
    reproduce_parent: Annotated[
        bool, "Also re-produce the inputs of the lost files in the parent task."
    ] = False,
    reproduce_upto_nth_gen: Annotated[
        int, "Walk up this many parent generations (0: see reproduce_parent)."
    ] = 0,
) -> Reply:
    """Ask for lost output files of a task to be produced again.

    The request is stored and worked through by the recovery agent; ``data.logFileURL`` is the JEDI
    log where the agent writes what it does.
    """
    name = file_recovery.log_file_name()
    request = file_recovery.RecoveryRequest(
        task_id=task_id,
        dataset=dataset,
        files=files,
        dry_run=bool(dry_run),
        no_child_retry=no_child_retry,
        resurrect_datasets=resurrect_datasets,
        force=force,
        reproduce_parent=reproduce_parent,
        reproduce_upto_nth_gen=reproduce_upto_nth_gen,
    )
    settings = call.state.settings
    await file_recovery.accept(
        call.db,
        call.state.clock,
        request,
        log_name=name,
        requester=call.caller.user_name,
        requester_dn=call.caller.dn,
        production=has_production_role(call.caller, settings.production_dns),
    )
    try:
        # The log exists (empty) as soon as the client may read its URL.
        file_recovery.append_jedilog(settings, name, [])
    except OSError as exc:
        return failure(f"cannot put request due to {exc} ")
    call.on_commit.append(lambda: call.state.wake("file_recovery"))
    return Reply(
        message=file_recovery.ACCEPTED_MESSAGE, data={"logFileURL": file_recovery.log_url(settings, name)}
    )


@file_server.endpoint(method="POST", db=DbUse.WRITE)
async def upload_event_picking_request(
    call: Call,
    run_event_list: Annotated[str, "Lines 'run event' ('run event guid' with include_guids)."] = "",
    data_type: PickText = "",
    stream_name: PickText = "",
    dataset_name: PickText = "",
    ami_tag: PickText = "",
    user_dataset_name: PickText = "",
    locked_by: PickText = "",
    parameters: PickText = "",
    input_file_list: PickText = "",
    n_sites: PickText = "",
    user_task_name: PickText = "",
    ei_api: PickText = "",
    include_guids: Annotated[bool, "Each line names the file's GUID too."] = False,
) -> Reply:
    """Ask for a task over the files holding the picked events; an agent finds them and submits it."""
    declared = call.request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        return failure(event_picking.NO_CONTENT_LENGTH)
    if int(declared) > event_picking.MAX_LIST_BYTES:
        return failure(event_picking.size_refusal(int(declared)))
    params = {
        "run_event_list": run_event_list,
        "data_type": data_type,
        "stream_name": stream_name,
        "dataset_name": dataset_name,
        "ami_tag": ami_tag,
        "user_dataset_name": user_dataset_name,
        "locked_by": locked_by,
        "parameters": parameters,
        "input_file_list": input_file_list,
        "n_sites": n_sites,
        "user_task_name": user_task_name,
        "ei_api": ei_api,
        "include_guids": include_guids,
    }
    await event_picking.accept(
        call.db,
        call.state.clock,
        call.caller,
        params,
        production=has_production_role(call.caller, call.state.settings.production_dns),
    )
    call.on_commit.append(lambda: call.state.wake("event_picking"))
    return Reply()


@file_server.endpoint(method="POST", db=DbUse.WRITE)
async def upload_workflow_request(
    call: Call,
    data: Annotated[str, "The workflow request as JSON text (the step format of docs/architecture.md)."],
    dry_run: Annotated[
        bool, "Only check the request: data = the validation result; nothing is stored."
    ] = False,
    sync: Annotated[bool, "Process it now: data = the workflow id, status and the tasks created."] = False,
) -> Reply:
    """Store a workflow request for the workflow agent, or check or process it at once.

    Without ``sync`` or ``dry_run`` the answer is ``The request was accepted and will be processed
    in a few minutes`` with ``data`` = ``{"workflow_id"}``.
    """
    production = has_production_role(call.caller, call.state.settings.production_dns)
    result = await workflows.upload_request(
        call.db, call.state.clock, call.caller, data, production=production, dry_run=dry_run, sync=sync
    )
    if result.stored:
        call.on_commit.append(lambda: call.state.wake("workflow"))
        call.on_commit.append(lambda: call.state.wake("refiner"))
    return Reply(message=result.message, data=result.data)
