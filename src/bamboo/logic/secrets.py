"""Credentials: per-user secrets, cached proxies and access tokens, key pairs, token keys.

Serves ``/api/v1/creds/*`` (api-v1.md §2.7, domain.md §9.2), the secrets a pilot receives with
its jobs, and the admin commands of ``bamboo secrets``.

Everything secret is sealed with AES-GCM before it reaches the database: a fresh random nonce per
write, and associated data naming the purpose, the owner and the key id, so a sealed value copied
to another owner's row (or another table) does not open. Each row records the id of the key that
sealed it, so keys can rotate while rows move to the new key batch by batch.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.auth.dn import bare_dn
from bamboo.db import secrets as secrets_db
from bamboo.db import users as users_db
from bamboo.logic.clock import Clock
from bamboo.logic.errors import BambooError, InvalidInput
from bamboo.logic.job_rows import USE_SECRETS_TOKEN

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
FILE_PREFIX = "___file___:"
#: Stands for upstream's database schema name in the permission messages.
META_SCHEMA = "BAMBOO"
#: The allow-list letters of ``users.gridpref``: proxies and access tokens, key pairs, token keys.
ALLOW_PROXY, ALLOW_KEY_PAIR, ALLOW_TOKEN_KEY = "p", "k", "t"
GRIDPREF_LETTERS = ALLOW_PROXY + ALLOW_KEY_PAIR + ALLOW_TOKEN_KEY

USER_SECRETS = "user-secrets"
PROXY = "proxy"
TOKEN = "token"  # noqa: S105 - the kind of a cached credential, not a secret

MAX_SECRET_KEY_CHARS = 512
MAX_CREDENTIAL_BYTES = 256 * 1024
MAX_NAME_CHARS = 256
MAX_DN_CHARS = 1024
MAX_TOKEN_KEYS_FILE_BYTES = 1024 * 1024
log = logging.getLogger(__name__)
_KEY_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


class SecretsUnavailable(BambooError):
    """A sealed value cannot be opened: its key is not in the keyring, or the value was altered."""


@dataclass(frozen=True)
class SecretKey:
    """One AES-256 key and its id (derived from the key, so two keyrings agree on ids)."""

    id: str
    material: bytes = b""

    @classmethod
    def of(cls, material: bytes) -> SecretKey:
        if len(material) != KEY_BYTES:
            raise ValueError(f"a secrets key has {KEY_BYTES} bytes, not {len(material)}")
        digest = hashlib.sha256(b"bamboo secrets key id\0" + material).hexdigest()
        return cls(digest[:16], material)

    @classmethod
    def new(cls) -> SecretKey:
        return cls.of(os.urandom(KEY_BYTES))

    @classmethod
    def from_base64(cls, text: str) -> SecretKey:
        try:
            material = base64.b64decode(text.strip(), validate=True)
        except ValueError as exc:
            raise ValueError("a secrets key must be base64") from exc
        return cls.of(material)

    def to_base64(self) -> str:
        return base64.b64encode(self.material).decode("ascii")

    def __repr__(self) -> str:
        return f"SecretKey(id={self.id!r})"  # never the material


@dataclass(frozen=True)
class Sealed:
    key_id: str
    blob: bytes  # nonce followed by the AES-GCM ciphertext and tag


class Keyring:
    """The keys that open sealed values; the last one seals new values."""

    def __init__(self, keys: Sequence[SecretKey]) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        self.keys = tuple(keys)
        self._by_id = {key.id: key for key in self.keys}

    @property
    def current(self) -> SecretKey:
        return self.keys[-1]

    def seal(self, purpose: str, owner: str, plaintext: bytes) -> Sealed:
        key = self.current
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(key.material).encrypt(nonce, plaintext, _associated(purpose, owner, key.id))
        return Sealed(key.id, nonce + sealed)

    def open(self, purpose: str, owner: str, sealed: Sealed) -> bytes:
        key = self._by_id.get(sealed.key_id)
        if key is None:
            raise SecretsUnavailable(
                f"a stored {purpose} value is sealed with key {sealed.key_id}, not in the keyring"
            )
        nonce, body = sealed.blob[:NONCE_BYTES], sealed.blob[NONCE_BYTES:]
        if len(body) < TAG_BYTES:
            raise SecretsUnavailable(f"a stored {purpose} value is truncated")
        try:
            return AESGCM(key.material).decrypt(nonce, body, _associated(purpose, owner, key.id))
        except InvalidTag as exc:
            raise SecretsUnavailable(f"a stored {purpose} value does not open: altered or misplaced") from exc

    def reseal(self, purpose: str, owner: str, sealed: Sealed) -> Sealed:
        return self.seal(purpose, owner, self.open(purpose, owner, sealed))


def _associated(purpose: str, owner: str, key_id: str) -> bytes:
    # Binds a ciphertext to its table, row owner and key: a copy elsewhere fails authentication.
    return b"\0".join(
        (b"bamboo-v1", purpose.encode(), key_id.encode(), owner.encode("utf-8", "surrogatepass"))
    )


@dataclass(frozen=True)
class SecretLimits:
    max_value_bytes: int
    max_user_bytes: int
    max_keys: int


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


async def _load_user_secrets(
    conn: AsyncConnection, keyring: Keyring, owner: str, *, lock: bool = False
) -> dict[str, str]:
    row = await secrets_db.user_secrets_row(conn, owner, lock=lock)
    if row is None:
        return {}
    plaintext = keyring.open(USER_SECRETS, owner, Sealed(row["key_id"], row["sealed"]))
    data: dict[str, str] = json.loads(plaintext)
    return data


async def set_user_secret(
    conn: AsyncConnection,
    clock: Clock,
    keyring: Keyring,
    limits: SecretLimits,
    owner: str,
    key: str | None,
    value: str | None,
) -> None:
    """creds/set_user_secrets: ``key`` None deletes all, ``value`` None deletes ``key`` and its
    ``___file___:`` twin, otherwise ``key`` is set to ``value``.

    Raises:
        InvalidInput: the key or value is too long, or the user would exceed a limit.
        SecretsUnavailable: the stored secrets cannot be opened with the keyring.
    """
    if key is None:
        await secrets_db.delete_user_secrets(conn, owner)
        return
    if not key or len(key) > MAX_SECRET_KEY_CHARS:
        raise InvalidInput(f"secret key must have 1 to {MAX_SECRET_KEY_CHARS} characters")
    if value is not None and _utf8_size(value) > limits.max_value_bytes:
        raise InvalidInput(f"secret value of {key!r} is larger than {limits.max_value_bytes} bytes")
    data = await _load_user_secrets(conn, keyring, owner, lock=True)
    if value is None:
        data.pop(key, None)
        data.pop(FILE_PREFIX + key, None)
    else:
        data[key] = value
        if len(data) > limits.max_keys:
            raise InvalidInput(f"at most {limits.max_keys} secrets per user; delete some first")
        total = sum(_utf8_size(k) + _utf8_size(v) for k, v in data.items())
        if total > limits.max_user_bytes:
            raise InvalidInput(f"a user's secrets may total at most {limits.max_user_bytes} bytes")
    if not data:
        await secrets_db.delete_user_secrets(conn, owner)
        return
    sealed = keyring.seal(USER_SECRETS, owner, json.dumps(data).encode())
    await secrets_db.put_user_secrets(conn, owner, sealed.key_id, sealed.blob, clock.now())


async def get_user_secrets(
    conn: AsyncConnection, keyring: Keyring, owner: str, keys: Sequence[str] | None = None
) -> dict[str, str]:
    """The owner's secrets, only those named in ``keys`` when given."""
    data = await _load_user_secrets(conn, keyring, owner)
    if keys is None:
        return data
    wanted = set(keys)
    return {key: value for key, value in data.items() if key in wanted}


