"""Establishing who calls: client certificates (own TLS or a trusted proxy) and bearer tokens."""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from ipaddress import ip_address
from typing import TYPE_CHECKING

from cryptography import x509
from starlette.requests import Request

from bamboo.auth.identity import AuthMethod, Identity
from bamboo.auth.oidc import TokenRejected
from bamboo.auth.x509 import (
    CertificateRejected,
    VerifiedCertificate,
    chain_from_escaped_pem,
    describe_verified_chain,
    verify_client_chain,
)

if TYPE_CHECKING:
    from bamboo.api.state import ServerState

log = logging.getLogger(__name__)

_CERT_CACHE_SIZE = 4096
_MAX_FQAN_HEADER = 4096


class AuthenticationFailed(Exception):
    """A presented credential is invalid: HTTP 403 with the reason (api-v1.md §1.3 step 3)."""


class CertificateCache:
    """Verified certificate chains by fingerprint: a pilot's connection reuses one chain for
    thousands of requests, and parsing plus VOMS signature checks are not free."""

    def __init__(self, size: int = _CERT_CACHE_SIZE) -> None:
        self._size = size
        self._entries: OrderedDict[bytes, VerifiedCertificate] = OrderedDict()

    def get(self, key: bytes) -> VerifiedCertificate | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: bytes, value: VerifiedCertificate) -> None:
        self._entries[key] = value
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)


async def resolve_identity(request: Request, state: ServerState) -> Identity | None:
    """The caller's identity, or None when no credential was presented.

    A certificate wins over a token for the DN and FQANs, as upstream; a token that is presented
    is still verified and a bad one fails the request.

    Raises:
        AuthenticationFailed: a token or a proxy-forwarded certificate does not verify.
    """
    certificate = _certificate_identity(request, state)
    token_identity = await _token_identity(request, state)
    return certificate or token_identity


def _certificate_identity(request: Request, state: ServerState) -> Identity | None:
    verified = _own_tls_certificate(request, state) or _forwarded_certificate(request, state)
    if verified is None:
        return None
    fqans = verified.fqans
    if not fqans and _from_trusted_proxy(request, state):
        fqans = _forwarded_fqans(request, state)
    return Identity(dn=verified.dn, fqans=fqans, method=AuthMethod.X509, limited=verified.is_limited)


def _own_tls_certificate(request: Request, state: ServerState) -> VerifiedCertificate | None:
    tls = request.scope.get("extensions", {}).get("tls") or {}
    chain_pem: list[str] | None = tls.get("client_cert_chain")
    if not chain_pem:
        return None
    key = hashlib.sha256("".join(chain_pem).encode()).digest()
    cached = state.certificates.get(key)
    if cached is not None and cached.not_after > state.clock.now():
        return cached
    chain = [x509.load_pem_x509_certificate(pem.encode()) for pem in chain_pem]
    verified = describe_verified_chain(chain, voms_trust=state.voms_trust, now=state.clock.now())
    state.certificates.put(key, verified)
    return verified


def _from_trusted_proxy(request: Request, state: ServerState) -> bool:
    networks = state.settings.trusted_proxy_networks
    if not networks or request.client is None:
        return False
    try:
        address = ip_address(request.client.host)
    except ValueError:
        return False
    return any(address in network for network in networks)


def _forwarded_certificate(request: Request, state: ServerState) -> VerifiedCertificate | None:
    header = request.headers.get(state.settings.proxy_cert_header)
    if not header or not _from_trusted_proxy(request, state):
        return None
    key = hashlib.sha256(header.encode()).digest()
    cached = state.certificates.get(key)
    if cached is not None and cached.not_after > state.clock.now():
        return cached
    try:
        chain = chain_from_escaped_pem(header)
        verified = verify_client_chain(chain, state.trust, now=state.clock.now(), voms_trust=state.voms_trust)
    except CertificateRejected as exc:
        log.warning("forwarded client certificate rejected: %s", exc)
        raise AuthenticationFailed(f"Certificate authentication failed. {exc}") from exc
    state.certificates.put(key, verified)
    return verified


def _forwarded_fqans(request: Request, state: ServerState) -> tuple[str, ...]:
    header = request.headers.get(state.settings.proxy_fqans_header, "")[:_MAX_FQAN_HEADER]
    return tuple(item.strip() for item in header.split(",") if item.strip())


async def _token_identity(request: Request, state: ServerState) -> Identity | None:
    authorization = request.headers.get("authorization")
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("Token authentication failed. Authorization header is not a bearer token")
    # The scope's scheme, not request.url: building the URL object costs on every request.
    if request.scope["scheme"] != "https" and not state.settings.token_over_http:
        # Tokens are accepted over TLS only unless the operator allows plain HTTP (DESIGN §9.5).
        return None
    try:
        return await state.token_verifier.verify(token.strip(), request.headers.get("origin"))
    except TokenRejected as exc:
        raise AuthenticationFailed(f"Token authentication failed. {exc}") from exc
