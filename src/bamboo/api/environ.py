"""The CGI-style request environment upstream handlers expose (system/get_attributes and friends).

Upstream dumps the web server's environment; we rebuild the useful part of it from the request and
the verified identity, and leave out credentials (Authorization, cookies, forwarded certificates).
"""

from __future__ import annotations

from starlette.requests import Request

from bamboo.auth.identity import AuthMethod, Identity

_SECRET_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


def request_environment(
    request: Request, identity: Identity | None, hidden_headers: tuple[str, ...]
) -> dict[str, str]:
    hidden = _SECRET_HEADERS | {name.lower() for name in hidden_headers}
    env: dict[str, str] = {
        "REQUEST_METHOD": request.method,
        "REQUEST_URI": request.url.path,
        "QUERY_STRING": request.url.query,
        "SERVER_PORT": str(request.url.port or ""),
        "REMOTE_ADDR": request.client.host if request.client else "",
    }
    if request.url.scheme == "https":
        env["HTTPS"] = "on"
    for name, value in request.headers.items():
        if name not in hidden:
            env["HTTP_" + name.upper().replace("-", "_")] = value
    if identity is not None:
        env.update(_identity_environment(identity))
    return dict(sorted(env.items()))


def _identity_environment(identity: Identity) -> dict[str, str]:
    env = {"SSL_CLIENT_S_DN": identity.dn}
    if identity.method is AuthMethod.X509:
        env["GRST_CRED_0"] = f"X509USER {identity.dn}"
        for index, fqan in enumerate(identity.fqans, start=1):
            env[f"GRST_CRED_{index}"] = f"VOMS {fqan}"
    else:
        for index, fqan in enumerate(identity.fqans):
            env[f"GRST_CRED_AUTH_TOKEN_{index}"] = f"VOMS {fqan}"
        for claim, value in identity.claims.items():
            env[f"PANDA_OIDC_CLAIM_{claim}"] = str(value)
    return env
