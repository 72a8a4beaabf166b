"""What a handler receives besides its parameters: the request's identity, transaction and server."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request

from bamboo.auth.identity import Identity

if TYPE_CHECKING:
    from bamboo.api.state import ServerState


@dataclass(slots=True)
class Call:
    """One API call in progress.

    Attributes:
        request: the HTTP request (headers, client address, URL).
        state: the server's long-lived services and settings.
        identity: the verified caller, or None for anonymous calls to public endpoints.
        conn: the open transaction, when the endpoint declared one.
        on_commit: actions to run once the transaction has committed (waking agents).
    """

    request: Request
    state: ServerState
    identity: Identity | None
    conn: AsyncConnection | None = None
    on_commit: list[Callable[[], None]] = field(default_factory=list)

    @property
    def db(self) -> AsyncConnection:
        if self.conn is None:
            raise RuntimeError("endpoint declared no transaction")
        return self.conn

    @property
    def caller(self) -> Identity:
        """The identity of a secure endpoint's caller (the dispatcher guarantees one)."""
        if self.identity is None:
            raise RuntimeError("secure endpoint called without identity")
        return self.identity
