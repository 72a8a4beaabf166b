"""The worker's side of the v1 pilot calls, over HTTP(S) only, with a token of the home's issuer.

The worker authenticates as a production robot: it mints a bearer token for itself with the
embedded issuer of the server's home (as `bamboo token issue --role production` does), sends it
with ``Origin: <vo>.production``, and renews it well before it expires. The server's certificate is
verified against the home's local CA. So a worker needs read access to the server's home (the
issuer's signing key and the CA), which is what running on the same machine as the server means.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx

log = logging.getLogger(__name__)

TOKEN_LIFETIME = timedelta(hours=12)
# A token is replaced when half of its life is over, so a slow call never carries an expired one.
_TOKEN_RENEWAL_SECONDS = TOKEN_LIFETIME.total_seconds() / 2
REQUEST_TIMEOUT_SECONDS = 60.0
# Largest transformation the worker downloads.
MAX_TRANSFORMATION_BYTES = 16 * 1024 * 1024
WORKER_USER = "Bamboo Worker"


def local_server_url(host: str, https_port: int) -> str:
    """The HTTPS URL of a server on this machine listening on ``host``: a wildcard address is
    reached on loopback (which the server's certificate names)."""
    if host in ("0.0.0.0", "", "localhost"):  # noqa: S104 - read to reach the server, not to bind
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"https://[{host}]:{https_port}" if ":" in host else f"https://{host}:{https_port}"


class ServerError(Exception):
    """The server could not be reached or did not answer as the contract says."""


class TokenSource:
    """Bearer tokens minted on demand by a signing function, renewed before they expire."""

    def __init__(self, mint: Callable[[timedelta], str]) -> None:
        self._mint = mint
        self._token: str | None = None
        self._minted_at = 0.0

    def token(self) -> str:
        now = time.monotonic()
        if self._token is None or now - self._minted_at > _TOKEN_RENEWAL_SECONDS:
            self._token = self._mint(TOKEN_LIFETIME)
            self._minted_at = now
        return self._token


class PilotClient:
    """acquire_jobs and update_job as a pilot sends them (clients.md §4.4)."""

    def __init__(
        self,
        base_url: str,
        tokens: TokenSource,
        origin: str,
        verify: ssl.SSLContext | bool,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``transport``: another way to the server than the network (tests: the app in process)."""
        self._tokens = tokens
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Origin": origin, "Accept": "application/json", "User-Agent": "bamboo-worker"},
            verify=verify,
            timeout=REQUEST_TIMEOUT_SECONDS,
            transport=transport,
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def _post(self, function: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self._http.post(
                f"/api/v1/pilot/{function}",
                json=body,
                headers={"Authorization": f"Bearer {self._tokens.token()}"},
            )
        except httpx.HTTPError as exc:
            raise ServerError(f"pilot/{function}: {exc!r}") from exc
        if response.status_code != 200:
            raise ServerError(f"pilot/{function}: HTTP {response.status_code}: {response.text[:200]}")
        try:
            answer = response.json()
        except ValueError as exc:
            raise ServerError(f"pilot/{function}: the answer is not JSON") from exc
        if not isinstance(answer, dict):
            raise ServerError(f"pilot/{function}: the answer is not an envelope")
        return answer

    async def acquire_jobs(self, queue: str, n_jobs: int, node: str) -> list[dict[str, Any]]:
        """Up to ``n_jobs`` jobs of ``queue``; none when the server has none (``success: false``)."""
        answer = await self._post(
            "acquire_jobs",
            {
                "site_name": queue,
                "computing_element": queue,
                "prod_source_label": "unified",
                "node": node,
                "n_jobs": n_jobs,
                "scheduler_id": "bamboo-worker",
            },
        )
        data = answer.get("data")
        if not answer.get("success") or not isinstance(data, dict):
            return []
        jobs = data.get("jobs")
        if data.get("StatusCode") != 0 or not isinstance(jobs, list):
            return []
        return [job for job in jobs if isinstance(job, dict) and "PandaID" in job]

    async def update_job(self, report: dict[str, Any]) -> dict[str, Any]:
        """Send one job report; returns the answer's data (``StatusCode``, ``command``)."""
        answer = await self._post("update_job", report)
        data = answer.get("data")
        if not answer.get("success") or not isinstance(data, dict):
            raise ServerError(f"pilot/update_job refused the report: {answer.get('message')!r}")
        return data

    async def download(self, url: str, limit: int = MAX_TRANSFORMATION_BYTES) -> bytes:
        """The bytes at ``url`` (a transformation), at most ``limit`` of them."""
        try:
            async with self._http.stream("GET", url, follow_redirects=True) as response:
                if response.status_code != 200:
                    raise ServerError(f"GET {url}: HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise ServerError(f"GET {url}: larger than {limit} bytes")
                return bytes(body)
        except httpx.HTTPError as exc:
            raise ServerError(f"GET {url}: {exc!r}") from exc
