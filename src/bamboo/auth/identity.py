"""Who is calling: the identity established for one request, and the role rules on it."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from bamboo.auth.dn import bare_dn, clean_user_id, is_limited_proxy_dn

_VO_PRODUCTION_FQAN = re.compile(r"^/[^/]+/Role=production")
# The US ATLAS production role is spelled as a sub-group but is a full production role.
_US_PRODUCTION_FQAN = "/atlas/usatlas/Role=production"
_WG_PRODUCTION_FQAN = re.compile(r"^/[^/]+/([^/]+)/Role=production")


class AuthMethod(StrEnum):
    """How the identity was proven."""

    X509 = "x509"
    TOKEN = "token"  # noqa: S105 - the name of a method, not a secret


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified caller.

    Attributes:
        dn: the DN as PanDA exposes it in ``SSL_CLIENT_S_DN``: the certificate subject in slash
            form, or for a token the synthetic ``<Name>/CN=nickname:<preferred_username>``.
        fqans: VOMS FQANs from the certificate, or the FQAN equivalents of a token's role.
        method: certificate or bearer token.
        vo: the VO named by the token's ``Origin`` header (``None`` for certificates).
        claims: the verified token claims (empty for certificates).
        limited: the certificate chain holds a limited proxy (RFC 3820 policy or legacy CN).
    """

    dn: str
    fqans: tuple[str, ...] = ()
    method: AuthMethod = AuthMethod.X509
    vo: str | None = None
    claims: dict[str, object] = field(default_factory=dict, compare=False, hash=False)
    limited: bool = False

    @property
    def user_name(self) -> str:
        """The compact user name used for ownership, ``userName`` and the ban list."""
        return clean_user_id(self.dn)

    @property
    def handler_dn(self) -> str:
        """The "bare" DN handlers see: limited-proxy CN removed, proxy CNs collapsed to one."""
        return bare_dn(self.dn, keep_proxy=True)

    @property
    def is_limited_proxy(self) -> bool:
        return self.limited or is_limited_proxy_dn(self.dn)


def has_production_role(identity: Identity, production_dns: Iterable[str]) -> bool:
    """PanDA's production-role rule (api-v1.md §1.7).

    True when a configured production DN fragment occurs in the handler DN, or an FQAN grants
    ``/<vo>/Role=production`` (working-group production roles do not count).
    """
    handler_dn = identity.handler_dn
    if any(fragment and fragment in handler_dn for fragment in production_dns):
        return True
    return any(
        fqan.startswith(_US_PRODUCTION_FQAN) or _VO_PRODUCTION_FQAN.match(fqan) for fqan in identity.fqans
    )


def working_group_production_roles(fqans: Iterable[str]) -> list[str]:
    """Working groups in which the caller holds a production role, each as ``wg`` and ``gr_wg``.

    ``/atlas/usatlas/Role=production`` is the US cloud's production role, not a working group.
    """
    groups: list[str] = []
    for fqan in fqans:
        match = _WG_PRODUCTION_FQAN.match(fqan)
        if match and match.group(1) != "usatlas":
            groups.extend((match.group(1), f"gr_{match.group(1)}"))
    return groups


def primary_working_group(fqans: Iterable[str]) -> str | None:
    """The last ``-``-separated part of the first working-group production role, lower-cased."""
    for fqan in fqans:
        match = _WG_PRODUCTION_FQAN.match(fqan)
        if match and match.group(1) != "usatlas":
            return match.group(1).split("-")[-1].lower()
    return None
