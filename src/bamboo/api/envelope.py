"""The PanDA envelope ``{"success", "message", "data"}`` and the raw text answers around it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from starlette.responses import Response

JSON_MEDIA_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class Reply:
    """What a handler answers. ``message`` may be ``None`` where upstream sends ``null``."""

    success: bool = True
    message: str | None = ""
    data: Any = None


@dataclass(frozen=True, slots=True)
class BareText:
    """What the few handlers that upstream lets answer a bare string return (api-v1.md §1.3).

    It is sent as a JSON string literal, as upstream does in JSON mode, never wrapped in the envelope.
    """

    text: str


def _encode_extra(value: Any) -> Any:
    # Upstream's JSON mode: datetimes as {"__datetime__": ISO 8601 without zone}, Decimals as numbers.
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return {"__datetime__": value.isoformat()}
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def encode_json(payload: Any) -> bytes:
    return orjson.dumps(
        payload,
        default=_encode_extra,
        option=orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS,
    )


def envelope_response(
    reply: Reply, *, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = encode_json({"success": reply.success, "message": reply.message, "data": reply.data})
    return Response(body, status_code=status_code, media_type=JSON_MEDIA_TYPE, headers=headers)


def text_response(answer: BareText) -> Response:
    return Response(encode_json(answer.text), media_type=JSON_MEDIA_TYPE)


def failure(message: str, data: Any = None) -> Reply:
    return Reply(success=False, message=message, data=data)


def plain_error(status_code: int, text: str) -> Response:
    """Upstream's non-envelope errors: plain text ``ERROR : ...`` with a 4xx/5xx status."""
    return Response(f"ERROR : {text}", status_code=status_code, media_type="text/plain; charset=utf-8")
