"""An in-process server (real app, real database, real signed credentials) behind httpx."""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from bamboo.api.app import create_app
from bamboo.api.state import ServerState, build_state
from bamboo.auth.local_ca import issue_user_credentials
from bamboo.config import Settings
from bamboo.db.engine import Database
from bamboo.home import Home, prepare_home
from bamboo.logic.clock import SystemClock


@dataclass
class ApiServer:
    """What API tests need: a client factory and the means to mint credentials."""

    state: ServerState
    home: Home
    app: Any
    tmp: Path

    def client(self, *, https: bool = True, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=("127.0.0.1", 50000))
        base = "https://testserver" if https else "http://testserver"
        return httpx.AsyncClient(transport=transport, base_url=base, headers=headers)

    def token_headers(
        self, user: str = "Jane Doe", role: str | None = None, vo: str = "bamboo"
    ) -> dict[str, str]:
        token = self.home.issuer.issue_token(user=user, vo=vo, role=role)
        origin = f"{vo}.{role}" if role else vo
        return {"Authorization": f"Bearer {token}", "Origin": origin}

    def cert_headers(self, dn: str, **options: Any) -> dict[str, str]:
        """Headers of a trusted TLS proxy forwarding a client certificate from the local CA."""
        prefix = self.tmp / f"cert{uuid.uuid4().hex}"
        pem, _key = issue_user_credentials(self.home.ca, dn=dn, out_prefix=prefix, **options)
        return {self.state.settings.proxy_cert_header: quote(pem.read_text())}


# Settings that change what prepare_home makes: a test setting one of them gets a home of its own.
_HOME_SHAPING_SETTINGS = {
    "server_hostnames",
    "https_port",
    "token_issuer_url",
    "secrets_key",
    "secrets_key_file",
}


@pytest.fixture(scope="session")
def home_template(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """A home made once (local CA, server certificate, token key, secrets keyring).

    Each API test gets a copy: making a home generates RSA keys and loading one validates them,
    a quarter of a second per test that nothing in a test depends on.
    """
    return prepare_home(Settings(home=tmp_path_factory.mktemp("home-template") / "home"))


def _copy_home(template: Home, path: Path) -> Home:
    shutil.copytree(template.path, path)
    return dataclasses.replace(
        template,
        path=path,
        server_cert=path / template.server_cert.relative_to(template.path),
        server_key=path / template.server_key.relative_to(template.path),
    )


@pytest.fixture
async def api_factory(
    db: Database, tmp_path: Path, home_template: Home
) -> AsyncIterator[Callable[..., ApiServer]]:
    def make(**settings: Any) -> ApiServer:
        values = {
            "home": tmp_path / "home",
            "trusted_proxies": ["127.0.0.1"],
            "ban_refresh_seconds": 0,
            **settings,
        }
        config = Settings(**values)
        if _HOME_SHAPING_SETTINGS.isdisjoint(settings) and not config.home.exists():
            home = _copy_home(home_template, config.home.resolve())
        else:
            home = prepare_home(config)
        state = build_state(config, home, db, SystemClock())
        return ApiServer(state=state, home=home, app=create_app(state), tmp=tmp_path)

    yield make


@pytest.fixture
async def api(api_factory: Callable[..., ApiServer]) -> ApiServer:
    return api_factory()
