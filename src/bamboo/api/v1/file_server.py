"""``/api/v1/file_server/*``: the file cache and the requests worked through by agents (api-v1.md §2.6).

The user file cache, JEDI logs and HPO checkpoints live in ``logic/files.py``, their bytes in the
configured file store (``storage/``), served read-only under ``/cache/`` by ``api/app.py``; uploads
are multipart parts named ``file``, spooled to disk by the dispatcher, never held in memory.
Lost-file recovery requests live in ``logic/file_recovery.py``, event-picking requests in
``logic/event_picking.py``, workflow requests in ``logic/workflows.py``; each is a stored row that
an agent of ``agents/runner.py`` processes.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from starlette.datastructures import UploadFile

from bamboo.api.call import Call
from bamboo.api.envelope import BareText, Reply, failure
from bamboo.api.registry import Access, DbUse, Module
from bamboo.api.v1 import registry
from bamboo.auth.identity import has_production_role
from bamboo.logic import event_picking, file_recovery, workflows
from bamboo.logic import files as file_cache
from bamboo.storage import StorageError, file_store

file_server = Module(registry, "file_server")

UploadedFile = Annotated[Any, "The file: a multipart/form-data part named file, with its file name."]
_HOST_NAME = re.compile(r"[A-Za-z0-9.:\-]{1,253}")
NOT_A_FILE = "Type error: 'file' must be an uploaded file (a multipart part with a file name)."


def _upload(call: Call, part: Any) -> file_cache.Upload | None:
    if not isinstance(part, UploadFile) or part.filename is None:
        return None
    declared = call.request.headers.get("content-length", "")
    return file_cache.Upload(
        filename=part.filename,
        stream=part.file,
        size=part.size or 0,
        declared_length=int(declared) if declared.isdigit() else None,
    )


def _uploader(call: Call) -> file_cache.Uploader:
    settings = call.state.settings
    requested = call.request.url.hostname or ""
    # The Host header is the client's word: recorded only when it is a plausible host name.
    host = requested if _HOST_NAME.fullmatch(requested) else settings.server_hostnames[0]
    return file_cache.Uploader(
        user_name=call.caller.user_name,
        production=has_production_role(call.caller, settings.production_dns),
        host=settings.cache_host or host,
    )


def _base_url(call: Call) -> str:
    url = call.request.url
    return f"{url.scheme}://{url.netloc}"


@file_server.endpoint(
    method="POST",
    access=Access.PRODUCTION,
    db=DbUse.NONE,
    max_body_bytes=file_cache.JEDI_LOG_LIMIT + file_cache.MULTIPART_OVERHEAD,
)
async def upload_jedi_log(call: Call, file: UploadedFile) -> Reply:
    """Store a JEDI log as ``jedilog/<name>`` (replacing it); ``data`` is its URL under /cache/jedilog/."""
    upload = _upload(call, file)
    if upload is None:
        return failure(NOT_A_FILE)
    store = file_store(call.state.settings)
    return Reply(data=await file_cache.upload_jedi_log(store, upload, _base_url(call)))


@file_server.endpoint(
    method="POST",
    access=Access.PRODUCTION,
    db=DbUse.READ,
    max_body_bytes=file_cache.JEDI_LOG_LIMIT + file_cache.MULTIPART_OVERHEAD,
)
async def update_jedi_log(call: Call, file: UploadedFile) -> Reply:
    """Append a zlib-compressed piece to the log ``<name>`` in the cache (upstream always failed here).

    A log grows to 100 MB at most; a piece that would decompress past that is refused.
    """
    upload = _upload(call, file)
    if upload is None:
        return failure(NOT_A_FILE)
    settings = call.state.settings
    store = file_store(settings)
    await file_cache.update_jedi_log(call.db, store, upload, temp_dir=settings.upload_temp_path)
    return Reply()


@file_server.endpoint(method="GET", db=DbUse.NONE, answers_text=True)
async def download_jedi_log(
    call: Call,
    log_name: Annotated[str, "The log's file name (its directory part is ignored)."],
    offset: Annotated[int, "Byte offset to start from."] = 0,
) -> BareText:
    """The log's content from ``offset`` on, after one space, as a bare string; just a space when
    it cannot be read."""
    text = await file_cache.read_jedi_log(file_store(call.state.settings), log_name, offset)
    return BareText(" " + (text or ""))


@file_server.endpoint(
    method="POST",
    db=DbUse.WRITE,
    max_body_bytes=file_cache.LARGEST_UPLOAD + file_cache.MULTIPART_OVERHEAD,
)
async def upload_cache_file(call: Call, file: UploadedFile) -> Reply:
    """Store a user's cache file (sandbox) under its base name and register it for reuse.

    Limits: ``*.out`` 100 MB, ``sources.*`` 768 MB, other names 10 MB, and the per-user quota. An
    existing file is not overwritten (it is touched instead) unless the name ends with ``.__ow__``.
    """
    upload = _upload(call, file)
    if upload is None:
        return failure(NOT_A_FILE)
    settings = call.state.settings
    await file_cache.upload_cache_file(
        call.db,
        file_store(settings),
        call.state.clock,
        _uploader(call),
        upload,
        quota_bytes=settings.file_cache_user_quota_bytes,
    )
    return Reply()


@file_server.endpoint(method="POST", db=DbUse.NONE)
async def touch_cache_file(
    call: Call, file_name: Annotated[str, "The cache file's name (its directory part is ignored)."]
) -> Reply:
    """Mark a cache file as used now, so it does not expire for another full period."""
    await file_cache.touch_cache_file(file_store(call.state.settings), call.state.clock, file_name)
    return Reply()


@file_server.endpoint(method="POST", db=DbUse.WRITE)
async def delete_cache_file(
    call: Call, file_name: Annotated[str, "The name of one of the caller's registered cache file_cache."]
) -> Reply:
    """Delete one of the caller's own registered cache files (upstream ignores the call)."""
    store = file_store(call.state.settings)
    await file_cache.delete_cache_file(call.db, store, call.caller.user_name, file_name)
    return Reply()


