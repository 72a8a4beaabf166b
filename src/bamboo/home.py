"""The server's home directory: database file, local CA, server certificate, token signing key,
the keyring that seals secrets at rest.

Created on first use with owner-only permissions, so `bamboo serve` works on a fresh machine and
the admin commands (`bamboo token issue`, `bamboo cert issue`) mint credentials the server trusts.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from bamboo.auth.local_ca import LocalCA, ensure_server_certificate
from bamboo.auth.local_issuer import LocalIssuer
from bamboo.config import Settings
from bamboo.logic.secrets import Keyring, SecretKey

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Home:
    path: Path
    ca: LocalCA
    issuer: LocalIssuer
    server_cert: Path
    server_key: Path

    @property
    def ca_file(self) -> Path:
        return self.path / "ca.pem"


ISSUER_FILE = "token-issuer.txt"


def _issuer_url(settings: Settings, path: Path) -> str:
    """The embedded issuer's ``iss``: the configured one, else the one recorded when the home was
    made, so tokens stay valid whichever ports a later run (or an admin command) uses."""
    if settings.token_issuer_url:
        return settings.token_issuer_url
    recorded = path / ISSUER_FILE
    if recorded.exists():
        return recorded.read_text().strip()
    port = settings.https_port or 25443
    url = f"https://{settings.server_hostnames[0]}:{port}/"
    recorded.write_text(url + "\n")
    return url


def prepare_home(settings: Settings) -> Home:
    """Create whatever is missing in the home and load the credentials in it."""
    path = settings.home.resolve()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca = LocalCA.load_or_create(path)
    server_cert, server_key = ensure_server_certificate(ca, path, hostnames=tuple(settings.server_hostnames))
    issuer = LocalIssuer.load_or_create(path, _issuer_url(settings, path))
    if settings.secrets_key is None:
        ensure_keyring_file(settings.effective_secrets_key_file)
    return Home(path=path, ca=ca, issuer=issuer, server_cert=server_cert, server_key=server_key)


MAX_KEYRING_BYTES = 64 * 1024


class KeyringError(ValueError):
    """The keyring file or the key setting cannot be used."""


def ensure_keyring_file(path: Path) -> None:
    """Create a keyring of one fresh key, mode 0600 from the start, unless the file exists.

    Published with link(), which fails when the target exists, so servers starting together agree
    on one key and nobody reads a half-written file.
    """
    if path.exists():
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    _write_private(tmp, _keyring_text([SecretKey.new()]))
    try:
        os.link(tmp, path)
    except FileExistsError:
        logger.info("secrets keyring %s was created concurrently; using that one", path)
    finally:
        tmp.unlink(missing_ok=True)


def write_keyring_file(path: Path, keys: list[SecretKey]) -> None:
    """Replace the keyring file atomically (0600); the last key seals new values."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    _write_private(tmp, _keyring_text(keys))
    os.replace(tmp, path)


def read_keyring_file(path: Path) -> list[SecretKey]:
    try:
        if path.stat().st_size > MAX_KEYRING_BYTES:
            raise KeyringError(f"secrets keyring {path} is larger than {MAX_KEYRING_BYTES} bytes")
        document = json.loads(path.read_bytes())
        keys = [SecretKey.from_base64(entry["key"]) for entry in document["keys"]]
        if [key.id for key in keys] != [entry["id"] for entry in document["keys"]]:
            raise KeyringError(f"secrets keyring {path}: a key id does not match its key")
    except OSError as exc:
        raise KeyringError(f"cannot read secrets keyring {path}: {exc.strerror}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyringError(f"secrets keyring {path} is not a valid keyring: {exc}") from exc
    if not keys:
        raise KeyringError(f"secrets keyring {path} holds no key")
    return keys


def _keyring_text(keys: list[SecretKey]) -> bytes:
    entries = [{"id": key.id, "key": key.to_base64()} for key in keys]
    return json.dumps({"keys": entries}, indent=1).encode() + b"\n"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


class KeyringSource:
    """The keyring in force: the key setting, or the keyring file, read again whenever it changes
    (so a `bamboo secrets rotate-key` reaches running servers without a restart)."""

    def __init__(self, settings: Settings) -> None:
        self._setting = settings.secrets_key
        self.path = settings.effective_secrets_key_file
        self._stamp: tuple[int, int, int] | None = None
        self._keyring: Keyring | None = None

    @property
    def rotatable(self) -> bool:
        return self._setting is None

    def keyring(self) -> Keyring:
        if self._setting is not None:
            if self._keyring is None:
                try:
                    self._keyring = Keyring([SecretKey.from_base64(self._setting.get_secret_value())])
                except ValueError as exc:
                    raise KeyringError(f"BAMBOO_SECRETS_KEY is not usable: {exc}") from exc
            return self._keyring
        try:
            info = self.path.stat()
        except OSError as exc:
            raise KeyringError(f"cannot read secrets keyring {self.path}: {exc.strerror}") from exc
        stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        if self._keyring is None or stamp != self._stamp:
            self._keyring = Keyring(read_keyring_file(self.path))
            self._stamp = stamp
        return self._keyring
