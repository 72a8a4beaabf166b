"""Hands the verified client-certificate chain of a TLS connection to the application.

No ASGI server puts the peer certificate into the scope, so our uvicorn protocol reads it from the
connection's SSL object once, when the connection is made, and publishes it in every request's
``scope["extensions"]["tls"]`` as the ASGI TLS extension describes (``client_cert_chain``: PEM
strings, leaf first).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def peer_chain_pem(ssl_object: ssl.SSLObject) -> list[str]:
    """The client's chain as OpenSSL verified it, leaf first; just the leaf if that is all we get.

    CPython 3.11 has the verified chain only behind the private ``_sslobj`` (public from 3.13 as
    ``get_verified_chain``); proxies need it because VOMS attributes sit in a middle certificate
    when the client delegates again.
    """
    getter = getattr(ssl_object, "get_verified_chain", None) or getattr(
        getattr(ssl_object, "_sslobj", None), "get_verified_chain", None
    )
    if getter is not None:
        chain = getter() or []
        if chain:
            # The last element is the trust anchor, which is ours and tells nothing about the caller.
            return [cert.public_bytes(ssl._ssl.ENCODING_PEM) for cert in chain[:-1]]  # type: ignore[attr-defined]
    der = ssl_object.getpeercert(binary_form=True)
    return [ssl.DER_cert_to_PEM_cert(der)] if der else []


class ClientCertificateProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the ASGI TLS extension for client certificates."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return
        chain = peer_chain_pem(ssl_object)
        if chain:
            self.app = _with_tls_extension(self.app, {"client_cert_chain": chain})


def _with_tls_extension(app: Any, tls: dict[str, Any]) -> Any:
    async def app_with_tls(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope.setdefault("extensions", {})["tls"] = tls
        await app(scope, receive, send)

    return app_with_tls
