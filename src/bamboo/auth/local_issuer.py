"""The embedded server's own OIDC issuer.

A stand-alone Bamboo has no identity provider to lean on, so it signs its own ID tokens with a
local RSA key and publishes what PanDA clients and the verifier need: a JWKS, a discovery
document and the ``/auth/<vo>_auth_config.json`` content (clients.md §6.3). Tokens carry the
claims PanDA clients read (``name``, ``preferred_username``, ``groups``, ``exp``) and that the
server checks (``iss``, ``aud``, ``kid``, RS256 signature).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bamboo.auth.oidc import StaticKeys, VOPolicy

logger = logging.getLogger(__name__)

LOCAL_CLIENT_ID = "bamboo"
DEFAULT_VO = "bamboo"
KEY_FILE_NAME = "token-signing.key"
ROLES = ("production", "pilot")
DEFAULT_LIFETIME = timedelta(days=1)
MAX_LIFETIME = timedelta(days=30)

_KEY_BITS = 2048
_MAX_USER_LENGTH = 128
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# An Origin "<vo>.<role>" is split at its last dot, so a dotted VO name only survives in the
# EGI style "vo.example.org", which Origin parsing keeps whole.
_VO_NAME = re.compile(r"^(?:vo\.[A-Za-z0-9_.-]{1,61}|[A-Za-z0-9][A-Za-z0-9_-]{0,63})$")


def _b64url_uint(value: int) -> str:
    """Base64url (no padding) of the minimal big-endian encoding of a non-negative integer."""
    raw = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _with_trailing_slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


class LocalIssuer:
    """Signs tokens for the embedded server and publishes the matching public metadata.

    Construct with :meth:`load_or_create`; the private key never leaves this object.
    """

    def __init__(self, private_key: rsa.RSAPrivateKey, issuer_url: str) -> None:
        """Wrap an already-loaded key.

        Args:
            private_key: the RSA signing key (at least 2048 bits).
            issuer_url: the ``iss`` value, e.g. ``http://127.0.0.1:25080/``.

        Raises:
            ValueError: the key is too short or the issuer URL is not http(s).
        """
        if private_key.key_size < _KEY_BITS:
            raise ValueError(f"token signing key must have at least {_KEY_BITS} bits")
        if not issuer_url.startswith(("https://", "http://")):
            raise ValueError("issuer URL must be an http(s) URL")
        self._private_key = private_key
        self.issuer_url = issuer_url
        numbers = private_key.public_key().public_numbers()
        self._n = _b64url_uint(numbers.n)
        self._e = _b64url_uint(numbers.e)
        # RFC 7638 thumbprint: stable across restarts and unique per key, so a key rotation
        # (deleting the key file) is visible to verifiers as a new kid.
        canonical = json.dumps({"e": self._e, "kty": "RSA", "n": self._n}, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode("ascii")).digest()
        self.kid = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    @classmethod
    def load_or_create(cls, home: Path, issuer_url: str) -> LocalIssuer:
        """Load ``home/token-signing.key``, generating it on first use.

        Args:
            home: the server's state directory (created if missing).
            issuer_url: the ``iss`` value of issued tokens.

        Returns:
            The issuer.

        Raises:
            ValueError: the existing key file is not an RSA private key of sufficient size.
        """
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = home / KEY_FILE_NAME
        if not path.exists():
            cls._create_key_file(path)
        mode = path.stat().st_mode
        if mode & 0o077:
            logger.warning("token signing key %s is accessible by other users (mode %o)", path, mode & 0o777)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path} does not hold an RSA private key")
        return cls(key, issuer_url)

    @staticmethod
    def _create_key_file(path: Path) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=_KEY_BITS)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # Written under a private temporary name and published with link(), which fails if the
        # target exists: concurrently starting workers then agree on one key, and nobody ever
        # reads a half-written file.
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                logger.info("token signing key %s was created concurrently; using that one", path)
        finally:
            tmp.unlink(missing_ok=True)

    def issue_token(
        self,
        *,
        user: str,
        vo: str = DEFAULT_VO,
        role: str | None = None,
        lifetime: timedelta = DEFAULT_LIFETIME,
        now: datetime | None = None,
        groups: Sequence[str] | None = None,
    ) -> str:
        """Sign an ID token as clients.md §6.3 describes.

        Args:
            user: the display name, e.g. ``Test User``; it becomes ``name``, and lower-cased
                without whitespace ``preferred_username``.
            vo: the VO put in ``groups``.
            role: ``production`` or ``pilot`` to add the ``<vo>/<role>`` group.
            lifetime: validity, more than zero and at most 30 days.
            now: the issue time (default: the current time).
            groups: further groups appended after the VO and role groups.

        Returns:
            The compact JWS.

        Raises:
            ValueError: an argument is out of range.
        """
        if not user or not user.strip():
            raise ValueError("user must not be empty")
        if len(user) > _MAX_USER_LENGTH:
            raise ValueError(f"user must be at most {_MAX_USER_LENGTH} characters")
        if _CONTROL_CHARS.search(user):
            raise ValueError("user must not contain control characters")
        _check_vo(vo)
        if role is not None and role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        if lifetime <= timedelta(0) or lifetime > MAX_LIFETIME:
            raise ValueError("lifetime must be more than zero and at most 30 days")
        extra = list(groups or ())
        if any(not isinstance(group, str) or not group or _CONTROL_CHARS.search(group) for group in extra):
            raise ValueError("groups must be non-empty strings without control characters")

        issued = int((now or datetime.now(UTC)).timestamp())
        token_groups = [vo] if role is None else [vo, f"{vo}/{role}"]
        token_groups += [group for group in extra if group not in token_groups]
        claims = {
            "iss": self.issuer_url,
            "aud": LOCAL_CLIENT_ID,
            "sub": f"bamboo:{user}",
            "name": user,
            "preferred_username": "".join(user.lower().split()),
            "groups": token_groups,
            "iat": issued,
            "nbf": issued,
            "exp": issued + int(lifetime.total_seconds()),
        }
        return jwt.encode(claims, self._private_key, algorithm="RS256", headers={"kid": self.kid})

    def jwks(self) -> dict:
        """The public key set served at ``.well-known/jwks.json``."""
        return {
            "keys": [
                {"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256", "n": self._n, "e": self._e}
            ]
        }

    def discovery_document(self) -> dict:
        """The OpenID discovery document served at ``.well-known/openid-configuration``."""
        return {
            "issuer": self.issuer_url,
            "jwks_uri": _with_trailing_slash(self.issuer_url) + ".well-known/jwks.json",
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def auth_config(self, vo: str = DEFAULT_VO) -> dict:
        """The content of ``/auth/<vo>_auth_config.json`` that panda-client fetches.

        Args:
            vo: the VO the file describes.

        Returns:
            The JSON object with ``client_id``, ``audience``, ``client_secret``,
            ``oidc_config_url`` and ``vo``.
        """
        _check_vo(vo)
        return {
            "client_id": LOCAL_CLIENT_ID,
            "audience": LOCAL_CLIENT_ID,
            "client_secret": None,
            "oidc_config_url": _with_trailing_slash(self.issuer_url) + ".well-known/openid-configuration",
            "vo": vo,
        }

    def policy(self, vo: str = DEFAULT_VO) -> VOPolicy:
        """A verifier policy for this issuer's tokens with the JWKS inline (no network needed).

        Args:
            vo: the VO the policy admits.
        """
        config = self.auth_config(vo)
        return VOPolicy(
            vo=vo,
            client_ids=(LOCAL_CLIENT_ID,),
            issuer=self.issuer_url,
            jwks=self.jwks(),
            oidc_config_url=config["oidc_config_url"],
        )

    def key_source(self) -> StaticKeys:
        """The verifier key source for this issuer's tokens."""
        return StaticKeys(self.jwks(), self.issuer_url)


def _check_vo(vo: str) -> None:
    if not _VO_NAME.match(vo):
        raise ValueError("vo must be 1-64 letters, digits, '_' or '-' (or an EGI-style 'vo.<domain>')")