async def secrets_for_jobs(
    conn: AsyncConnection, keyring: Keyring, jobs: Sequence[dict[str, Any]], pilot_owner: str | None
) -> list[dict[str, str]]:
    """The secret keys of each dispatched job's description (domain.md §9.2), as JSON strings:
    ``secrets`` (the owner's) for jobs flagged ``us``, ``pilotSecrets`` for all when configured."""
    cache: dict[str, str] = {}

    async def text_of(owner: str) -> str:
        if owner not in cache:
            cache[owner] = await pilot_secrets_text(conn, keyring, owner)
        return cache[owner]

    extras: list[dict[str, str]] = []
    for job in jobs:
        extra: dict[str, str] = {}
        if uses_secrets(job) and job.get("prodUserName"):
            extra["secrets"] = await text_of(job["prodUserName"])
        if pilot_owner:
            extra["pilotSecrets"] = await text_of(pilot_owner)
        extras.append(extra)
    return extras


async def pilot_secrets_text(conn: AsyncConnection, keyring: Keyring, owner: str) -> str:
    """An owner's secrets as the JSON text a pilot receives; ``"{}"`` when they do not open (one
    user's unreadable row must not stop dispatch to everyone; the cause is logged)."""
    try:
        return json.dumps(await get_user_secrets(conn, keyring, owner))
    except SecretsUnavailable as exc:
        log.error("secrets of %r not sent to the pilot: %s", owner, exc.message)
        return "{}"


