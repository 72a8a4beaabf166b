"""Distinguished-name handling exactly as PanDA does it.

Ownership of tasks, the ban list and secrets are keyed by the *compact user name* derived
from a DN, so these rules must match the upstream server bit for bit: stored data and the
clients' expectations depend on them (see reference/api-v1.md §1.6 and the test vectors in
reference/vectors/dn-normalisation.jsonl).
"""

from __future__ import annotations

import re

_ORG_COMPONENTS = re.compile(r"/(?:DC|O|OU|C|L)=[^/]+")
_NUMERIC_CN = re.compile(r"/CN=[0-9]+")
_SPACE_DIGITS = re.compile(r" [0-9]+")
_UNDERSCORE_DIGITS = re.compile(r"_[0-9]+")
_ROBOT_CN = re.compile(r"/CN=Robot:[^/]+")
_NICKNAME_CN = re.compile(r"/CN=nickname:[^/]+")
_TWO_CNS = re.compile(r".*/CN=([^/]+)/CN=([^/]+)")
_LIMITED_PROXY_INSIDE = re.compile(r".*(limited.*proxy).*")
_EMAIL_WORD = re.compile(r"\S+@\S+")
_TRAILING_PROXIES = re.compile(r"(?:/CN=proxy)+$")
_TRAILING_NUMERIC_CNS = re.compile(r"(?:/CN=[0-9]+)+$")


def clean_user_id(dn: str) -> str:
    """Reduce a DN (certificate or token-derived) to PanDA's compact user name.

    Args:
        dn: the DN in slash form, or a synthetic token DN such as ``Jane Doe/CN=nickname:jdoe``.

    Returns:
        The compact user name, e.g. ``John Doe`` for a CERN personal certificate DN.
    """
    name = _ORG_COMPONENTS.sub("", dn)
    name = _NUMERIC_CN.sub("", name)
    name = _SPACE_DIGITS.sub("", name)
    name = _UNDERSCORE_DIGITS.sub("", name)
    name = name.replace("/CN=proxy", "").replace("/CN=limited proxy", "").replace("limited proxy", "")
    name = _ROBOT_CN.sub("", name)
    name = _NICKNAME_CN.sub("", name)
    two = _TWO_CNS.match(name)
    name = two.group(2) if two else name.replace("/CN=", "")
    email_at = name.lower().find("/email")
    if email_at > 0:
        name = name[:email_at]
    # Upstream keeps only the "limited ... proxy" fragment when one survives the steps above.
    limited = _LIMITED_PROXY_INSIDE.match(name)
    if limited:
        name = limited.group(1)
    for char in "()'":
        name = name.replace(char, "")
    if " " in name:
        name = " ".join(_EMAIL_WORD.sub("", name).split())
    return name


def bare_dn(dn: str, *, keep_proxy: bool = False, keep_digits: bool = True) -> str:
    """Strip proxy markers from a certificate DN.

    ``/CN=limited proxy`` always goes. A trailing run of ``/CN=proxy`` is collapsed to one when
    ``keep_proxy`` (the form PanDA handlers see) or removed otherwise. With ``keep_digits`` false a
    trailing run of numeric CNs (RFC 3820 proxy serials) is removed as well.
    """
    dn = dn.replace("/CN=limited proxy", "")
    dn = _TRAILING_PROXIES.sub("/CN=proxy" if keep_proxy else "", dn)
    if not keep_digits:
        dn = _TRAILING_NUMERIC_CNS.sub("", dn)
    return dn


def is_limited_proxy_dn(dn: str) -> bool:
    """A limited proxy may not call secure endpoints (api-v1.md §1.5 check 1)."""
    return "/CN=limited proxy" in dn
