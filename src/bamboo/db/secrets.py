"""Queries on the sealed credential tables: user_secrets and cached_credentials."""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.rows import skips_locked
from bamboo.db.schema import cached_credentials, user_secrets


async def user_secrets_row(conn: AsyncConnection, owner: str, *, lock: bool = False) -> dict[str, Any] | None:
    """The owner's sealed secrets. With ``lock`` (read-modify-write), changes of one owner's
    secrets are serialised until the transaction ends, so concurrent ones do not lose each other.

    PostgreSQL takes a transaction advisory lock on the owner rather than a row lock, because an
    owner's first secrets have no row to lock yet; SQLite has one writer at a time anyway.
    """
    if lock and skips_locked(conn):
        await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_owner_lock_key(owner))))
    query = sa.select(user_secrets).where(user_secrets.c.owner == owner)
    row = (await conn.execute(query)).mappings().first()
    return dict(row) if row is not None else None


def _owner_lock_key(owner: str) -> int:
    digest = hashlib.sha256(b"bamboo user_secrets\0" + owner.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def put_user_secrets(
    conn: AsyncConnection, owner: str, key_id: str, sealed: bytes, now: datetime
) -> None:
    await _upsert(
        conn, user_secrets, {"owner": owner}, {"key_id": key_id, "sealed": sealed, "updated_at": now}
    )


def _insert(conn: AsyncConnection) -> Any:
    return sqlite_insert if conn.dialect.name == "sqlite" else postgresql_insert


async def _upsert(
    conn: AsyncConnection, table: sa.Table, key: dict[str, Any], values: dict[str, Any]
) -> None:
    # One statement: two first writes for the same key cannot fail on the primary key.
    statement = _insert(conn)(table).values(**key, **values)
    await conn.execute(
        statement.on_conflict_do_update(index_elements=[table.c[name] for name in key], set_=values)
    )


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


async def subjects_with_credential(
    conn: AsyncConnection, kind: str, subjects: Collection[str], role: str
) -> set[str]:
    """Which of ``subjects`` have a stored credential of ``kind`` for ``role``, in one query."""
    if not subjects:
        return set()
    query = sa.select(cached_credentials.c.subject).where(
        cached_credentials.c.kind == kind,
        cached_credentials.c.role == role,
        cached_credentials.c.subject.in_(sorted(subjects)),
    )
    return set((await conn.execute(query)).scalars())


async def put_credential(
    conn: AsyncConnection, kind: str, subject: str, role: str, key_id: str, sealed: bytes, now: datetime
) -> None:
    key = {"kind": kind, "subject": subject, "role": role}
    await _upsert(conn, cached_credentials, key, {"key_id": key_id, "sealed": sealed, "updated_at": now})


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
