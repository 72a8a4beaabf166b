"""``/api/v1/file_server/*``: uploads and the file cache (api-v1.md §2.6).

``upload_workflow_request`` lives in ``logic/workflows.py``.
"""

from __future__ import annotations

from typing import Annotated

from bamboo.api.call import Call
from bamboo.api.envelope import Reply
from bamboo.api.registry import DbUse, Module
from bamboo.api.v1 import registry
from bamboo.auth.identity import has_production_role
from bamboo.logic import workflows

file_server = Module(registry, "file_server")


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
