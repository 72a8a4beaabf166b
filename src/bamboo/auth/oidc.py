"""Verification of OIDC bearer tokens as the PanDA server does it (clients.md §6.2).

The API layer hands :meth:`TokenVerifier.verify` the raw bearer token and the ``Origin`` header
and gets an :class:`~bamboo.auth.identity.Identity` back, or a :class:`TokenRejected` whose
message it reports as HTTP 403 ``ERROR : Token authentication failed. <reason>``. Nothing here
depends on a web framework.

Policies come from PanDA's ``<vo>[.<role>]_auth_config.json`` files. Signing keys come from a
:class:`KeySource`: inline (the embedded issuer) or fetched through OIDC discovery.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import httpx
import jwt
from jwt import PyJWK

from bamboo.auth.identity import AuthMethod, Identity

logger = logging.getLogger(__name__)

MAX_TOKEN_CHARS = 16 * 1024
MAX_DOCUMENT_BYTES = 1024 * 1024
AUTH_CONFIG_SUFFIX = "_auth_config.json"
VERIFICATION_CACHE_SECONDS = 600
VERIFICATION_CACHE_ENTRIES = 10_000
KEY_CACHE_SECONDS = 600.0
KEY_REFETCH_INTERVAL = 60.0
HTTP_TIMEOUT = 10.0
# After a failed discovery fetch, requests are rejected at once for a while instead of each one
# waiting for the identity provider's timeout.
_FETCH_FAILURE_BACKOFF = 10.0
_MAX_REASON_DETAIL = 200
# The VO is echoed in rejection reasons and the Origin is part of the cache key.
_MAX_ORIGIN_CHARS = 256
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class TokenRejected(Exception):
    """The bearer token does not authenticate the caller.

    The message is the client-facing reason and never contains the token.
    """

    @property
    def reason(self) -> str:
        """The reason to put after ``Token authentication failed.``."""
        return str(self.args[0]) if self.args else ""


class KeySourceError(Exception):
    """Signing keys could not be obtained (identity provider unreachable or misbehaving)."""


def split_vo_role(text: str) -> tuple[str, str | None]:
    """Split an ``Origin`` header or auth-config file stem into VO and role.

    ``vo:role`` splits at the colon, ``vo.role`` at the last dot. Names starting ``vo.`` are
    EGI-style VO names and split only at a colon.

    Args:
        text: e.g. ``atlas``, ``atlas.production``, ``atlas:production``, ``vo.example.org``.

    Returns:
        ``(vo, role)``; role is ``None`` when there is none, and may be empty for ``atlas.``.
    """
    if ":" in text:
        vo, _, role = text.partition(":")
        return vo, role
    if "." in text and not text.startswith("vo."):
        vo, _, role = text.rpartition(".")
        return vo, role
    return text, None


def _str_tuple(value: object, key: str, *, allow_comma_string: bool = False) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) and allow_comma_string:
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ValueError(f"{key} must be a list of non-empty strings")
    return tuple(value)


def _optional_str(data: Mapping[str, object], key: str) -> str | None:
    value = data.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"{key} must be a non-empty string")
    return value


def _is_http_url(url: str) -> bool:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.host)


@dataclass(frozen=True)
class VOPolicy:
    """How tokens are accepted for one VO (or VO and role), after one auth-config file.

    Attributes:
        vo: the VO an ``Origin`` header names.
        client_ids: the accepted client ids (``client_id`` then ``secondary_ids``).
        issuer: the expected ``iss``; ``None`` takes it from the discovery document.
        jwks: an inline JWKS, making discovery unnecessary (requires ``issuer``).
        oidc_config_url: the discovery document URL.
        jwt_profile: ``wlcg`` reads groups from ``wlcg.groups`` instead of ``groups``.
        robot_ids: client ids whose tokens carry no groups; they are granted the VO (and role).
        auto_roles: roles tried, in order, when ``Origin`` names the bare VO.
        role: the role of a ``<vo>.<role>`` file, ``None`` for ``<vo>``.
    """

    vo: str
    client_ids: tuple[str, ...]
    issuer: str | None = None
    jwks: dict | None = field(default=None, hash=False)
    oidc_config_url: str | None = None
    jwt_profile: str | None = None
    robot_ids: tuple[str, ...] = ()
    auto_roles: tuple[str, ...] = ()
    role: str | None = None

    def __post_init__(self) -> None:
        if not self.vo:
            raise ValueError("vo must not be empty")
        if self.role == "":
            raise ValueError("role must not be empty")
        if not self.client_ids or not all(isinstance(cid, str) and cid for cid in self.client_ids):
            raise ValueError("client_ids must be a non-empty tuple of non-empty strings")
        if self.jwks is not None:
            if self.issuer is None:
                raise ValueError("an inline jwks needs an explicit issuer")
        elif self.oidc_config_url is None:
            raise ValueError("either oidc_config_url or an inline jwks is required")
        if self.oidc_config_url is not None and not _is_http_url(self.oidc_config_url):
            raise ValueError("oidc_config_url must be an http(s) URL")

    @property
    def groups_claim(self) -> str:
        """The claim holding group memberships."""
        return "wlcg.groups" if self.jwt_profile == "wlcg" else "groups"

    @classmethod
    def from_auth_config(cls, stem: str, data: Mapping[str, object]) -> VOPolicy:
        """Build a policy from a PanDA auth-config file.

        Args:
            stem: the file name without ``_auth_config.json``: ``<vo>``, ``<vo>.<role>`` or
                ``<vo>:<role>``.
            data: the parsed JSON. Keys used: ``client_id``, ``secondary_ids``,
                ``oidc_config_url``, ``jwt_profile``, ``robot_ids`` (list or comma-separated
                string), ``auto_roles``, and the Bamboo extensions ``issuer`` and ``jwks``.

        Returns:
            The policy.

        Raises:
            ValueError: a required key is missing or a value has the wrong type.
        """
        if not isinstance(data, Mapping):
            raise ValueError("an auth config must be a JSON object")
        vo, role = split_vo_role(stem)
        client_id = _optional_str(data, "client_id")
        if client_id is None:
            raise ValueError("client_id is required")
        secondary = _str_tuple(data.get("secondary_ids"), "secondary_ids")
        jwks = data.get("jwks")
        if jwks is not None and not (isinstance(jwks, dict) and isinstance(jwks.get("keys"), list)):
            raise ValueError("jwks must be an object with a 'keys' list")
        oidc_config_url = _optional_str(data, "oidc_config_url")
        if oidc_config_url is None and jwks is None:
            raise ValueError("oidc_config_url is required")
        return cls(
            vo=vo,
            role=role,
            client_ids=tuple(dict.fromkeys((client_id, *secondary))),
            issuer=_optional_str(data, "issuer"),
            jwks=jwks,
            oidc_config_url=oidc_config_url,
            jwt_profile=_optional_str(data, "jwt_profile"),
            robot_ids=_str_tuple(data.get("robot_ids"), "robot_ids", allow_comma_string=True),
            auto_roles=_str_tuple(data.get("auto_roles"), "auto_roles", allow_comma_string=True),
        )


def load_policies_from_dir(path: Path) -> dict[str, VOPolicy]:
    """Load every ``*_auth_config.json`` in a directory.

    Args:
        path: the directory PanDA calls the auth config dir (also served at ``/auth/``).

    Returns:
        Policies keyed by file stem without ``_auth_config``, e.g. ``atlas``, ``atlas.production``.

    Raises:
        FileNotFoundError: the directory does not exist.
        ValueError: a file is larger than 1 MiB, not JSON, or not a valid auth config.
    """
    if not path.is_dir():
        raise FileNotFoundError(f"auth config directory {path} does not exist")
    policies: dict[str, VOPolicy] = {}
    for file in sorted(path.glob("*" + AUTH_CONFIG_SUFFIX)):
        if not file.is_file():
            continue
        stem = file.name[: -len(AUTH_CONFIG_SUFFIX)]
        with file.open("rb") as handle:
            raw = handle.read(MAX_DOCUMENT_BYTES + 1)
        if len(raw) > MAX_DOCUMENT_BYTES:
            raise ValueError(f"{file}: larger than {MAX_DOCUMENT_BYTES} bytes")
        try:
            policies[stem] = VOPolicy.from_auth_config(stem, json.loads(raw))
        except ValueError as exc:
            raise ValueError(f"{file}: {exc}") from exc
    return policies


def parse_jwks(document: Mapping[str, object]) -> dict[str, PyJWK]:
    """Usable RS256 signing keys of a JWKS, by ``kid``.

    Keys that are not RSA, are marked for another use or algorithm, or fail to load are skipped:
    identity providers publish such keys next to the ones that matter.

    Raises:
        ValueError: the document is not a JWKS.
    """
    entries = document.get("keys") if isinstance(document, Mapping) else None
    if not isinstance(entries, list):
        raise ValueError("a JWKS must be an object with a 'keys' list")
    keys: dict[str, PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") != "RSA":
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid or kid in keys:
            continue
        if entry.get("use", "sig") != "sig" or entry.get("alg", "RS256") != "RS256":
            continue
        try:
            keys[kid] = PyJWK(entry, algorithm="RS256")
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            logger.warning("ignoring unusable JWK with kid %r", kid[:64])
    return keys


class KeySource(Protocol):
    """Where the signing keys and the issuer name of one identity provider come from."""

    async def signing_key(self, kid: str) -> PyJWK | None:
        """The key with this id, or ``None`` if the provider has no such key.

        Raises:
            KeySourceError: the keys cannot be obtained.
        """
        ...

    async def issuer(self) -> str | None:
        """The provider's issuer name, if it publishes one.

        Raises:
            KeySourceError: the provider cannot be reached.
        """
        ...


class StaticKeys:
    """Keys known up front, e.g. the embedded issuer's; no network access."""

    def __init__(self, jwks: Mapping[str, object], issuer: str | None) -> None:
        """Load the keys.

        Args:
            jwks: the JWKS document.
            issuer: the issuer name the tokens carry.

        Raises:
            ValueError: ``jwks`` is not a JWKS.
        """
        self._keys = parse_jwks(jwks)
        self._issuer = issuer

    async def signing_key(self, kid: str) -> PyJWK | None:
        """The key with this id, or ``None``."""
        return self._keys.get(kid)

    async def issuer(self) -> str | None:
        """The configured issuer name."""
        return self._issuer


