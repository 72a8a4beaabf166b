"""The access checks of the validation decorator, in their order (api-v1.md §1.5 checks 1-3)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bamboo.api.dispatch import _check_access
from bamboo.api.registry import Access, DbUse, Endpoint
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
