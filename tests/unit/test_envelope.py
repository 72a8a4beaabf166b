"""Envelope encoding: upstream's JSON mode for datetimes and decimals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import orjson
import pytest

from bamboo.api.envelope import Reply, encode_json, envelope_response


def test_datetimes_are_wrapped_and_given_in_utc_without_zone() -> None:
    aware = datetime(2026, 11, 28, 13, 0, 5, tzinfo=timezone(timedelta(hours=1)))
    naive = datetime(2026, 1, 2, 3, 4, 5, 6)
    assert orjson.loads(encode_json({"a": aware, "b": naive})) == {
        "a": {"__datetime__": "2026-11-28T12:00:05"},
        "b": {"__datetime__": "2026-01-02T03:04:05.000006"},
    }


def test_decimals_and_int_keys() -> None:
    assert encode_json({1: Decimal("3"), "x": Decimal("2.5")}) == b'{"1":3,"x":2.5}'


def test_unknown_types_are_an_error() -> None:
    with pytest.raises(TypeError):
        encode_json({"s": {1, 2}})


def test_envelope_keys_and_media_type() -> None:
    response = envelope_response(Reply(success=False, message=None, data=[datetime(2026, 1, 1, tzinfo=UTC)]))
    assert response.media_type == "application/json"
    assert (
        response.body == b'{"success":false,"message":null,"data":[{"__datetime__":"2026-01-01T00:00:00"}]}'
    )
