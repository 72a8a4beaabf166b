"""The relay to iDDS (api-v1.md §2.12): iDDS client calls made in the caller's name.

The calls go through the ``idds-client`` package to the one iDDS server the settings name
(``idds_url``), authenticated as this server (an X.509 proxy or an OIDC token file), with the
caller's compact user name as iDDS's "original user". The client is synchronous (``requests``):
the functions here block and the API runs them in a worker thread.

Only iDDS calls that act on the iDDS server are relayed. The client's helpers that read or write
files on this machine (uploads from and downloads to local paths, local configuration), handle
its credentials, set the original user, or send a request to an arbitrary URL are not commands a
caller may run, and neither is a host other than the configured one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from idds.client.client import Client
from idds.common import constants as idds_constants
from idds.common.utils import json_dumps

from bamboo.config import Settings
from bamboo.logic.errors import BambooError

if TYPE_CHECKING:
    from idds.client.clientmanager import ClientManager

NOT_CONFIGURED = "iDDS is not configured"
CONSTANT_KEY = "__idds_const__"
MAX_ARGUMENT_CHARS = 1024 * 1024

# Client and ClientManager methods that call the iDDS REST API and nothing else.
CLIENT_COMMANDS = frozenset(
    {
        "abort_request",
        "abort_request_task",
        "add_request",
        "add_transform",
        "adjust_worker",
        "close_request",
        "close_workflow_task",
        "create_workflow_task",
        "get_collections",
        "get_contents",
        "get_contents_output_ext",
        "get_hyperparameters",
        "get_match_contents",
        "get_messages",
        "get_metainfo",
        "get_request_id_by_name",
        "get_requests",
        "get_transform",
        "get_transforms",
        "ping",
        "register_contents",
        "retry_request",
        "send_messages",
        "update_build_request",
        "update_hyperparameter",
        "update_request",
    }
)
MANAGER_COMMANDS = frozenset(
    {
        "abort",
        "abort_task",
        "adjust_worker",
        "close",
        "close_workflow_task",
        "create_workflow_task",
        "get_collections",
        "get_contents",
        "get_contents_output_ext",
        "get_hyperparameters",
        "get_messages",
        "get_metainfo",
        "get_request_id_by_name",
        "get_requests",
        "get_status",
        "get_transform",
        "get_transforms",
        "ping",
        "retry",
        "send_messages",
        "submit",
        "submit_build",
        "submit_work",
        "update_build_request",
        "update_hyperparameter",
    }
)
# execute_idds_workflow_command: get_status reads; the others change a request, so its owner only.
WORKFLOW_READ_COMMANDS = frozenset({"get_status"})
WORKFLOW_OWNER_COMMANDS = frozenset({"abort", "suspend", "resume", "retry", "finish"})


@dataclass(frozen=True)
class IddsConfig:
    """Where iDDS is and how this server authenticates to it."""

    url: str
    auth_type: str
    x509_proxy: Path | None
    oidc_token_file: Path | None
    vo: str
    timeout_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> IddsConfig:
        return cls(
            url=settings.idds_url.rstrip("/"),
            auth_type=settings.idds_auth_type,
            x509_proxy=settings.idds_x509_proxy,
            oidc_token_file=settings.idds_oidc_token_file,
            vo=settings.idds_vo,
            timeout_seconds=settings.idds_timeout_seconds,
        )


def _client(config: IddsConfig, user_name: str, json_outputs: bool) -> Client:
    if not config.url:
        raise BambooError(NOT_CONFIGURED)
    client = Client(
        host=config.url,
        auth={
            "auth_type": config.auth_type,
            "client_proxy": str(config.x509_proxy) if config.x509_proxy else None,
            "oidc_token_file": str(config.oidc_token_file) if config.oidc_token_file else None,
            "vo": config.vo or None,
        },
        timeout=config.timeout_seconds,
    )
    # The client would retry a refused connection after sleeping up to 30 s; the caller can retry.
    client.retries = 1
    client.set_original_user(user_name=user_name)
    if json_outputs:
        client.enable_json_outputs()
    return client


def _manager_class() -> type[ClientManager]:
    # Importing iDDS's clientmanager module calls logging.basicConfig (a stdout handler on the root
    # logger). Imported on first use, after the server has set up its logging, that call does nothing.
    from idds.client.clientmanager import ClientManager

    return ClientManager


def _manager(config: IddsConfig, user_name: str, json_outputs: bool) -> ClientManager:
    manager = _manager_class()(host=config.url, timeout=config.timeout_seconds)
    # Given its client, the manager does not build one from the local iDDS configuration files.
    manager.client = _client(config, user_name, json_outputs)
    return manager


def _plain(value: Any) -> Any:
    """iDDS results as plain JSON values (its enums and classes encoded as iDDS encodes them)."""
    return orjson.loads(json_dumps(value))


def _decode_json(text: str | None, expected: type, label: str) -> Any:
    if text is None:
        return expected()
    if len(text) > MAX_ARGUMENT_CHARS:
        raise ValueError(f"{label} is longer than {MAX_ARGUMENT_CHARS} characters")
    decoded = orjson.loads(text)
    if not isinstance(decoded, expected):
        raise ValueError(f"{label} must be a JSON {'list' if expected is list else 'object'}")
    return decoded


def _constant(path: Any) -> Any:
    """``{"__idds_const__": "RequestStatus.Finished"}`` -> the member of iDDS's enum."""
    parts = path.split(".") if isinstance(path, str) else []
    if len(parts) == 2:
        holder = getattr(idds_constants, parts[0], None)
        if isinstance(holder, type) and issubclass(holder, enum.Enum) and parts[1] in holder.__members__:
            return holder[parts[1]]
    raise ValueError(f"{path!r} is not an iDDS constant")