@file_server.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def register_cache_file(
    call: Call,
    user_name: Annotated[str, "Compact user name of the file's owner."],
    file_name: Annotated[str, "The cache file's name."],
    file_size: Annotated[int, "Its size in bytes."],
    checksum: Annotated[str, "Its checksum (the gzip CRC32 as a decimal string)."],
) -> Reply:
    """Register a cache file for reuse; ``WARNING: file exist`` when it is registered already."""
    await file_cache.register_cache_file(
        call.db,
        call.state.clock,
        host=_uploader(call).host,
        user_name=user_name,
        file_name=file_name,
        file_size=file_size,
        checksum=checksum,
    )
    return Reply()


@file_server.endpoint(method="POST", db=DbUse.READ)
async def validate_cache_file(
    call: Call,
    file_size: Annotated[int, "Size of the local file in bytes."],
    checksum: Annotated[int | str, "Its gzip CRC32 (the first little-endian uint32 of its last 8 bytes)."],
) -> Reply:
    """Whether the caller uploaded the same file within 3 days: ``FOUND:<host>:<name>`` to reuse it,
    else ``NOTFOUND``."""
    found = await file_cache.find_reusable_cache_file(
        call.db,
        file_store(call.state.settings),
        call.state.clock,
        user_name=call.caller.user_name,
        file_size=file_size,
        checksum=str(checksum),
    )
    if found is None:
        return failure("NOTFOUND")
    return Reply(message=found)


@file_server.endpoint(
    method="POST",
    db=DbUse.READ,
    max_body_bytes=file_cache.HPO_CHECKPOINT_LIMIT + file_cache.MULTIPART_OVERHEAD,
)
async def upload_hpo_checkpoint(call: Call, file: UploadedFile) -> Reply:
    """Store (replace) the checkpoint of an HPO point; the file name is ``<taskID>_<subID>``.

    Served as ``/cache/hpo_cp_<taskID>_<subID>``. Only the task's owner or the production role.
    """
    upload = _upload(call, file)
    if upload is None:
        return failure(NOT_A_FILE)
    store = file_store(call.state.settings)
    path = await file_cache.upload_hpo_checkpoint(call.db, store, _uploader(call), upload)
    return Reply(message=f"Successfully placed at {path}", data=path)


@file_server.endpoint(method="POST", db=DbUse.READ)
async def delete_hpo_checkpoint(
    call: Call,
    task_id: Annotated[str, "The task's jediTaskID."],
    sub_id: Annotated[str, "The HPO point's id."],
) -> Reply:
    """Delete the checkpoint of an HPO point (task owner or production role)."""
    store = file_store(call.state.settings)
    await file_cache.delete_hpo_checkpoint(call.db, store, _uploader(call), task_id, sub_id)
    return Reply()


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
        await file_recovery.append_jedilog(file_store(settings), name, [])
    except (OSError, StorageError) as exc:
        return failure(f"cannot put request due to {exc} ")
    call.on_commit.append(lambda: call.state.wake("file_recovery"))
    return Reply(
        message=file_recovery.ACCEPTED_MESSAGE,
        data={"logFileURL": file_recovery.log_url(_base_url(call), name)},
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