class DiscoveryKeys:
    """Keys from an OIDC discovery document and the JWKS it points to.

    Both documents are cached for 10 minutes. A ``kid`` missing from the cached set (the provider
    rotated its keys) triggers a refetch, at most one per minute, so forged ``kid`` values cannot
    turn into a request flood against the provider. When a refresh fails the previous keys stay in
    use.
    """

    def __init__(
        self,
        oidc_config_url: str,
        *,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        cache_seconds: float = KEY_CACHE_SECONDS,
        refetch_interval: float = KEY_REFETCH_INTERVAL,
        timeout: float = HTTP_TIMEOUT,
        max_bytes: int = MAX_DOCUMENT_BYTES,
    ) -> None:
        """Set up the source; nothing is fetched until a key is needed.

        Args:
            oidc_config_url: the discovery document URL (http or https).
            client: an HTTP client to share; by default one is opened per refresh.
            clock: monotonic seconds, injectable for tests.
            cache_seconds: how long fetched documents are used.
            refetch_interval: minimum time between fetches caused by an unknown ``kid``.
            timeout: bound on each document fetch, in seconds.
            max_bytes: bound on each document's size.

        Raises:
            ValueError: the URL is not http(s).
        """
        if not _is_http_url(oidc_config_url):
            raise ValueError("oidc_config_url must be an http(s) URL")
        self._url = oidc_config_url
        self._client = client
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._refetch_interval = refetch_interval
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._lock = asyncio.Lock()
        self._keys: dict[str, PyJWK] | None = None
        self._issuer: str | None = None
        self._fetched_at = -math.inf
        self._failed_at = -math.inf

    async def signing_key(self, kid: str) -> PyJWK | None:
        """The key with this id, refetching once if it is unknown and the keys are not fresh.

        Raises:
            KeySourceError: no keys could ever be fetched.
        """
        keys = await self._current(force=False)
        if kid not in keys and self._clock() - self._fetched_at >= self._refetch_interval:
            keys = await self._current(force=True)
        return keys.get(kid)

    async def issuer(self) -> str | None:
        """The ``issuer`` of the discovery document.

        Raises:
            KeySourceError: the document could never be fetched.
        """
        await self._current(force=False)
        return self._issuer

    async def _current(self, *, force: bool) -> dict[str, PyJWK]:
        async with self._lock:
            now = self._clock()
            age = now - self._fetched_at
            # Re-checked under the lock: a concurrent caller may have refreshed meanwhile.
            fresh = age < (self._refetch_interval if force else self._cache_seconds)
            if self._keys is not None and fresh:
                return self._keys
            if now - self._failed_at < _FETCH_FAILURE_BACKOFF:
                if self._keys is None:
                    raise KeySourceError("the identity provider is unavailable")
                return self._keys
            try:
                issuer, keys = await self._fetch()
            except (KeySourceError, httpx.HTTPError, TimeoutError, ValueError) as exc:
                self._failed_at = now
                logger.warning("fetching signing keys via %s failed: %s", self._url, exc)
                if self._keys is None:
                    raise KeySourceError("failed to get the signing keys of the identity provider") from exc
                return self._keys
            self._issuer, self._keys, self._fetched_at = issuer, keys, now
            return keys

    async def _fetch(self) -> tuple[str | None, dict[str, PyJWK]]:
        if self._client is not None:
            return await self._fetch_with(self._client)
        async with httpx.AsyncClient(timeout=self._timeout) as client:
            return await self._fetch_with(client)

    async def _fetch_with(self, client: httpx.AsyncClient) -> tuple[str | None, dict[str, PyJWK]]:
        discovery = await self._get_json(client, self._url)
        issuer = discovery.get("issuer")
        jwks_uri = discovery.get("jwks_uri")
        if issuer is not None and not isinstance(issuer, str):
            raise KeySourceError("discovery document has a non-string issuer")
        if not isinstance(jwks_uri, str) or not _is_http_url(jwks_uri):
            raise KeySourceError("discovery document has no http(s) jwks_uri")
        keys = parse_jwks(await self._get_json(client, jwks_uri))
        return issuer, keys

    async def _get_json(self, client: httpx.AsyncClient, url: str) -> dict:
        body = bytearray()
        # httpx's timeout bounds each network operation; this bounds the whole download, so a
        # server trickling bytes cannot hold verifications up.
        async with (
            asyncio.timeout(self._timeout),
            client.stream(
                "GET", url, headers={"Accept": "application/json"}, timeout=self._timeout
            ) as response,
        ):
            if response.status_code != httpx.codes.OK:
                raise KeySourceError(f"HTTP {response.status_code} from {url}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self._max_bytes:
                raise KeySourceError(f"document at {url} is too large")
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self._max_bytes:
                    raise KeySourceError(f"document at {url} is too large")
        document = json.loads(body)
        if not isinstance(document, dict):
            raise KeySourceError(f"document at {url} is not a JSON object")
        return document


@dataclass(frozen=True)
class _Signer:
    """The policy that defines a client id's identity provider, and its key source."""

    policy: VOPolicy
    keys: KeySource


class _VerificationCache:
    """Bounded LRU of successful verifications with per-entry expiry."""

    def __init__(self, max_entries: int) -> None:
        self._max_entries = max_entries
        self._entries: OrderedDict[tuple[bytes, str | None], tuple[Identity, float]] = OrderedDict()

    def get(self, key: tuple[bytes, str | None], now: float) -> Identity | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        identity, expires_at = entry
        if now >= expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return identity

    def put(self, key: tuple[bytes, str | None], identity: Identity, expires_at: float) -> None:
        self._entries[key] = (identity, expires_at)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _member(groups: list[str], path: str) -> bool:
    return path in groups or "/" + path in groups


def _groups_of(claims: Mapping[str, object], claim: str) -> list[str] | None:
    value = claims.get(claim)
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [group for group in value if isinstance(group, str)]
    return []


def _time_claim(claims: Mapping[str, object], name: str, label: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TokenRejected(f"Invalid token. {label} claim ({name}) must be a number.")
    return float(value)


def _decode_failure(exc: Exception) -> TokenRejected:
    return TokenRejected(f"Token decode failure. {str(exc)[:_MAX_REASON_DETAIL]}")


class TokenVerifier:
    """Authenticates bearer tokens against a set of VO policies.

    Successful verifications are cached by token hash and ``Origin`` until the token expires or
    for 10 minutes, whichever is earlier, so pilots and Harvester repeating the same token skip the
    RSA work. Identities returned from the cache are shared: treat their ``claims`` as read-only.
    """

    def __init__(
        self,
        policies: Mapping[str, VOPolicy],
        key_sources: Mapping[str, KeySource] | None = None,
        *,
        leeway_seconds: int = 0,
        clock: Callable[[], datetime] = _utc_now,
        http_client: httpx.AsyncClient | None = None,
        cache_entries: int = VERIFICATION_CACHE_ENTRIES,
    ) -> None:
        """Index the policies and set up their key sources.

        Args:
            policies: policies keyed by auth-config stem (``atlas``, ``atlas.production``).
            key_sources: key sources by the same keys; a policy without one uses its inline JWKS
                (:class:`StaticKeys`) or its discovery URL (:class:`DiscoveryKeys`, one per URL).
            leeway_seconds: clock skew tolerated on ``exp``, ``nbf`` and ``iat``.
            clock: the current time (timezone-aware), injectable for tests.
            http_client: a client for discovery fetches, shared by the default key sources.
            cache_entries: size of the verification cache.

        Raises:
            ValueError: two policies claim the same VO and role, or the same client id with
                different identity providers.
        """
        if leeway_seconds < 0:
            raise ValueError("leeway_seconds must not be negative")
        self._leeway = leeway_seconds
        self._clock = clock
        self._cache = _VerificationCache(cache_entries)
        self._by_vo_role: dict[tuple[str, str | None], VOPolicy] = {}
        self._vo_client_ids: dict[str, set[str]] = {}
        self._signers: dict[str, _Signer] = {}
        discovery: dict[str, DiscoveryKeys] = {}
        for name, policy in policies.items():
            if (policy.vo, policy.role) in self._by_vo_role:
                raise ValueError(f"policy {name!r} duplicates VO {policy.vo!r} role {policy.role!r}")
            self._by_vo_role[policy.vo, policy.role] = policy
            self._vo_client_ids.setdefault(policy.vo, set()).update(policy.client_ids)
            source = (key_sources or {}).get(name)
            if source is None and policy.jwks is not None:
                source = StaticKeys(policy.jwks, policy.issuer)
            elif source is None:
                url = policy.oidc_config_url or ""
                if url not in discovery:
                    discovery[url] = DiscoveryKeys(url, client=http_client)
                source = discovery[url]
            for client_id in policy.client_ids:
                known = self._signers.get(client_id)
                if known is None:
                    self._signers[client_id] = _Signer(policy, source)
                elif (known.policy.issuer, known.policy.oidc_config_url, known.policy.jwks) != (
                    policy.issuer,
                    policy.oidc_config_url,
                    policy.jwks,
                ):
                    raise ValueError(
                        f"client id {client_id!r} is configured with different identity providers"
                    )

    async def verify(self, token: str, origin: str | None) -> Identity:
        """Authenticate a bearer token presented with an ``Origin`` header.

        Args:
            token: the JWT from ``Authorization: Bearer``.
            origin: the ``Origin`` header: ``<vo>``, ``<vo>.<role>`` or ``<vo>:<role>``.

        Returns:
            The caller's identity: a synthetic DN from ``name``/``preferred_username`` (or
            ``sub``), the FQANs granted by the role and ``role:<x>`` scopes, the VO, the claims.

        Raises:
            TokenRejected: the token does not authenticate the caller; the message says why.
        """
        if len(token) > MAX_TOKEN_CHARS:
            raise TokenRejected(f"Token decode failure. token longer than {MAX_TOKEN_CHARS} characters")
        if not token.isascii():
            raise TokenRejected("Token decode failure. token contains non-ASCII characters")
        now = self._clock().timestamp()
        cache_key = (hashlib.sha256(token.encode("ascii")).digest(), origin)
        cached = self._cache.get(cache_key, now)
        if cached is not None:
            return cached
        try:
            identity, expires_at = await self._verify_uncached(token, origin, now)
        except TokenRejected as exc:
            logger.debug("bearer token rejected: %s", exc.reason)
            raise
        self._cache.put(cache_key, identity, min(expires_at, now + VERIFICATION_CACHE_SECONDS))
        return identity

    async def _verify_uncached(self, token: str, origin: str | None, now: float) -> tuple[Identity, float]:
        if origin is None or not origin.strip():
            raise TokenRejected("Token decode failure. Origin header is missing")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise _decode_failure(exc) from exc
        # Only RS256 is accepted: "none" and HMAC algorithms would let anyone mint tokens.
        if header.get("alg") != "RS256":
            raise TokenRejected("Token decode failure. the signing algorithm must be RS256")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenRejected("Token decode failure. kid is missing in the token header")
        if unverified.get("iss") is None:
            raise TokenRejected("Issuer is undefined in the token")
        client_id = self._select_client_id(unverified)
        claims, expires_at = await self._verified_claims(token, kid, client_id, now)

        vo, role = split_vo_role(origin.strip())
        if not vo or role == "" or len(origin) > _MAX_ORIGIN_CHARS:
            raise TokenRejected("Token decode failure. malformed Origin header")
        policy = self._by_vo_role.get((vo, role)) or self._by_vo_role.get((vo, None))
        if policy is None:
            raise TokenRejected(f"Unknown vo : {vo}")
        # Stricter than upstream: a token is only good for a VO whose files name its client, so an
        # identity provider trusted for one VO cannot vouch for membership of another.
        if client_id not in self._vo_client_ids[vo]:
            raise TokenRejected(f"client_id {client_id} is not registered for vo : {vo}")

        groups = _groups_of(claims, policy.groups_claim)
        name = claims.get("name")
        if groups is None and client_id in policy.robot_ids:
            groups = [f"{vo}/{role}" if role else vo]
            if name is None:
                name = f"robot {role}" if role else "robot"
        groups = groups or []
        if role is not None:
            if not _member(groups, f"{vo}/{role}"):
                raise TokenRejected(f"Not a member of the {vo}/{role} group")
        else:
            role = next((auto for auto in policy.auto_roles if _member(groups, f"{vo}/{auto}")), None)
            if role is None and not _member(groups, vo):
                raise TokenRejected(f"Not a member of the {vo} group")

        identity = Identity(
            dn=self._synthetic_dn(claims, name),
            fqans=self._fqans(claims, vo, role),
            method=AuthMethod.TOKEN,
            vo=vo,
            claims=claims,
        )
        return identity, expires_at

    def _select_client_id(self, unverified: Mapping[str, object]) -> str:
        # PanDA's order: a string audience, then the client_id claim, then the subject.
        for claim in ("aud", "client_id", "sub"):
            value = unverified.get(claim)
            if isinstance(value, str) and value in self._signers:
                return value
        raise TokenRejected("cannot extract client_id")

    async def _verified_claims(
        self, token: str, kid: str, client_id: str, now: float
    ) -> tuple[dict[str, object], float]:
        """The claims of a token with a valid signature, issuer, audience and times, and its expiry."""
        signer = self._signers[client_id]
        try:
            key = await signer.keys.signing_key(kid)
            expected_issuer = signer.policy.issuer or await signer.keys.issuer()
        except KeySourceError as exc:
            raise TokenRejected(f"Invalid token. {exc}") from exc
        if key is None:
            raise TokenRejected("Invalid token. no signing key matches the kid of the token")
        if not expected_issuer:
            raise TokenRejected("Invalid token. the identity provider publishes no issuer")
        bare_issuer = expected_issuer.rstrip("/")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=["RS256"],
                audience=client_id,
                issuer=(bare_issuer, bare_issuer + "/"),
                # exp is required although PanDA (PyJWT's default) accepts tokens without one:
                # a token that never expires cannot be revoked by waiting. Time claims are checked
                # below against the injectable clock that also governs the verification cache.
                options={
                    "require": ["iss", "aud", "exp"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"Invalid token. {str(exc)[:_MAX_REASON_DETAIL]}") from exc
        return claims, self._check_times(claims, now)

    def _check_times(self, claims: Mapping[str, object], now: float) -> float:
        """Check ``exp``, ``nbf`` and ``iat`` against the clock; returns ``exp``."""
        exp = _time_claim(claims, "exp", "Expiration Time")
        if exp is None:
            raise TokenRejected('Invalid token. Token is missing the "exp" claim')
        if exp <= now - self._leeway:
            raise TokenRejected("Invalid token. Signature has expired")
        nbf = _time_claim(claims, "nbf", "Not Before")
        if nbf is not None and nbf > now + self._leeway:
            raise TokenRejected("Invalid token. The token is not yet valid (nbf)")
        iat = _time_claim(claims, "iat", "Issued At")
        if iat is not None and iat > now + self._leeway:
            raise TokenRejected("Invalid token. The token is not yet valid (iat)")
        return exp

    @staticmethod
    def _synthetic_dn(claims: Mapping[str, object], name: object) -> str:
        # PanDA upper-cases the first letter of each whitespace-separated word of "name" and
        # lower-cases the rest ("TEST user" gives "Test User"). Compact user names, and so task
        # ownership, depend on matching that exactly, hence not str.capitalize(), which title-cases
        # the first letter and differs for characters such as "ß" or "ǆ".
        if isinstance(name, str) and name.strip():
            dn = " ".join(word[:1].upper() + word[1:].lower() for word in name.split())
            nickname = claims.get("preferred_username")
            if isinstance(nickname, str) and nickname:
                dn += f"/CN=nickname:{nickname}"
        else:
            sub = claims.get("sub")
            if not isinstance(sub, str) or not sub:
                raise TokenRejected("Invalid token. the token has neither name nor sub")
            dn = sub
        if _CONTROL_CHARS.search(dn):
            raise TokenRejected("Invalid token. name, preferred_username or sub contains control characters")
        return dn

    @staticmethod
    def _fqans(claims: Mapping[str, object], vo: str, role: str | None) -> tuple[str, ...]:
        fqans = [f"/{vo}/Role={role}"] if role else []
        scope = claims.get("scope")
        if isinstance(scope, str):
            fqans += [item[len("role:") :] for item in scope.split() if item.startswith("role:")]
        return tuple(dict.fromkeys(fqan for fqan in fqans if fqan))