async def proxy_keys_for_jobs(
    conn: AsyncConnection, jobs: Sequence[Mapping[str, Any]], fetch_from: str
) -> list[dict[str, str]]:
    """The proxy key of each dispatched job (``get_proxy_key``, api-v1.md §2.3): ``credname`` (the
    owner's DN without proxy CNs, the ``dn`` for which ``creds/get_proxy`` answers the owner's
    proxy) and ``myproxy`` (``fetch_from``, the server base to ask) when the owner
    (``prodUserID``) has a stored proxy without role; nothing otherwise. One query covers every
    owner of the batch."""
    # A task submitted with an RFC 3820 proxy records the proxy's subject (numeric CNs at the end);
    # proxies are put in under the user's own DN.
    owners = [
        bare_dn(job["prodUserID"], keep_digits=False) if job.get("prodUserID") else None for job in jobs
    ]
    with_proxy = await secrets_db.subjects_with_credential(
        conn, PROXY, {owner for owner in owners if owner}, role=""
    )
    return [{"credname": owner, "myproxy": fetch_from} if owner in with_proxy else {} for owner in owners]


def uses_secrets(job: Mapping[str, Any]) -> bool:
    return USE_SECRETS_TOKEN in (job.get("specialHandling") or "").split(",")


# --- allow-lists -------------------------------------------------------------------------------


async def allowed(conn: AsyncConnection, name: str, letter: str) -> bool:
    return letter in (await users_db.gridpref(conn, name) or "")


async def change_allowances(
    conn: AsyncConnection, clock: Clock, name: str, letters: str, *, allow: bool
) -> str:
    """Add (``allow``) or remove the given allow-list letters of a user; returns the new letters."""
    name = name.strip()
    if not name or len(name) > MAX_NAME_CHARS or any(ord(c) < 32 for c in name):
        raise InvalidInput(f"invalid user name {name!r}: 1-{MAX_NAME_CHARS} printable characters")
    unknown = set(letters) - set(GRIDPREF_LETTERS)
    if unknown or not letters:
        raise InvalidInput(f"allow-list letters are among {GRIDPREF_LETTERS!r}")
    current = set(await users_db.gridpref(conn, name) or "")
    updated = current | set(letters) if allow else current - set(letters)
    text = "".join(letter for letter in GRIDPREF_LETTERS if letter in updated)
    await users_db.set_gridpref(conn, name, text or None, clock.now())
    return text


