"""``/api/v1/workflow/*``: workflow submission (api-v1.md §2.13).

Behaviour lives in ``logic/workflows.py``; the workflow agent (``agents/runner.py``) turns a stored
workflow into tasks.
"""

from __future__ import annotations

from typing import Annotated

from bamboo.api.call import Call
from bamboo.api.envelope import Reply
from bamboo.api.registry import DbUse, Module
from bamboo.api.v1 import registry
from bamboo.auth.identity import has_production_role
from bamboo.logic import workflows

workflow = Module(registry, "workflow")


@workflow.endpoint(method="POST", db=DbUse.WRITE)
async def submit_workflow_raw_request(
    call: Call,
    params: Annotated[dict | str, "The raw workflow request: an object, or its JSON text."],
) -> Reply:
    """Register a raw workflow request (label user, owned by the caller); ``data`` = ``{"workflow_id"}``.

    The request is stored with the caller's DN as ``user_dn``. The workflow agent runs it when it
    has ``steps`` (the format in docs/architecture.md, Workflows); otherwise it fails with the reason.
    """
    workflow_id = await workflows.submit_raw_request(call.db, call.state.clock, call.caller, params)
    call.on_commit.append(lambda: call.state.wake("workflow"))
    return Reply(data={"workflow_id": workflow_id})


@workflow.endpoint(method="POST", db=DbUse.WRITE)
async def submit_workflow(
    call: Call,
    workflow_definition: Annotated[
        dict, "The workflow: {workflow_name?, steps: [{name, task_params, depends_on?, input_from?}]}."
    ],
) -> Reply:
    """Register a workflow definition (label managed with the production role, else user).

    ``data`` = ``{"workflow_id"}``; the workflow agent checks the definition and submits its tasks.
    """
    production = has_production_role(call.caller, call.state.settings.production_dns)
    workflow_id = await workflows.submit_definition(
        call.db, call.state.clock, call.caller, workflow_definition, production=production
    )
    call.on_commit.append(lambda: call.state.wake("workflow"))
    return Reply(data={"workflow_id": workflow_id})
