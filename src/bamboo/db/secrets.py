"""Queries on the sealed credential tables: user_secrets and cached_credentials."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.schema import cached_credentials, user_secrets


async def user_secrets_row(conn: AsyncConnection, owner: str) -> dict[str, Any] | None:
    row = (
        (await conn.execute(sa.select(user_secrets).where(user_secrets.c.owner == owner))).mappings().first()
    )
    return dict(row) if row is not None else None


async def put_user_secrets(
    conn: AsyncConnection, owner: str, key_id: str, sealed: bytes, now: datetime
) -> None:
    values = {"key_id": key_id, "sealed": sealed, "updated_at": now}
    updated = await conn.execute(
        sa.update(user_secrets).where(user_secrets.c.owner == owner).values(**values)
    )
    if updated.rowcount == 0:
        await conn.execute(sa.insert(user_secrets).values(owner=owner, **values))


async def delete_user_secrets(conn: AsyncConnection, owner: str) -> None:
    await conn.execute(sa.delete(user_secrets).where(user_secrets.c.owner == owner))


def _credential_match(kind: str, subject: str, role: str) -> sa.ColumnElement[bool]:
    return sa.and_(
        cached_credentials.c.kind == kind,
        cached_credentials.c.subject == subject,
        cached_credentials.c.role == role,
    )


async def credential_row(conn: AsyncConnection, kind: str, subject: str, role: str) -> dict[str, Any] | None:
    query = sa.select(cached_credentials).where(_credential_match(kind, subject, role))
    row = (await conn.execute(query)).mappings().first()
    return dict(row) if row is not None else None


async def put_credential(
    conn: AsyncConnection, kind: str, subject: str, role: str, key_id: str, sealed: bytes, now: datetime
) -> None:
    values = {"key_id": key_id, "sealed": sealed, "updated_at": now}
    updated = await conn.execute(
        sa.update(cached_credentials).where(_credential_match(kind, subject, role)).values(**values)
    )
    if updated.rowcount == 0:
        await conn.execute(
            sa.insert(cached_credentials).values(kind=kind, subject=subject, role=role, **values)
        )


async def user_secrets_not_under(conn: AsyncConnection, key_id: str, limit: int) -> list[dict[str, Any]]:
    if limit <= 0:
        return []
    query = (
        sa.select(user_secrets)
        .where(user_secrets.c.key_id != key_id)
        .order_by(user_secrets.c.owner)
        .limit(limit)
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def credentials_not_under(conn: AsyncConnection, key_id: str, limit: int) -> list[dict[str, Any]]:
    if limit <= 0:
        return []
    table = cached_credentials
    query = (
        sa.select(table)
        .where(table.c.key_id != key_id)
        .order_by(table.c.kind, table.c.subject, table.c.role)
        .limit(limit)
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def replace_user_secrets_seal(
    conn: AsyncConnection, row: dict[str, Any], key_id: str, sealed: bytes
) -> bool:
    """Reseal a row read earlier, only if nobody rewrote it since (same key id and time)."""
    updated = await conn.execute(
        sa.update(user_secrets)
        .where(
            user_secrets.c.owner == row["owner"],
            user_secrets.c.key_id == row["key_id"],
            user_secrets.c.updated_at == row["updated_at"],
        )
        .values(key_id=key_id, sealed=sealed)
    )
    return updated.rowcount == 1


async def replace_credential_seal(
    conn: AsyncConnection, row: dict[str, Any], key_id: str, sealed: bytes
) -> bool:
    updated = await conn.execute(
        sa.update(cached_credentials)
        .where(
            _credential_match(row["kind"], row["subject"], row["role"]),
            cached_credentials.c.key_id == row["key_id"],
            cached_credentials.c.updated_at == row["updated_at"],
        )
        .values(key_id=key_id, sealed=sealed)
    )
    return updated.rowcount == 1


async def key_ids_in_use(conn: AsyncConnection) -> set[str]:
    query = sa.union(
        sa.select(user_secrets.c.key_id).distinct(), sa.select(cached_credentials.c.key_id).distinct()
    )
    return set((await conn.execute(query)).scalars())