# --- key pairs and token keys from configuration ----------------------------------------------


def _key_file(directory: Path, name: str) -> Path | None:
    if not _KEY_FILE_NAME.fullmatch(name):
        return None
    path = directory / name
    return path if path.is_file() else None


async def key_pair(
    conn: AsyncConnection, caller: str, directory: Path | None, server: str, public: str, private: str
) -> dict[str, str]:
    """creds/get_key_pair: the two key files from ``directory`` for a caller allowed ``k``."""
    if not await allowed(conn, caller, ALLOW_KEY_PAIR):
        raise BambooError(
            f"Failed since '{caller}' not authorized with '{ALLOW_KEY_PAIR}' in {META_SCHEMA}.USERS.GRIDPREF"
        )
    texts = {}
    for label, name in (("public_key", public), ("private_key", private)):
        path = _key_file(directory, name) if directory is not None else None
        if path is None or path.stat().st_size > MAX_CREDENTIAL_BYTES:
            raise BambooError(f"Failed for '{caller}' since {name} is missing on {server}")
        texts[label] = path.read_text()
    return texts


def token_keys(path: Path | None) -> dict[str, list[str]]:
    """The configured token keys per client name (latest last); {} when none are configured.

    Raises:
        BambooError: the file is unreadable, too large or not ``{client: [keys...]}``.
    """
    if path is None:
        return {}
    try:
        if path.stat().st_size > MAX_TOKEN_KEYS_FILE_BYTES:
            raise BambooError("token keys file is too large")
        document = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise BambooError("token keys file cannot be read") from exc
    if not isinstance(document, dict) or not all(
        isinstance(keys, list) and all(isinstance(key, str) for key in keys) for keys in document.values()
    ):
        raise BambooError("token keys file is not a JSON object of client name -> list of keys")
    return {client: list(keys) for client, keys in document.items()}


async def latest_token_key(conn: AsyncConnection, caller: str, keys_file: Path | None, client: str) -> str:
    """creds/get_token_key: the latest key of ``client`` for a caller allowed ``t``."""
    if not await allowed(conn, caller, ALLOW_TOKEN_KEY):
        raise BambooError(
            f"Denied since '{caller}' not authorized with '{ALLOW_TOKEN_KEY}' in {META_SCHEMA}.USERS.GRIDPREF"
        )
    keys = token_keys(keys_file).get(client)
    if not keys:
        raise BambooError(f"Token key is missing for '{client}'")
    return keys[-1]


# --- cached proxies and access tokens ---------------------------------------------------------


def _proxy_denied(caller: str, what: str) -> BambooError:
    return BambooError(
        f"failed: '{caller}' not in authorized users with '{ALLOW_PROXY}' in {META_SCHEMA}.USERS.GRIDPREF "
        f"to get {what}"
    )


def _credential_owner(kind: str, subject: str, role: str) -> str:
    return f"{kind}\0{subject}\0{role}"


async def store_credential(
    conn: AsyncConnection, clock: Clock, keyring: Keyring, kind: str, subject: str, role: str, text: str
) -> None:
    """Seal and store (replacing) a cached proxy (subject: bare DN) or access token (subject: client)."""
    if kind not in (PROXY, TOKEN):
        raise InvalidInput(f"unknown credential kind {kind!r}")
    subject = bare_dn(subject) if kind == PROXY else subject
    limit = MAX_DN_CHARS if kind == PROXY else MAX_NAME_CHARS
    if not subject or len(subject) > limit or len(role) > MAX_NAME_CHARS:
        raise InvalidInput(f"{kind} subject must have 1 to {limit} characters, role at most {MAX_NAME_CHARS}")
    if not text or _utf8_size(text) > MAX_CREDENTIAL_BYTES:
        raise InvalidInput(f"a {kind} must have 1 to {MAX_CREDENTIAL_BYTES} bytes")
    sealed = keyring.seal(kind, _credential_owner(kind, subject, role), text.encode())
    await secrets_db.put_credential(conn, kind, subject, role, sealed.key_id, sealed.blob, clock.now())


