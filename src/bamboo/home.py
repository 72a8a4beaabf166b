"""The server's home directory: database file, local CA, server certificate, token signing key.

Created on first use with owner-only permissions, so `bamboo serve` works on a fresh machine and
the admin commands (`bamboo token issue`, `bamboo cert issue`) mint credentials the server trusts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bamboo.auth.local_ca import LocalCA, ensure_server_certificate
from bamboo.auth.local_issuer import LocalIssuer
from bamboo.config import Settings


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
    return Home(path=path, ca=ca, issuer=issuer, server_cert=server_cert, server_key=server_key)