def _decode_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {
        key: _constant(value[CONSTANT_KEY])
        if isinstance(value, dict) and set(value) == {CONSTANT_KEY}
        else value
        for key, value in kwargs.items()
    }


def relay(
    config: IddsConfig,
    user_name: str,
    command_name: str,
    args: str | None,
    kwargs: str | None,
    *,
    manager: bool,
    json_outputs: bool,
) -> Any:
    """idds/relay_idds_command: call one iDDS client method as the caller; returns its result.

    Raises:
        BambooError: iDDS is not configured, the command is not one of the client class, another
            iDDS host is named, or the call failed (``failed to execute command with <err>``).
    """
    name, _, host = command_name.partition("+")
    class_name = "ClientManager" if manager else "Client"
    commands = MANAGER_COMMANDS if manager else CLIENT_COMMANDS
    target = _manager_class() if manager else Client
    if name not in commands or not callable(getattr(target, name, None)):
        raise BambooError(f"{name} is not a command of iDDS {class_name}")
    if not config.url:
        raise BambooError(NOT_CONFIGURED)
    if host and host.rstrip("/") != config.url:
        raise BambooError(f"failed to execute command with iDDS host {host} is not the configured iDDS")
    try:
        positional = _decode_json(args, list, "args")
        keywords = _decode_kwargs(_decode_json(kwargs, dict, "kwargs"))
        instance = (
            _manager(config, user_name, json_outputs) if manager else _client(config, user_name, json_outputs)
        )
        return _plain(getattr(instance, name)(*positional, **keywords))
    except Exception as exc:
        raise BambooError(f"failed to execute command with {exc}") from exc


@dataclass(frozen=True)
class WorkflowCommandResult:
    message: str
    data: Any


def execute_workflow_command(
    config: IddsConfig, user_name: str, command_name: str, kwargs: str | None, *, json_outputs: bool
) -> WorkflowCommandResult:
    """idds/execute_idds_workflow_command: a user command on an iDDS request.

    A command that changes a request needs ``kwargs.request_id`` naming a request of the caller.

    Raises:
        BambooError: with the messages of api-v1.md §2.12.
    """
    if command_name not in WORKFLOW_READ_COMMANDS | WORKFLOW_OWNER_COMMANDS:
        raise BambooError(f"{command_name} is unsupported")
    if not config.url:
        raise BambooError(NOT_CONFIGURED)
    try:
        keywords = _decode_json(kwargs, dict, "kwargs")
    except ValueError as exc:
        raise BambooError(f"server failed with {exc}") from exc
    manager = _manager(config, user_name, json_outputs)
    if command_name in WORKFLOW_OWNER_COMMANDS:
        request_id = keywords.get("request_id")
        if request_id is None:
            raise BambooError("request_id is missing")
        # The id becomes part of the iDDS URL path: a number, nothing else.
        if isinstance(request_id, bool) or not isinstance(request_id, int):
            raise BambooError("server failed with request_id must be an integer")
        found = manager.get_requests(request_id=request_id)
        if isinstance(found, tuple):
            # The manager answers (False, reason) when the call failed.
            raise BambooError(f"server failed with {found[1] if len(found) > 1 else found}")
        if not found:
            raise BambooError(f"request {request_id} is not found")
        owner = found[0].get("username") if isinstance(found[0], dict) else None
        if owner and owner != user_name:
            raise BambooError(f"request {request_id} is not owned by {user_name}")
    command = getattr(manager, command_name, None)
    if command is None:
        raise BambooError(f"server failed with the installed iDDS client has no {command_name} command")
    try:
        result = _plain(command(**keywords))
    except Exception as exc:
        raise BambooError(f"server failed with {exc}") from exc
    if isinstance(result, dict) and "message" in result:
        return WorkflowCommandResult(message=result["message"], data=result.get("status"))
    return WorkflowCommandResult(message="", data=result)
