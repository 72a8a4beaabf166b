"""Queries on the local dataset catalog."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.schema import catalog_datasets, catalog_files, tape_rules


async def dataset_exists(conn: AsyncConnection, name: str) -> bool:
    query = sa.select(catalog_datasets.c.name).where(catalog_datasets.c.name == name)
    return (await conn.execute(query)).first() is not None


async def ensure_dataset(conn: AsyncConnection, name: str, scope: str | None, now: datetime) -> None:
    """Create the dataset unless it exists.

    Agents of several processes register outputs of one task at once, so two transactions may
    both find the dataset missing: the insert skips a row another one made (and, on PostgreSQL,
    waits for that one to commit or roll back) instead of failing on the primary key.
    """
    insert = sqlite_insert if conn.dialect.name == "sqlite" else postgresql_insert
    await conn.execute(
        insert(catalog_datasets)
        .values(name=name, scope=scope, created_at=now)
        .on_conflict_do_nothing(index_elements=[catalog_datasets.c.name])
    )


async def files(conn: AsyncConnection, dataset: str) -> list[dict[str, Any]]:
    query = (
        sa.select(catalog_files).where(catalog_files.c.dataset == dataset).order_by(catalog_files.c.position)
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def add_files(conn: AsyncConnection, dataset: str, rows: list[dict[str, Any]], now: datetime) -> int:
    """Add files not yet in the dataset (by LFN); returns how many were new."""
    # Only the names being added are looked up: reading every name of a dataset that grows by a
    # few files per call (the finaliser's) made registering quadratic in the dataset's size.
    existing = set(
        (
            await conn.execute(
                sa.select(catalog_files.c.lfn).where(
                    catalog_files.c.dataset == dataset,
                    catalog_files.c.lfn.in_(sa.bindparam("names", expanding=True)),
                ),
                {"names": list({row["lfn"] for row in rows})},
            )
        ).scalars()
    )
    position = (
        await conn.execute(
            sa.select(sa.func.coalesce(sa.func.max(catalog_files.c.position), 0)).where(
                catalog_files.c.dataset == dataset
            )
        )
    ).scalar_one()
    new = []
    for row in rows:
        if row["lfn"] in existing:
            continue
        existing.add(row["lfn"])
        position += 1
        new.append({**row, "dataset": dataset, "position": position, "created_at": now})
    if new:
        await conn.execute(sa.insert(catalog_files), new)
    return len(new)


async def tape_rse(conn: AsyncConnection, dataset: str) -> str | None:
    query = sa.select(catalog_datasets.c.tape_rse).where(catalog_datasets.c.name == dataset)
    return (await conn.execute(query)).scalar()


async def set_residency(conn: AsyncConnection, dataset: str, rse: str | None) -> int:
    """Set the dataset's tape RSE; its files are on disk exactly when it has none. Returns the
    number of files."""
    await conn.execute(
        sa.update(catalog_datasets).where(catalog_datasets.c.name == dataset).values(tape_rse=rse)
    )
    result = await conn.execute(
        sa.update(catalog_files).where(catalog_files.c.dataset == dataset).values(on_disk=rse is None)
    )
    return result.rowcount


async def mark_on_disk(conn: AsyncConnection, dataset: str, lfns: list[str]) -> None:
    if not lfns:
        return
    await conn.execute(
        sa.update(catalog_files)
        .where(
            catalog_files.c.dataset == dataset,
            catalog_files.c.lfn.in_(sa.bindparam("names", expanding=True)),
            catalog_files.c.on_disk.is_(False),
        )
        .values(on_disk=True),
        {"names": lfns},
    )


# --- the tape simulator's rules (logic/tape_simulator.py) -----------------------------------------


async def insert_rule(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(sa.insert(tape_rules).values(**row))


async def rule(conn: AsyncConnection, rule_id: str) -> dict[str, Any] | None:
    found = (
        (await conn.execute(sa.select(tape_rules).where(tape_rules.c.rule_id == rule_id))).mappings().first()
    )
    return dict(found) if found else None


async def update_rule(conn: AsyncConnection, rule_id: str, **values: Any) -> None:
    await conn.execute(sa.update(tape_rules).where(tape_rules.c.rule_id == rule_id).values(**values))


async def count_rules(conn: AsyncConnection, dataset: str) -> int:
    query = sa.select(sa.func.count()).select_from(tape_rules).where(tape_rules.c.dataset == dataset)
    return (await conn.execute(query)).scalar_one()
