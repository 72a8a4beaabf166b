"""The request pipeline of every ``/api/v1/<module>/<function>`` call (api-v1.md §1.3-1.5), and of
the legacy ``/server/panda/<method>`` calls, which run their v1 twin through it (``api/legacy.py``).

Order, as upstream: route lookup (403), credentials (403), ban list (403), body parsing (400),
then the endpoint's checks in the decorator order (secure, production, method, arguments, types),
each failing as an HTTP 200 envelope, then the handler inside its transaction.
"""

from __future__ import annotations

import logging
import uuid
import zlib
from collections.abc import Awaitable, Callable
from typing import IO, Any
from urllib.parse import parse_qsl

import orjson
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Message, Receive

from bamboo.api.auth import AuthenticationFailed, resolve_identity
from bamboo.api.call import Call
from bamboo.api.envelope import BareText, Reply, envelope_response, failure, plain_error, text_response
from bamboo.api.params import (
    ParameterError,
    bool_as_declared_int,
    check_text,
    check_type,
    coerce_query_value,
)
from bamboo.api.registry import Access, DbUse, Endpoint, Registry
from bamboo.api.state import ServerState
from bamboo.api.uploads import UploadRefused, read_multipart
from bamboo.auth.identity import Identity, has_production_role
from bamboo.config import Settings
from bamboo.db.engine import UNAVAILABLE_ERRORS
from bamboo.logic import commands
from bamboo.logic.errors import BambooError

log = logging.getLogger(__name__)

SECURE_REQUIRED = "SSL secure connection is required"
PRODUCTION_REQUIRED = "production or pilot role required"
NOT_TASK_OWNER = "not the task owner or no production role"
DATABASE_UNAVAILABLE = "database error in the PanDA server"
RETRY_AFTER_SECONDS = "5"
_VERSIONS = ("v1", "latest")  # latest is an alias of v1 (DESIGN §9.6)
# As many fields as Starlette's form parser takes from a form with a content type.
_MAX_FORM_FIELDS = 1000


class ClientGone(Exception):
    """The client hung up before its answer: the write is rolled back instead of committed."""


class BadRequest(Exception):
    """The body cannot be read as parameters: HTTP 400 (or 413) plain text."""

    def __init__(self, status_code: int, text: str) -> None:
        super().__init__(text)
        self.status_code = status_code
        self.text = text


def _route(registry: Registry, path: str) -> tuple[Endpoint | None, str]:
    segments = path.split("/")
    if len(segments) != 5 or segments[0] or segments[1] != "api":
        return None, ""
    _, _, version, module, function = segments
    if version not in _VERSIONS:
        return None, function
    return registry.lookup(module, function), function


async def dispatch(request: Request) -> Response:
    """Answer one API request; never raises."""
    endpoint, name = _route(request.app.state.registry, request.scope["path"])
    if endpoint is None:
        return plain_error(403, f"method {name} is forbidden")
    return await run_pipeline(request, endpoint, read_params=read_params, render=render_envelope)


