"""Production role, working-group roles and the identity's derived names (api-v1.md §1.6-1.7)."""

from __future__ import annotations

import pytest

from bamboo.auth.identity import (
    AuthMethod,
    Identity,
    has_production_role,
    primary_working_group,
    working_group_production_roles,
)


@pytest.mark.parametrize(
    ("fqans", "expected"),
    [
        (("/atlas/Role=production",), True),
        (("/atlas/Role=production/Capability=NULL",), True),
        (("/atlas/usatlas/Role=production",), True),
        (("/cms/Role=production",), True),
        (("/atlas/phys-higgs/Role=production",), False),
        (("/atlas/Role=pilot",), False),
        (("/atlas",), False),
        ((), False),
    ],
)
def test_production_role_from_fqans(fqans: tuple[str, ...], expected: bool) -> None:
    assert has_production_role(Identity(dn="/CN=someone", fqans=fqans), []) is expected


def test_production_role_from_configured_dn_fragment() -> None:
    identity = Identity(dn="/DC=ch/DC=cern/OU=Users/CN=prodsys/CN=proxy/CN=proxy")
    assert has_production_role(identity, ["/CN=prodsys"])
    assert not has_production_role(identity, ["/CN=other"])
    assert not has_production_role(identity, [""])


def test_working_group_roles() -> None:
    fqans = ["/atlas/phys-higgs/Role=production", "/atlas/usatlas/Role=production", "/atlas/Role=production"]
    assert working_group_production_roles(fqans) == ["phys-higgs", "gr_phys-higgs"]
    assert primary_working_group(fqans) == "higgs"
    assert primary_working_group(["/atlas"]) is None


def test_identity_names_and_limited_flag() -> None:
    identity = Identity(dn="/DC=ch/CN=Jane Roe/CN=proxy/CN=proxy/CN=limited proxy", method=AuthMethod.X509)
    assert identity.user_name == "Jane Roe"
    assert identity.handler_dn == "/DC=ch/CN=Jane Roe/CN=proxy"
    assert identity.is_limited_proxy
    assert Identity(dn="/CN=a/CN=1234", limited=True).is_limited_proxy
    assert not Identity(dn="/CN=a/CN=1234").is_limited_proxy