async def _credential(
    conn: AsyncConnection, keyring: Keyring, kind: str, subject: str, role: str
) -> str | None:
    row = await secrets_db.credential_row(conn, kind, subject, role)
    if row is None:
        return None
    owner = _credential_owner(kind, subject, role)
    return keyring.open(kind, owner, Sealed(row["key_id"], row["sealed"])).decode()


async def proxy(
    conn: AsyncConnection, keyring: Keyring, caller: str, caller_dn: str, dn: str | None, role: str | None
) -> str:
    """creds/get_proxy: the cached proxy of ``dn`` (default: the caller) for ``role``."""
    if not await allowed(conn, caller, ALLOW_PROXY):
        raise _proxy_denied(caller, "proxy")
    subject = bare_dn(dn if dn else caller_dn)
    if len(subject) > MAX_DN_CHARS or (role and len(role) > MAX_NAME_CHARS):
        raise InvalidInput(f"dn must have at most {MAX_DN_CHARS} characters, role {MAX_NAME_CHARS}")
    text = await _credential(conn, keyring, PROXY, subject, role or "")
    if text is None:
        raise BambooError(f"'proxy' not found for {subject}")
    return text


async def access_token(
    conn: AsyncConnection,
    keyring: Keyring,
    caller: str,
    keys_file: Path | None,
    client: str,
    token_key: str | None,
) -> str:
    """creds/get_access_token: the cached token of ``client``; clients with configured token keys
    need one of them."""
    if not await allowed(conn, caller, ALLOW_PROXY):
        raise _proxy_denied(caller, "access token")
    if len(client) > MAX_NAME_CHARS:
        raise InvalidInput(f"client_name must have at most {MAX_NAME_CHARS} characters")
    keys = token_keys(keys_file).get(client)
    if keys is not None and token_key not in keys:
        raise BambooError(f"failed since token key is invalid for {client}")
    text = await _credential(conn, keyring, TOKEN, client, "")
    if text is None:
        raise BambooError(f"'token' not found for {client}")
    return text


# --- key rotation -----------------------------------------------------------------------------


@dataclass
class RotationCount:
    user_secrets: int = 0
    credentials: int = 0
    skipped: int = 0  # rewritten by a server meanwhile, already under the new key


async def reseal_batch(
    conn: AsyncConnection, keyring: Keyring, batch_size: int, counts: RotationCount
) -> bool:
    """Move up to ``batch_size`` rows sealed with an older key to the current key, in this
    transaction; returns False when no row was left. A row a server rewrote between the read and
    the update (its key id or time changed) is left as the server wrote it."""
    current = keyring.current.id
    moved = 0
    for row in await secrets_db.user_secrets_not_under(conn, current, batch_size):
        sealed = keyring.reseal(USER_SECRETS, row["owner"], Sealed(row["key_id"], row["sealed"]))
        if await secrets_db.replace_user_secrets_seal(conn, row, sealed.key_id, sealed.blob):
            counts.user_secrets += 1
        else:
            counts.skipped += 1
        moved += 1
    for row in await secrets_db.credentials_not_under(conn, current, batch_size - moved):
        owner = _credential_owner(row["kind"], row["subject"], row["role"])
        sealed = keyring.reseal(row["kind"], owner, Sealed(row["key_id"], row["sealed"]))
        if await secrets_db.replace_credential_seal(conn, row, sealed.key_id, sealed.blob):
            counts.credentials += 1
        else:
            counts.skipped += 1
        moved += 1
    return moved > 0


async def key_ids_in_use(conn: AsyncConnection) -> set[str]:
    return await secrets_db.key_ids_in_use(conn)
