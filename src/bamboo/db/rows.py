"""Helpers every query module shares."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection


def skips_locked(conn: AsyncConnection) -> bool:
    """Whether row claims can skip rows other transactions hold: PostgreSQL yes; SQLite has one
    writer at a time, so there is nothing to skip."""
    return conn.dialect.name == "postgresql"


def uniform(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give every row the same keys (missing ones None): one executemany needs one column list."""
    keys = {key for row in rows for key in row}
    return [{key: row.get(key) for key in keys} for row in rows]
