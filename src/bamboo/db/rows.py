"""Helpers every query module shares."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import visitors


def skips_locked(conn: AsyncConnection) -> bool:
    """Whether row claims can skip rows other transactions hold: PostgreSQL yes; SQLite has one
    writer at a time, so there is nothing to skip."""
    return conn.dialect.name == "postgresql"


def with_values_inline(query: sa.Select[Any]) -> sa.Select[Any]:
    """The query with its bound values written into the SQL text (they must be our own constants,
    never client input).

    PostgreSQL plans a prepared statement it ran five times once for all values (a generic plan)
    when that looks no dearer than planning each call; for the claims over a task's file rows
    (``status = 'ready'``...) that guess turned 0.2 ms into 0.1-1 s once the table statistics knew
    most rows are not ready. With the values in the text there is nothing to guess.
    """

    def inline(bind: sa.BindParameter[Any]) -> None:
        bind.literal_execute = True

    return visitors.cloned_traverse(query, {}, {"bindparam": inline})


def uniform(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give every row the same keys (missing ones None): one executemany needs one column list."""
    keys = {key for row in rows for key in row}
    return [{key: row.get(key) for key in keys} for row in rows]


async def update_each(
    conn: AsyncConnection, key: sa.Column[Any], updates: Iterable[tuple[Any, dict[str, Any]]]
) -> None:
    """Give each row (by its ``key`` column's value) its own values: one executemany of an UPDATE
    by key per set of columns, rows in key order (concurrent writers then lock them in one order).

    A batch agent's rows take a handful of column sets, so a batch of hundreds of rows costs a
    handful of round trips instead of one statement per row.
    """
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for value, values in sorted(updates, key=lambda update: update[0]):
        parameters = {f"new_{name}": item for name, item in values.items()}
        parameters["row_key"] = value
        groups.setdefault(tuple(sorted(values)), []).append(parameters)
    table = key.table
    for columns, parameters in groups.items():
        # Bind names differ from the column names: SQLAlchemy reserves those for its SET parameters.
        statement = (
            sa.update(table)
            .where(key == sa.bindparam("row_key"))
            .values({name: sa.bindparam(f"new_{name}", type_=table.c[name].type) for name in columns})
        )
        await conn.execute(statement, parameters)
