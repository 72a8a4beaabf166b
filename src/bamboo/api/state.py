"""The long-lived services one server process shares between requests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from bamboo.api.auth import CertificateCache
from bamboo.auth.local_issuer import ROLES as LOCAL_ROLES
from bamboo.auth.local_issuer import LocalIssuer
from bamboo.auth.oidc import TokenVerifier, load_policies_from_dir
from bamboo.auth.x509 import TrustStore
from bamboo.config import Settings
from bamboo.db.engine import Database
from bamboo.home import Home, KeyringSource
from bamboo.logic import users
from bamboo.logic.catalog import DataManagement, LocalCatalog
from bamboo.logic.clock import Clock
from bamboo.logic.dispatch import QueueStatusCache


class BanList:
    """The banned user names, re-read from the database at most every ``refresh_seconds``.

    Upstream refreshes every 10 minutes; ours is a setting (30 s by default) so a ban takes effect
    quickly on every replica without a query per request.
    """

    def __init__(self, db: Database, refresh_seconds: float) -> None:
        self._db = db
        self._refresh_seconds = refresh_seconds
        self._names: frozenset[str] = frozenset()
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()

    async def names(self) -> frozenset[str]:
        if self._fresh():
            return self._names
        async with self._lock:
            if not self._fresh():
                async with self._db.transaction(write=False) as conn:
                    self._names = frozenset(await users.banned_user_names(conn))
                self._loaded_at = time.monotonic()
        return self._names

    def _fresh(self) -> bool:
        return self._loaded_at is not None and time.monotonic() - self._loaded_at < self._refresh_seconds


@dataclass
class ServerState:
    """Services of a running server; built by :func:`build_state`."""

    settings: Settings
    db: Database
    clock: Clock
    trust: TrustStore
    voms_trust: TrustStore
    issuer: LocalIssuer
    token_verifier: TokenVerifier
    auth_configs: dict[str, dict[str, Any]]
    bans: BanList
    dm: DataManagement
    keyring: KeyringSource
    certificates: CertificateCache = field(default_factory=CertificateCache)
    queue_statuses: QueueStatusCache = field(default_factory=QueueStatusCache)
    # Wakes an agent of this process by name; a no-op where agents run elsewhere.
    wake: Callable[[str], None] = field(default=lambda _name: None)


def build_state(settings: Settings, home: Home, db: Database, clock: Clock) -> ServerState:
    """Assemble the services of one server process from its settings and prepared home."""
    trust = TrustStore.from_paths([home.ca_file, *settings.ca_dirs])
    voms_trust = TrustStore.from_paths([home.ca_file, *settings.voms_dirs])
    policies = dict(load_policies_from_dir(settings.auth_config_dir)) if settings.auth_config_dir else {}
    auth_configs = _served_auth_configs(settings)
    for local_vo in settings.local_token_vos:
        if local_vo in policies:
            raise ValueError(f"auth config dir defines VO {local_vo!r}, which the embedded issuer serves")
        policies[local_vo] = home.issuer.policy(local_vo)
        auth_configs[local_vo] = home.issuer.auth_config(local_vo)
        # panda-client and the pilot fetch the file named after their Origin, e.g. bamboo.production.
        for role in LOCAL_ROLES:
            auth_configs[f"{local_vo}.{role}"] = home.issuer.auth_config(local_vo)
    verifier = TokenVerifier(policies, clock=clock.now)
    return ServerState(
        settings=settings,
        db=db,
        clock=clock,
        trust=trust,
        voms_trust=voms_trust,
        issuer=home.issuer,
        token_verifier=verifier,
        auth_configs=auth_configs,
        bans=BanList(db, settings.ban_refresh_seconds),
        dm=LocalCatalog(),
        keyring=KeyringSource(settings),
    )


def _served_auth_configs(settings: Settings) -> dict[str, dict[str, Any]]:
    """The external ``<vo>_auth_config.json`` files, served as they are under /auth/."""
    if settings.auth_config_dir is None:
        return {}
    configs: dict[str, dict[str, Any]] = {}
    for path in sorted(settings.auth_config_dir.glob("*_auth_config.json")):
        configs[path.name.removesuffix("_auth_config.json")] = orjson.loads(path.read_bytes())
    return configs
