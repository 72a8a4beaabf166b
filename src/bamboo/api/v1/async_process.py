"""``/api/v1/async_process/*``: work run on the server's own processes (api-v1.md §2.14).

Behaviour lives in ``logic/async_requests.py`` (requests, results, the agent that runs them) and
``logic/machines.py`` (the live processes requests go to). The grep allow-list is the setting
``allow_async_request``, read directly, so upstream's "authorization cache not ready" never occurs.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from bamboo.api.call import Call
from bamboo.api.envelope import Reply
from bamboo.api.registry import Access, DbUse, Module
from bamboo.api.v1 import registry
from bamboo.auth.identity import has_production_role
from bamboo.logic import async_requests

async_process = Module(registry, "async_process")


def _alive_for(call: Call) -> timedelta:
    return timedelta(seconds=call.state.settings.machine_alive_seconds)


def _wake_agent(call: Call) -> None:
    call.on_commit.append(lambda: call.state.wake(async_requests.AGENT))


@async_process.endpoint(method="POST", db=DbUse.WRITE)
async def submit_grep_request(
    call: Call,
    pattern: Annotated[
        str,
        f"RE2 regular expression (no back-references or look-arounds), at most "
        f"{async_requests.MAX_PATTERN_CHARS} characters.",
    ],
    log_filename: Annotated[str, "A file name panda-*.log or panda-*.gz of the log directory, no path."],
    service_name: Annotated[
        str | None, "Search on every live machine of this service (bamboo-server, bamboo-agents)."
    ] = None,
    machine_name: Annotated[str | None, "Search on this one machine only."] = None,
) -> Reply:
    """Search a log file on the server's machines; ``data`` = ``{"request_id": <uuid>}``.

    Only callers in the ``allow_async_request`` setting may; exactly one of service_name and
    machine_name is given. The results are for the requester only (get_result).
    """
    request_id = await async_requests.submit_grep(
        call.db,
        call.state.clock,
        requester=call.caller.user_name,
        allowed=call.state.settings.allow_async_request,
        pattern=pattern,
        log_filename=log_filename,
        service_name=service_name,
        machine_name=machine_name,
        alive_for=_alive_for(call),
    )
    _wake_agent(call)
    return Reply(data={"request_id": request_id})


@async_process.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def submit_sleep_echo_request(
    call: Call,
    service_name: Annotated[str, "The service one of whose live machines runs it."],
    message: Annotated[
        str, f"Text the result echoes, at most {async_requests.MAX_MESSAGE_CHARS} characters."
    ],
    seconds: Annotated[int, f"How long to sleep first, 0 to {async_requests.MAX_SECONDS}."] = 10,
) -> Reply:
    """Sleep, then echo the message, on any one live machine of a service; ``data`` = ``{"request_id"}``.

    The results are readable by the requester and by production callers.
    """
    request_id = await async_requests.submit_sleep_echo(
        call.db,
        call.state.clock,
        requester=call.caller.user_name,
        service_name=service_name,
        message=message,
        seconds=seconds,
        alive_for=_alive_for(call),
    )
    _wake_agent(call)
    return Reply(data={"request_id": request_id})


@async_process.endpoint(method="GET")
async def get_result(
    call: Call, request_id: Annotated[str, "What submit_grep_request or submit_sleep_echo_request answered."]
) -> Reply:
    """The results so far: ``overall_status`` (complete once every expected machine is done or failed),
    ``expected_machines`` and one result row per machine."""
    caller = call.caller
    data = await async_requests.read_result(
        call.db,
        request_id=request_id,
        reader=caller.user_name,
        reader_is_production=has_production_role(caller, call.state.settings.production_dns),
    )
    return Reply(data=data)
