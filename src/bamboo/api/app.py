"""The ASGI application: the API dispatcher plus the few non-API routes clients need."""

from __future__ import annotations

import re

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from bamboo import __version__
from bamboo.api import v1
from bamboo.api.dispatch import dispatch
from bamboo.api.envelope import JSON_MEDIA_TYPE, encode_json, plain_error
from bamboo.api.openapi import docs_page, openapi_document
from bamboo.api.state import ServerState

_AUTH_CONFIG_NAME = re.compile(r"^([A-Za-z0-9_.:\-]{1,64})_auth_config\.json$")


async def _plain_http_error(_: Request, exc: HTTPException) -> Response:
    """Routing refusals (unknown path, unsupported HTTP method) as upstream's plain text, not FastAPI JSON."""
    response = plain_error(exc.status_code, exc.detail)
    response.headers.update(exc.headers or {})
    return response


def create_app(state: ServerState) -> FastAPI:
    """Build the application around already started services."""
    registry = v1.load()
    openapi_body = encode_json(openapi_document(registry))
    docs_body = docs_page(registry)

    async def openapi(_: Request) -> Response:
        return Response(openapi_body, media_type=JSON_MEDIA_TYPE)

    async def docs(_: Request) -> Response:
        return HTMLResponse(docs_body)

    async def auth_config(request: Request) -> Response:
        match = _AUTH_CONFIG_NAME.match(request.path_params["name"])
        config = state.auth_configs.get(match.group(1)) if match else None
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
            Route("/openapi.json", openapi, methods=["GET"]),
            Route("/docs", docs, methods=["GET"]),
            Route("/auth/{name}", auth_config, methods=["GET"]),
            Route("/.well-known/openid-configuration", discovery, methods=["GET"]),
            Route("/.well-known/jwks.json", jwks, methods=["GET"]),
        ],
    )
    app.state.bamboo = state
    app.state.registry = registry
    return app
