"""Users known to the server and the ban list (PanDA's USERS table, status ``disabled``)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import users as users_db
from bamboo.logic.clock import Clock
from bamboo.logic.errors import InvalidInput

BANNED_STATUS = "disabled"
ACTIVE_STATUS = "active"
_MAX_NAME = 256


def _checked_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > _MAX_NAME or any(ord(c) < 32 for c in name):
        raise InvalidInput(f"invalid user name {name!r}: 1-{_MAX_NAME} printable characters")
    return name


async def banned_user_names(conn: AsyncConnection) -> list[str]:
    return await users_db.names_with_status(conn, BANNED_STATUS)


async def ban(conn: AsyncConnection, clock: Clock, name: str) -> None:
    """Ban a compact user name; every request from that user is then refused with HTTP 403."""
    await users_db.upsert_status(conn, _checked_name(name), BANNED_STATUS, clock.now())


async def unban(conn: AsyncConnection, clock: Clock, name: str) -> bool:
    """Lift a ban. Returns False when the user was not banned."""
    name = _checked_name(name)
    if name not in await banned_user_names(conn):
        return False
    await users_db.upsert_status(conn, name, ACTIVE_STATUS, clock.now())
    return True


async def banned_users_map(conn: AsyncConnection) -> dict[str, bool]:
    """metaconfig/get_banned_users: ``{name: False}`` per banned user (upstream's shape)."""
    return {name: False for name in await banned_user_names(conn)}
