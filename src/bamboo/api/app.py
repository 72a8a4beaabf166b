"""The ASGI application: the API dispatcher plus the few non-API routes clients need."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import formatdate, parsedate_to_datetime

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Route

from bamboo import __version__, trf
from bamboo.api import v1
from bamboo.api.dispatch import dispatch
from bamboo.api.envelope import JSON_MEDIA_TYPE, encode_json, plain_error
from bamboo.api.legacy import check_twins, dispatch_legacy
from bamboo.api.openapi import docs_page, openapi_document
from bamboo.api.schedconfig import serve_schedconfig
from bamboo.api.state import ServerState
from bamboo.logic import files
from bamboo.storage import UnsafeName, check_name, file_store

_AUTH_CONFIG_NAME = re.compile(r"^([A-Za-z0-9_.:\-]{1,64})_auth_config\.json$")


async def _plain_http_error(_: Request, exc: HTTPException) -> Response:
    """Routing refusals (unknown path, unsupported HTTP method) as upstream's plain text, not FastAPI JSON."""
    response = plain_error(exc.status_code, exc.detail)
    response.headers.update(exc.headers or {})
    return response


def _content_type(name: str) -> str:
    """The type of a served cache file; never a Content-Encoding: a .tar.gz is sent as its bytes."""
    base = name.rsplit("/", 1)[-1]
    if name.startswith(f"{files.JEDI_LOG_AREA}/") or base.endswith((".log", ".out", ".txt")):
        return "text/plain; charset=utf-8"
    if base.endswith(".json"):
        return JSON_MEDIA_TYPE
    if base.endswith((".gz", ".tgz")):
        return "application/gzip"
    if base.endswith(".tar"):
        return "application/x-tar"
    return "application/octet-stream"


