"""The checks of the validation decorator, in their order (api-v1.md §1.5 checks 1-5)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bamboo.api.dispatch import _check_access, bind_parameters
from bamboo.api.params import REQUIRED, ParameterError, ParamType
from bamboo.api.registry import Access, DbUse, Endpoint, Param
from bamboo.auth.identity import AuthMethod, Identity


async def _handler(call):  # pragma: no cover - never called here
    raise AssertionError


def endpoint(access: Access, method: str | None = "POST") -> Endpoint:
    return Endpoint("m", "f", method, access, DbUse.NONE, (), False, "s", "", _handler)


STATE = SimpleNamespace(settings=SimpleNamespace(production_dns=["/CN=prodsys"]))
USER = Identity(dn="/CN=user")
PRODUCER = Identity(dn="Robot/CN=nickname:robot", fqans=("/atlas/Role=production",), method=AuthMethod.TOKEN)
LIMITED = Identity(dn="/CN=user/CN=proxy/CN=limited proxy")


@pytest.mark.parametrize(
    ("access", "method", "identity", "expected"),
    [
        (Access.PUBLIC, "GET", None, "expecting POST, received GET"),
        (Access.PUBLIC, "POST", None, None),
        (Access.SECURE, "GET", None, "SSL secure connection is required"),
        (Access.SECURE, "POST", LIMITED, "SSL secure connection is required"),
        (Access.SECURE, "GET", USER, "expecting POST, received GET"),
        (Access.SECURE, "POST", USER, None),
        (Access.PRODUCTION, "GET", None, "SSL secure connection is required"),
        (Access.PRODUCTION, "GET", USER, "production or pilot role required"),
        (Access.PRODUCTION, "GET", PRODUCER, "expecting POST, received GET"),
        (Access.PRODUCTION, "POST", PRODUCER, None),
        (Access.PRODUCTION, "POST", Identity(dn="/DC=x/CN=prodsys"), None),
    ],
)
def test_check_order_and_messages(
    access: Access, method: str, identity: Identity | None, expected: str | None
) -> None:
    assert _check_access(endpoint(access), method, identity, STATE) == expected


def test_any_method_endpoint_and_head_as_get() -> None:
    assert _check_access(endpoint(Access.PUBLIC, None), "PUT", None, STATE) is None
    assert _check_access(endpoint(Access.PUBLIC, "GET"), "HEAD", None, STATE) is None


def _typed_endpoint() -> Endpoint:
    params = (
        Param("task_id", ParamType(int), REQUIRED, "a task"),
        Param("flags", ParamType(list[int]), None, "numbers"),
        Param("verbose", ParamType(bool), False, "chatty"),
    )
    return Endpoint("m", "f", "POST", Access.SECURE, DbUse.NONE, params, False, "s", "", _handler)


def test_textual_parameters_are_coerced_json_ones_only_checked() -> None:
    endpoint = _typed_endpoint()
    textual = {"task_id": "12", "flags": ["1", "2"], "verbose": "true"}
    assert bind_parameters(endpoint, textual, textual=True) == {
        "task_id": 12,
        "flags": [1, 2],
        "verbose": True,
    }
    assert bind_parameters(endpoint, {"task_id": 12}, textual=False) == {"task_id": 12}
    with pytest.raises(ParameterError, match=r"Type error: 'task_id' must be of type int, got str\."):
        bind_parameters(endpoint, {"task_id": "12"}, textual=False)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "Argument error: missing a required argument: 'task_id'"),
        ({"task_id": 1, "zz": 1, "aa": 2}, "Argument error: got an unexpected keyword argument 'zz'"),
        ({"zz": 1}, "Argument error: missing a required argument: 'task_id'"),
    ],
)
def test_argument_errors(params: dict, message: str) -> None:
    with pytest.raises(ParameterError) as caught:
        bind_parameters(_typed_endpoint(), params, textual=False)
    assert str(caught.value) == message
