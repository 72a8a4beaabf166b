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


def prepare_home(settings: Settings) -> Home:
    """Create whatever is missing in the home and load the credentials in it."""
    path = settings.home.resolve()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca = LocalCA.load_or_create(path)
    server_cert, server_key = ensure_server_certificate(ca, path, hostnames=tuple(settings.server_hostnames))
    issuer = LocalIssuer.load_or_create(path, settings.effective_token_issuer_url)
    return Home(path=path, ca=ca, issuer=issuer, server_cert=server_cert, server_key=server_key)