class _Unsatisfiable(Exception):
    """A Range header none of whose bytes the file has: 416."""


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The one range (start, end exclusive) a ``Range`` header asks for; None to send everything.

    Only single ranges are served as 206; several ranges, or units and syntax we do not read, get
    the whole file as 200, which RFC 9110 allows.
    """
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    well_formed = dash and (first or last) and all(part.isdigit() for part in (first, last) if part)
    if not well_formed:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise _Unsatisfiable
        return max(0, size - suffix), size
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if last and int(last) < start:
        return None
    if start >= size:
        raise _Unsatisfiable
    return start, end


def _not_modified(request: Request, etag: str, modified: datetime) -> bool:
    candidates = request.headers.get("if-none-match")
    if candidates is not None:
        tags = {tag.strip().removeprefix("W/") for tag in candidates.split(",")}
        return "*" in tags or etag in tags
    since = request.headers.get("if-modified-since")
    if since is None:
        return False
    try:
        moment = parsedate_to_datetime(since)
    except (TypeError, ValueError):
        return False
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return modified.replace(microsecond=0) <= moment


async def _serve_cache_file(request: Request) -> Response:
    """A file of the cache, as clients fetch sandboxes, logs and checkpoints: plain GET/HEAD, no
    credentials (as upstream's web server), with ranges and validators."""
    name = request.path_params["name"]
    try:
        check_name(name)
    except UnsafeName:
        return plain_error(404, "no such file")
    opened = await file_store(request.app.state.bamboo.settings).open(name)
    if opened is None:
        return plain_error(404, "no such file")
    info = opened.info
    etag = f'"{info.size:x}-{int(info.modified.timestamp() * 1_000_000):x}"'
    headers = {
        "ETag": etag,
        "Last-Modified": formatdate(info.modified.timestamp(), usegmt=True),
        "Accept-Ranges": "bytes",
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
    }
    start, end, status = 0, info.size, 200
    try:
        if _not_modified(request, etag, info.modified):
            await opened.close()
            return Response(status_code=304, headers=headers)
        if_range = request.headers.get("if-range")
        requested = request.headers.get("range")
        if requested and (if_range is None or if_range.strip() == etag):
            chosen = _byte_range(requested, info.size)
            if chosen is not None:
                (start, end), status = chosen, 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
    except _Unsatisfiable:
        await opened.close()
        headers["Content-Range"] = f"bytes */{info.size}"
        return _plain_error_with(416, "requested range not satisfiable", headers)
    headers["Content-Length"] = str(end - start)
    media_type = _content_type(name)
    if request.method == "HEAD":
        await opened.close()
        return Response(status_code=status, headers=headers, media_type=media_type)

    async def body() -> AsyncIterator[bytes]:
        try:
            async for piece in opened.chunks(start, end):
                yield piece
        finally:
            await opened.close()

    return StreamingResponse(body(), status_code=status, headers=headers, media_type=media_type)


# The scripts change only with a new release: caches may keep them for an hour without asking again.
_TRF_CACHE_CONTROL = "public, max-age=3600"


def _transformation_route() -> Route:
    """``/trf/user/<name>``: the transformations user jobs download (bamboo/trf), to anyone, as
    upstream's web server serves its directory of scripts."""
    served = {
        name: (body, f'"{hashlib.sha256(body).hexdigest()[:32]}"') for name, body in trf.scripts().items()
    }

    async def transformation(request: Request) -> Response:
        found = served.get(request.path_params["name"])
        if found is None:
            return plain_error(404, "no such transformation")
        body, etag = found
        headers = {"ETag": etag, "Cache-Control": _TRF_CACHE_CONTROL, "X-Content-Type-Options": "nosniff"}
        candidates = request.headers.get("if-none-match")
        if candidates is not None and etag in {
            tag.strip().removeprefix("W/") for tag in candidates.split(",")
        }:
            return Response(status_code=304, headers=headers)
        content = b"" if request.method == "HEAD" else body
        headers["Content-Length"] = str(len(body))
        return Response(content, headers=headers, media_type="text/x-python; charset=utf-8")

    return Route(trf.URL_PATH + "/{name}", transformation, methods=["GET", "HEAD"])


def _plain_error_with(status_code: int, text: str, headers: dict[str, str]) -> Response:
    response = plain_error(status_code, text)
    response.headers.update(headers)
    return response


def create_app(state: ServerState) -> FastAPI:
    """Build the application around already started services."""
    registry = v1.load()
    check_twins(registry)
    openapi_body = encode_json(openapi_document(registry))
    docs_body = docs_page(registry)

    async def openapi(_: Request) -> Response:
        return Response(openapi_body, media_type=JSON_MEDIA_TYPE)

    async def docs(_: Request) -> Response:
        return HTMLResponse(docs_body)

    async def auth_config(request: Request) -> Response:
        match = _AUTH_CONFIG_NAME.match(request.path_params["name"])
        # "<vo>:<role>" is the other spelling of "<vo>.<role>" (clients.md §6.2).
        config = state.auth_configs.get(match.group(1).replace(":", ".")) if match else None
        if config is None:
            return plain_error(404, "no such auth config")
        return Response(encode_json(config), media_type=JSON_MEDIA_TYPE)

    async def discovery(_: Request) -> Response:
        return Response(encode_json(state.issuer.discovery_document()), media_type=JSON_MEDIA_TYPE)

    async def jwks(_: Request) -> Response:
        return Response(encode_json(state.issuer.jwks()), media_type=JSON_MEDIA_TYPE)

    app = FastAPI(
        title="Bamboo",
        version=__version__,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        exception_handlers={HTTPException: _plain_http_error},
        routes=[
            Route("/api/{rest:path}", dispatch, methods=["GET", "HEAD", "POST", "PUT"]),
            Route("/server/panda/{method}", dispatch_legacy, methods=["GET", "HEAD", "POST", "PUT"]),
            Route("/openapi.json", openapi, methods=["GET"]),
            Route("/docs", docs, methods=["GET"]),
            Route("/auth/{name}", auth_config, methods=["GET"]),
            Route("/cache/schedconfig/{name}", serve_schedconfig, methods=["GET"]),
            Route("/cache/{name:path}", _serve_cache_file, methods=["GET", "HEAD"]),
            _transformation_route(),
            Route("/.well-known/openid-configuration", discovery, methods=["GET"]),
            Route("/.well-known/jwks.json", jwks, methods=["GET"]),
        ],
    )
    app.state.bamboo = state
    app.state.registry = registry
    return app