def render_envelope(
    reply: Reply | BareText, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """The v1 answer: the envelope, or the bare text of the few endpoints that answer one."""
    if isinstance(reply, BareText):
        return text_response(reply)
    return envelope_response(reply, status_code=status_code, headers=headers)


ParamReader = Callable[[Request, Endpoint, Settings, list[IO[bytes]]], Awaitable[tuple[dict[str, Any], bool]]]
Renderer = Callable[..., Response]


async def run_pipeline(
    request: Request,
    endpoint: Endpoint,
    *,
    read_params: ParamReader,
    render: Renderer,
    check_http_method: bool = True,
) -> Response:
    """Run the endpoint's checks and handler in upstream's order; never raises.

    ``read_params`` turns the request into the endpoint's parameters (the v1 decoding, or the
    legacy API's, which renames wire names first); ``render`` turns the handler's reply, or a
    refusal as a failed reply, into the HTTP answer; the legacy API, whose methods took GET and
    POST alike, skips the endpoint's HTTP method check. Credentials, bans, body limits, access
    levels, argument checks and the transaction are the same for every caller of the pipeline.
    """
    state: ServerState = request.app.state.bamboo
    try:
        identity = await resolve_identity(request, state)
        if identity is not None and identity.user_name in await state.bans.names():
            return plain_error(403, f"{identity.user_name} is banned")
        spooled: list[IO[bytes]] = []
        try:
            params, textual = await read_params(request, endpoint, state.settings, spooled)
            rejection = _check_access(endpoint, request.method, identity, state, check_http_method)
            if rejection is None:
                call_args = bind_parameters(endpoint, params, textual=textual)
                return await _run(endpoint, Call(request, state, identity), call_args, render)
            return render(failure(rejection))
        finally:
            # Uploaded parts live in temporary files: gone once the call is answered.
            for spooled_file in spooled:
                spooled_file.close()
    except AuthenticationFailed as exc:
        return plain_error(403, str(exc))
    except BadRequest as exc:
        return plain_error(exc.status_code, exc.text)
    except ParameterError as exc:
        return render(failure(str(exc)))
    except UNAVAILABLE_ERRORS as exc:
        log.error("database unavailable for %s: %s", request.scope["path"], exc)
        return render(
            failure(DATABASE_UNAVAILABLE), status_code=503, headers={"Retry-After": RETRY_AFTER_SECONDS}
        )
    except Exception:
        request_id = uuid.uuid4().hex[:12]
        log.exception("unexpected error in %s (request %s)", request.scope["path"], request_id)
        return plain_error(500, f"internal server error (request {request_id})")


def _check_access(
    endpoint: Endpoint,
    method: str,
    identity: Identity | None,
    state: ServerState,
    check_http_method: bool = True,
) -> str | None:
    if endpoint.access is not Access.PUBLIC and (identity is None or identity.is_limited_proxy):
        return SECURE_REQUIRED
    if endpoint.access is Access.PRODUCTION and not has_production_role(
        identity,  # type: ignore[arg-type]
        state.settings.production_dns,
    ):
        return PRODUCTION_REQUIRED
    if check_http_method and endpoint.method is not None and _effective_method(method) != endpoint.method:
        return f"expecting {endpoint.method}, received {method}"
    return None


def _effective_method(method: str) -> str:
    return "GET" if method == "HEAD" else method


def bind_parameters(endpoint: Endpoint, params: dict[str, Any], *, textual: bool) -> dict[str, Any]:
    """Check and convert the parameters; extra ones are passed through only where declared.

    ``textual`` parameters (query string, form fields) are strings and get PanDA's GET coercion.
    Upstream coerces only GET; we coerce form values too, so form-encoded POSTs of typed
    parameters work instead of failing every type check.
    """
    declared = {param.name for param in endpoint.params}
    for param in endpoint.params:
        if param.required and param.name not in params:
            raise ParameterError(f"Argument error: missing a required argument: '{param.name}'")
    extra = {key: value for key, value in params.items() if key not in declared}
    if extra and (not endpoint.accepts_extra or "call" in extra):
        unexpected = "call" if endpoint.accepts_extra else next(iter(extra))
        raise ParameterError(f"Argument error: got an unexpected keyword argument '{unexpected}'")
    for key, value in params.items():
        check_text(key, value, textual=textual)
    bound: dict[str, Any] = dict(extra)
    for param in endpoint.params:
        if param.name not in params:
            continue
        value = params[param.name]
        if textual and not isinstance(value, UploadFile):
            value = coerce_query_value(param.name, value, param.type, param.default)
            # A coerced literal may spell a NUL as an escape the raw text did not show.
            check_text(param.name, value, textual=False)
        value = check_type(param.name, value, param.type, param.default)
        bound[param.name] = bool_as_declared_int(value, param.type)
    return bound


async def _run(endpoint: Endpoint, call: Call, args: dict[str, Any], render: Renderer) -> Response:
    try:
        if endpoint.db is DbUse.NONE:
            reply: Reply | BareText = await endpoint.handler(call, **args)
        else:
            writes = endpoint.db is DbUse.WRITE
            async with call.state.db.transaction(write=writes) as conn:
                call.conn = conn
                if endpoint.access is Access.OWNER and not await _owns_task(call, args.get("task_id")):
                    return render(failure(NOT_TASK_OWNER))
                reply = await endpoint.handler(call, **args)
                # An answer nobody will read must not change anything: jobs acquire_jobs claimed
                # for a pilot that hung up would otherwise stay `sent` until the watchdog fails
                # them. Checked last, just before the commit; a hang-up after this point is the
                # case the `sent` watchdog recovers.
                if writes and await call.request.is_disconnected():
                    raise ClientGone
    except BambooError as exc:
        return render(failure(exc.message, exc.data))
    except ClientGone:
        log.info("client hung up before the answer of %s: rolled back", endpoint.path)
        return plain_error(400, "client disconnected before the answer; nothing was changed")
    for action in call.on_commit:
        action()
    return render(reply)


async def _owns_task(call: Call, task_id: Any) -> bool:
    """The task-owner rule (api-v1.md §1.8): production role, or the caller's own task."""
    if not task_id:
        return True
    if has_production_role(call.caller, call.state.settings.production_dns):
        return True
    return await commands.task_owner(call.db, int(task_id)) == call.caller.user_name


async def read_params(
    request: Request, endpoint: Endpoint, settings: Settings, spooled: list[IO[bytes]]
) -> tuple[dict[str, Any], bool]:
    """The request's parameters, and whether they arrived as text (query or form) to be coerced.

    Files of multipart bodies are appended to ``spooled`` for the caller to close.
    """
    method = request.method
    if method in ("GET", "HEAD"):
        return _query_params(request.scope["query_string"]), True
    limit = settings.max_body_bytes
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if endpoint.max_body_bytes is not None and media_type == "multipart/form-data":
        return await _read_upload(request, content_type, endpoint.max_body_bytes, settings, spooled), True
    if media_type == "application/json":
        body = await read_body(request, limit)
        if request.headers.get("content-encoding", "").lower() == "gzip":
            body = gunzip(body, limit)
        if not body.strip():
            return {}, False
        try:
            decoded = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(400, f"received invalid JSON : {exc}") from exc
        if not isinstance(decoded, dict):
            raise BadRequest(400, "received invalid JSON : the body must be a JSON object")
        return decoded, False
    if not media_type:
        # Upstream's form parser reads a POST body without a content type as a URL-encoded form
        # (panda-client 2.2.0 sends submit_workflow_tmp so).
        return _form_fields(await read_body(request, limit)), True
    _check_declared_length(request, limit)
    # Count the bytes as they arrive: a chunked body has no Content-Length to refuse up front.
    # The per-field limit is checked by name in bind_parameters, so the parser allows any part
    # the body limit allows.
    limited = Request(request.scope, _limited_receive(request.receive, limit))
    try:
        form = await limited.form(max_part_size=limit)
    except (HTTPException, MultiPartException) as exc:
        detail = exc.detail if isinstance(exc, HTTPException) else exc.message
        raise BadRequest(400, f"received invalid form data : {detail}") from exc
    except ClientDisconnect as exc:
        raise BadRequest(400, "client disconnected while sending the body") from exc
    params: dict[str, Any] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            spooled.append(value.file)
        # Upstream keeps the first of repeated form fields.
        params.setdefault(key, value if isinstance(value, UploadFile | str) else str(value))
    return params, True


async def _read_upload(
    request: Request, content_type: str, limit: int, settings: Settings, spooled: list[IO[bytes]]
) -> dict[str, Any]:
    """An upload endpoint's multipart body, its file parts streamed to the upload directory."""
    _check_declared_length(request, limit)
    limited = Request(request.scope, _limited_receive(request.receive, limit))
    try:
        fields, files = await read_multipart(content_type, limited.stream(), settings.upload_temp_path)
    except UploadRefused as exc:
        raise BadRequest(400, f"received invalid form data : {exc}") from exc
    except ClientDisconnect as exc:
        raise BadRequest(400, "client disconnected while sending the body") from exc
    spooled.extend(files)
    params: dict[str, Any] = {}
    for key, value in fields:
        params.setdefault(key, value)
    return params


def _query_params(query_string: bytes) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if key in params:
            existing = params[key]
            params[key] = [*existing, value] if isinstance(existing, list) else [existing, value]
        else:
            params[key] = value
    return params


def _form_fields(body: bytes) -> dict[str, str]:
    """A URL-encoded form's fields, the first of repeated ones kept as upstream keeps it."""
    try:
        pairs = parse_qsl(body.decode("latin-1"), keep_blank_values=True, max_num_fields=_MAX_FORM_FIELDS)
    except ValueError as exc:
        raise BadRequest(400, f"received invalid form data : {exc}") from exc
    fields: dict[str, str] = {}
    for key, value in pairs:
        fields.setdefault(key, value)
    return fields


def _check_declared_length(request: Request, limit: int) -> None:
    declared_length = request.headers.get("content-length")
    if declared_length and declared_length.isdigit() and int(declared_length) > limit:
        raise BadRequest(413, f"request body larger than {limit} bytes")


def _limited_receive(receive: Receive, limit: int) -> Receive:
    """``receive`` that fails with 413 once the body passes ``limit`` bytes."""
    size = 0

    async def limited() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise BadRequest(413, f"request body larger than {limit} bytes")
        return message

    return limited


async def read_body(request: Request, limit: int) -> bytes:
    _check_declared_length(request, limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest(413, f"request body larger than {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise BadRequest(400, "client disconnected while sending the body") from exc
    return b"".join(chunks)


def gunzip(body: bytes, limit: int) -> bytes:
    # Decompress incrementally so a small gzip bomb cannot expand past the body limit.
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(400, f"received invalid JSON : bad gzip body ({exc})") from exc
    if len(data) > limit:
        raise BadRequest(413, f"request body larger than {limit} bytes")
    return data
