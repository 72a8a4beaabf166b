"""The OpenAPI document and the docs page, both generated from the endpoint registry."""

from __future__ import annotations

import html
from typing import Any

from bamboo import __version__
from bamboo.api.params import ParamType
from bamboo.api.registry import Access, Endpoint, Param, Registry

_SCALARS: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    dict: {"type": "object"},
    list: {"type": "array", "items": {}},
    type(None): {"type": "null"},
}

_ENVELOPE = {
    "type": "object",
    "required": ["success", "message", "data"],
    "properties": {
        "success": {"type": "boolean", "description": "Whether the call did what was asked."},
        "message": {"type": ["string", "null"], "description": "Why it failed, or a human-readable note."},
        "data": {"description": "The result; its shape depends on the endpoint."},
    },
}

_ACCESS_TEXT = {
    Access.PUBLIC: "Public: no credentials needed.",
    Access.SECURE: "Secure: needs a client certificate or a bearer token (with the Origin header).",
    Access.PRODUCTION: "Production: needs the production role (VOMS FQAN, token group or configured DN).",
    Access.OWNER: "Owner: secure, and the task must be the caller's unless one has the production role.",
}


def _plain_text(description: str) -> dict[str, Any]:
    """A documented non-envelope error: upstream answers these as ``ERROR : <reason>`` text."""
    return {
        "description": f"{description} Plain text.",
        "content": {"text/plain": {"schema": {"type": "string", "pattern": "^ERROR : "}}},
    }


def _success_answer(endpoint: Endpoint) -> dict[str, Any]:
    envelope = {"$ref": "#/components/schemas/Envelope"}
    if endpoint.answers_text:
        return {
            "description": "The answer as a bare JSON string; refused calls get the PanDA envelope.",
            "content": {"application/json": {"schema": {"oneOf": [{"type": "string"}, envelope]}}},
        }
    return {
        "description": "The PanDA envelope (also for refused calls, with success false).",
        "content": {"application/json": {"schema": envelope}},
    }


def schema_of(param_type: ParamType) -> dict[str, Any]:
    if param_type.annotation is Any:
        return {}
    if param_type.is_union:
        return {"anyOf": [schema_of(ParamType(member)) for member in param_type.members]}
    if param_type.element is not None:
        return {"type": "array", "items": schema_of(ParamType(param_type.element))}
    return dict(_SCALARS[param_type.annotation])


def _param_schema(param: Param) -> dict[str, Any]:
    schema = schema_of(param.type)
    if not param.required:
        schema["default"] = param.default
    schema["description"] = param.description
    return schema


def _operation(endpoint: Endpoint, method: str) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": f"{endpoint.module}_{endpoint.function}_{method}",
        "tags": [endpoint.module],
        "summary": endpoint.summary,
        "description": "\n\n".join(filter(None, [endpoint.description, _ACCESS_TEXT[endpoint.access]])),
        "responses": {
            "200": _success_answer(endpoint),
            "400": _plain_text("A body that cannot be read: invalid JSON, gzip or form data."),
            "403": _plain_text("Unknown endpoint, failed token or banned user."),
            "405": _plain_text("An HTTP method other than GET, HEAD, POST and PUT."),
            "413": _plain_text("A request body larger than the server accepts."),
            "503": {
                "description": "Database unavailable; retry after the Retry-After delay.",
                "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Envelope"}}},
            },
        },
    }
    if endpoint.access is not Access.PUBLIC:
        operation["security"] = [{"bearerToken": []}, {"clientCertificate": []}]
    if method == "get":
        operation["parameters"] = [
            {"name": p.name, "in": "query", "required": p.required, "schema": _param_schema(p)}
            for p in endpoint.params
        ]
    elif endpoint.max_body_bytes is not None:
        operation["requestBody"] = _upload_body(endpoint)
    elif endpoint.params:
        operation["requestBody"] = {
            "required": any(p.required for p in endpoint.params),
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {p.name: _param_schema(p) for p in endpoint.params},
                        "required": [p.name for p in endpoint.params if p.required],
                        "additionalProperties": endpoint.accepts_extra,
                    }
                }
            },
        }
    return operation


def _upload_body(endpoint: Endpoint) -> dict[str, Any]:
    """An upload endpoint's body: a multipart form whose parts named like parameters are files."""
    properties = {
        p.name: {"type": "string", "format": "binary", "description": p.description} for p in endpoint.params
    }
    return {
        "required": True,
        "description": f"multipart/form-data of at most {endpoint.max_body_bytes} bytes.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": properties,
                    "required": [p.name for p in endpoint.params if p.required],
                }
            }
        },
    }


def openapi_document(registry: Registry) -> dict[str, Any]:
    """A deterministic OpenAPI 3.1 document of every endpoint."""
    paths: dict[str, Any] = {}
    for endpoint in registry:
        methods = [endpoint.method.lower()] if endpoint.method else ["get", "post"]
        paths[endpoint.path] = {method: _operation(endpoint, method) for method in methods}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Bamboo: PanDA API v1",
            "version": __version__,
            "description": "A workload management server speaking the PanDA REST API v1.",
        },
        "paths": paths,
        "components": {
            "schemas": {"Envelope": _ENVELOPE},
            "securitySchemes": {
                "bearerToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "clientCertificate": {"type": "mutualTLS"},
            },
        },
    }


def docs_page(registry: Registry) -> str:
    """A self-contained HTML page listing every endpoint and parameter (no external assets)."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Bamboo API v1</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}code{background:#eee}"
        "td,th{border:1px solid #ccc;padding:.2em .5em;vertical-align:top}"
        "table{border-collapse:collapse}</style>",
        "</head><body><h1>Bamboo: PanDA API v1</h1>",
        "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a>.</p>",
    ]
    current_module = None
    for endpoint in registry:
        if endpoint.module != current_module:
            current_module = endpoint.module
            parts.append(f"<h2>{html.escape(current_module)}</h2>")
        parts.append(
            f"<h3><code>{endpoint.method or 'GET/POST'} {html.escape(endpoint.path)}</code></h3>"
            f"<p>{html.escape(endpoint.summary)}</p><p><em>{html.escape(_ACCESS_TEXT[endpoint.access])}</em></p>"
        )
        if endpoint.params:
            parts.append(
                "<table><tr><th>parameter</th><th>type</th><th>default</th><th>description</th></tr>"
            )
            for param in endpoint.params:
                default = "required" if param.required else repr(param.default)
                parts.append(
                    f"<tr><td><code>{html.escape(param.name)}</code></td><td>{html.escape(param.type.name)}</td>"
                    f"<td>{html.escape(default)}</td><td>{html.escape(param.description)}</td></tr>"
                )
            parts.append("</table>")
        if endpoint.accepts_extra:
            parts.append("<p>Accepts any further parameters.</p>")
    parts.append("</body></html>")
    return "".join(parts)
