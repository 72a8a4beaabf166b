"""``/api/v1/idds/*``: the relay to iDDS (api-v1.md §2.12).

Behaviour lives in ``logic/idds.py``. iDDS's client is synchronous, so each call runs in a worker
thread and holds no database transaction. ``decode_idds_enum``, a helper upstream routes by
accident, is not an endpoint (DESIGN.md §9.10).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from bamboo.api.call import Call
from bamboo.api.envelope import Reply
from bamboo.api.registry import DbUse, Module
from bamboo.api.v1 import registry
from bamboo.logic import idds

idds_module = Module(registry, "idds")

JsonOutputs = Annotated[bool, "Ask iDDS for JSON outputs."]


@idds_module.endpoint(method="POST", db=DbUse.NONE)
async def relay_idds_command(
    call: Call,
    command_name: Annotated[str, "The iDDS client method, optionally '+<the configured iDDS URL>'."],
    args: Annotated[str | None, "JSON text of the positional arguments (a list)."] = None,
    kwargs: Annotated[
        str | None,
        'JSON text of the keyword arguments (an object); {"__idds_const__": "A.B"} names an iDDS constant.',
    ] = None,
    manager: Annotated[bool, "Call the method of iDDS's ClientManager instead of its Client."] = False,
    json_outputs: JsonOutputs = False,
) -> Reply:
    """Call an iDDS client method in the caller's name; ``data`` = what iDDS returned."""
    config = idds.IddsConfig.from_settings(call.state.settings)
    result = await asyncio.to_thread(
        idds.relay,
        config,
        call.caller.user_name,
        command_name,
        args,
        kwargs,
        manager=manager,
        json_outputs=json_outputs,
    )
    return Reply(data=result)


@idds_module.endpoint(method="POST", db=DbUse.NONE)
async def execute_idds_workflow_command(
    call: Call,
    command_name: Annotated[str, "get_status, or abort, suspend, resume, retry, finish (own requests)."],
    kwargs: Annotated[str | None, 'JSON text of the keyword arguments, e.g. {"request_id": 12}.'] = None,
    json_outputs: JsonOutputs = False,
) -> Reply:
    """Run a user command on an iDDS request; a dict answer with ``message`` gives (message, status)."""
    config = idds.IddsConfig.from_settings(call.state.settings)
    result = await asyncio.to_thread(
        idds.execute_workflow_command,
        config,
        call.caller.user_name,
        command_name,
        kwargs,
        json_outputs=json_outputs,
    )
    return Reply(message=result.message, data=result.data)
