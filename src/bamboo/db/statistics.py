"""Job counts for the statistics endpoints: one aggregate query over the active and archived jobs.

A job is in exactly one of ``jobs`` and ``jobs_archive`` (db/archive.py moves it in one
transaction), so counting both tables never counts a job twice. The archive holds final jobs only.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.rows import with_values_inline
from bamboo.db.schema import (
    STATISTICS_FINAL_STATUSES,
    job_stats_totals,
    job_stats_windows,
    jobs,
    jobs_archive,
)
from bamboo.db.types import UTCDateTime

# The job columns a count may be grouped by (the statistics' dictionary levels).
GROUPABLE = frozenset(
    {"cloud", "computingSite", "processingType", "resource_type", "prodSourceLabel", "gshare"}
)


def _part(table: sa.Table, keys: Sequence[str], conditions: list[sa.ColumnElement[bool]]) -> sa.Select[Any]:
    columns = [table.c[key].label(key) for key in keys]
    return sa.select(*columns, table.c.jobStatus.label("jobStatus")).where(*conditions)


async def job_counts(
    conn: AsyncConnection,
    keys: Sequence[str],
    *,
    active_statuses: Sequence[str],
    final_statuses: Sequence[str] = (),
    modified_after: datetime | None = None,
    labels: Sequence[str] | None = None,
) -> list[tuple[Any, ...]]:
    """Jobs counted by ``keys`` and jobStatus: rows ``(*key values, jobStatus, count)``; the
    arguments are those of :func:`count_query`."""
    query = count_query(
        keys,
        active_statuses=active_statuses,
        final_statuses=final_statuses,
        modified_after=modified_after,
        labels=labels,
    )
    return [tuple(row) for row in await conn.execute(query)]


def count_query(
    keys: Sequence[str],
    *,
    active_statuses: Sequence[str],
    final_statuses: Sequence[str] = (),
    modified_after: datetime | None = None,
    labels: Sequence[str] | None = None,
) -> sa.Select[Any]:
    """The statement counting jobs by ``keys`` and jobStatus.

    Counted: active-table jobs in ``active_statuses``; with ``modified_after``, also the jobs in
    ``final_statuses`` modified after it, in either table. ``labels`` restricts to those
    prodSourceLabels. One statement, grouped by the database; each part reads its own index
    (jobs by status, final jobs by (status, modificationTime), the archive by modificationTime).

    Every value is ours (statuses, labels, a time computed by the caller), never client text, so
    they go into the SQL as literals: a prepared statement's generic plan cannot then take the
    archive window for a third of the table and scan all of it.
    """
    unknown = set(keys) - GROUPABLE
    if unknown:
        raise ValueError(f"cannot group jobs by {sorted(unknown)}")

    def label_filter(table: sa.Table) -> list[sa.ColumnElement[bool]]:
        return [] if labels is None else [table.c.prodSourceLabel.in_(list(labels))]

    active = [
        jobs.c.jobStatus.in_(list(active_statuses)),
        # Word for word the condition of SQLite's ix_jobs_statistics, which then counts from it.
        jobs.c.jobStatus.not_in(STATISTICS_FINAL_STATUSES),
        *label_filter(jobs),
    ]
    parts = [_part(jobs, keys, active)]
    if modified_after is not None:
        if final_statuses:
            recent = [jobs.c.jobStatus.in_(list(final_statuses)), jobs.c.modificationTime > modified_after]
            parts.append(_part(jobs, keys, [*recent, *label_filter(jobs)]))
        window = [jobs_archive.c.modificationTime > modified_after, *label_filter(jobs_archive)]
        parts.append(_part(jobs_archive, keys, window))
    counted = sa.union_all(*parts).subquery("counted") if len(parts) > 1 else parts[0].subquery("counted")
    groups = [counted.c[key] for key in keys] + [counted.c.jobStatus]
    return with_values_inline(sa.select(*groups, sa.func.count().label("n")).group_by(*groups))


# --- the summary the statistics agent keeps (logic/statistics.py) --------------------------------------

# The columns a total is kept by: every groupable one, so each endpoint sums the groups it needs.
SUMMARY_KEYS = ("computingSite", "cloud", "prodSourceLabel", "resource_type", "processingType", "gshare")
# Any constant key of PostgreSQL's advisory locks: the refresh of the totals, one process at a time.
_REFRESH_LOCK = 0x5354415453


async def lock_refresh(conn: AsyncConnection) -> bool:
    """Whether this transaction may refresh the totals: on PostgreSQL, whether it took the advisory
    lock (held until it ends; another process refreshing makes this one skip its turn); SQLite has
    one writer at a time."""
    if conn.dialect.name != "postgresql":
        return True
    return bool(await conn.scalar(sa.select(sa.func.pg_try_advisory_xact_lock(_REFRESH_LOCK))))


async def windows(conn: AsyncConnection) -> dict[int, dict[str, Any]]:
    """The kept windows by length in minutes: ``since``, ``upto`` and ``rebuilt_at`` of each."""
    rows = (await conn.execute(sa.select(job_stats_windows))).mappings()
    return {row["window_minutes"]: dict(row) for row in rows}


def _final_rows(
    table: sa.Table, final_statuses: Sequence[str], after: Any, upto: Any
) -> list[sa.ColumnElement[bool]]:
    conditions = [table.c.jobStatus.in_(list(final_statuses)), table.c.modificationTime > after]
    if upto is not None:
        conditions.append(table.c.modificationTime <= upto)
    return conditions


def _final_slice(
    final_statuses: Sequence[str],
    after: Any,
    upto: Any,
    columns: Sequence[sa.ColumnElement[Any]] = (),
    labels: Sequence[str] | None = None,
) -> list[sa.Select[Any]]:
    """The final jobs of both tables modified in (``after``, ``upto``] (``upto`` None: no end),
    counted by the summary keys and jobStatus, each row led by ``columns``."""
    parts = []
    for table in (jobs, jobs_archive):
        conditions = _final_rows(table, final_statuses, after, upto)
        if labels is not None:
            conditions.append(table.c.prodSourceLabel.in_(list(labels)))
        grouped = [table.c[key] for key in SUMMARY_KEYS] + [table.c.jobStatus]
        parts.append(
            sa.select(
                *columns, *(column.label(column.name) for column in grouped), sa.func.count().label("n")
            )
            .where(*conditions)
            .group_by(*grouped)
        )
    return parts


async def final_slices(
    conn: AsyncConnection, final_statuses: Sequence[str], slices: Sequence[tuple[datetime, datetime]]
) -> dict[tuple[datetime, datetime], list[tuple[Any, ...]]]:
    """For each (after, upto] of ``slices``, the final jobs of both tables modified in it, as rows
    ``(*SUMMARY_KEYS, jobStatus, n)``. One statement, so a job moving to the archive meanwhile is
    seen in exactly one table."""
    found: dict[tuple[datetime, datetime], list[tuple[Any, ...]]] = {bounds: [] for bounds in slices}
    if not slices:
        return found
    parts = []
    for index, (after, upto) in enumerate(slices):
        parts += _final_slice(final_statuses, after, upto, [sa.literal(index).label("slice")])
    query = with_values_inline(sa.union_all(*parts)) if len(parts) > 1 else parts[0]
    for index, *rest in await conn.execute(query):
        found[slices[index]].append(tuple(rest))
    return found


async def final_counts_since(
    conn: AsyncConnection, final_statuses: Sequence[str], starts: Sequence[datetime], upto: datetime
) -> list[tuple[Any, ...]]:
    """The final jobs of both tables modified in (start, ``upto``] for each of ``starts``: rows
    ``(*SUMMARY_KEYS, jobStatus, n for the first start, n for the second, ...)``, from one read
    of the longest range."""
    earliest = min(starts)

    def part(table: sa.Table) -> sa.Select[Any]:
        grouped = [table.c[key] for key in SUMMARY_KEYS] + [table.c.jobStatus]
        counts = [
            sa.func.sum(sa.case((table.c.modificationTime > start, 1), else_=0)).label(f"n{index}")
            for index, start in enumerate(starts)
        ]
        return (
            sa.select(*(column.label(column.name) for column in grouped), *counts)
            .where(*_final_rows(table, final_statuses, earliest, upto))
            .group_by(*grouped)
        )

    query = with_values_inline(sa.union_all(part(jobs), part(jobs_archive)))
    return [tuple(row) for row in await conn.execute(query)]


def group_key(group: Sequence[Any]) -> str:
    """The text naming a group (its SUMMARY_KEYS values and jobStatus, null included)."""
    return json.dumps(list(group), separators=(",", ":"), ensure_ascii=False)


async def add_to_totals(conn: AsyncConnection, counts: dict[tuple[int, tuple[Any, ...]], int]) -> None:
    """Add each count to the total of its (window, group), ``group`` being the SUMMARY_KEYS values
    and jobStatus; totals that reach 0 are deleted."""
    if not counts:
        return
    names = (*SUMMARY_KEYS, "jobStatus")
    rows = [
        {"window_minutes": window, "group_key": group_key(group), **dict(zip(names, group, strict=True))}
        | {"n": n}
        for (window, group), n in counts.items()
    ]
    insert = sqlite_insert if conn.dialect.name == "sqlite" else postgresql_insert
    statement = insert(job_stats_totals)
    statement = statement.on_conflict_do_update(
        index_elements=["window_minutes", "group_key"],
        set_={"n": job_stats_totals.c.n + statement.excluded.n},
    )
    await conn.execute(statement, rows)
    await conn.execute(sa.delete(job_stats_totals).where(job_stats_totals.c.n <= 0))


async def replace_windows(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Forget every kept window and its totals; keep the windows of ``rows`` instead (their
    totals are written by the caller)."""
    await conn.execute(sa.delete(job_stats_totals))
    await conn.execute(sa.delete(job_stats_windows))
    if rows:
        await conn.execute(sa.insert(job_stats_windows), list(rows))


async def move_windows(conn: AsyncConnection, ranges: dict[int, tuple[datetime, datetime]]) -> None:
    """Set the (since, upto] each window's totals now cover."""
    statement = (
        sa.update(job_stats_windows)
        .where(job_stats_windows.c.window_minutes == sa.bindparam("b_window"))
        .values(since=sa.bindparam("b_since"), upto=sa.bindparam("b_upto"))
    )
    await conn.execute(
        statement,
        [{"b_window": window, "b_since": since, "b_upto": upto} for window, (since, upto) in ranges.items()],
    )


async def summary_counts(
    conn: AsyncConnection,
    keys: Sequence[str],
    *,
    window: dict[str, Any],
    active_statuses: Sequence[str],
    final_statuses: Sequence[str],
    modified_after: datetime,
    labels: Sequence[str] | None = None,
) -> list[tuple[Any, ...]]:
    """What :func:`job_counts` counts with ``modified_after``, read from the totals of a kept
    ``window`` (a row of :func:`windows`, read in this transaction).

    The totals hold the final jobs modified in the window's (since, upto]; added to them: the final
    jobs modified in (``modified_after``, since] (when the window asked for starts earlier), less
    those in (since, ``modified_after``] (when it starts later), the final jobs modified after upto
    (since the last refresh), and the non-final jobs, counted as they are now. The caller makes sure
    no refresh committed between reading ``window`` and this (on PostgreSQL each statement reads
    what has committed when it starts).
    """
    unknown = set(keys) - GROUPABLE
    if unknown:
        raise ValueError(f"cannot group jobs by {sorted(unknown)}")
    query = _summary_statement(
        tuple(keys),
        window["window_minutes"],
        tuple(active_statuses),
        tuple(final_statuses),
        None if labels is None else tuple(labels),
    )
    bounds = {
        "modified_after": modified_after,
        "since": window["since"],
        "upto": window["upto"],
        "end_of_time": END_OF_TIME,
    }
    return [tuple(row) for row in await conn.execute(query, bounds)]


# The newest modification time the statistics count: every slice is a range with two ends, so
# that PostgreSQL, when it plans the statement once for all values, still takes each slice for the
# narrow range of an index it is (one end alone it guesses at a third of the table).
END_OF_TIME = datetime(9999, 12, 31, tzinfo=UTC)


@functools.cache
def _summary_statement(
    keys: tuple[str, ...],
    window_minutes: int,
    active_statuses: tuple[str, ...],
    final_statuses: tuple[str, ...],
    labels: tuple[str, ...] | None,
) -> sa.Select[Any]:
    """The statement of :func:`summary_counts`, built once per endpoint and window (a few dozen in
    all); the times are its parameters."""

    def time(name: str) -> sa.BindParameter[datetime]:
        return sa.bindparam(name, type_=UTCDateTime())

    modified_after, since, upto, end = (
        time("modified_after"),
        time("since"),
        time("upto"),
        time("end_of_time"),
    )

    def counted(table: sa.Table, conditions: list[sa.ColumnElement[bool]], sign: int) -> sa.Select[Any]:
        if labels is not None:
            conditions = [*conditions, table.c.prodSourceLabel.in_(list(labels))]
        grouped = [table.c[key] for key in keys] + [table.c.jobStatus]
        count = sa.func.count() if sign > 0 else -sa.func.count()
        return (
            sa.select(*(column.label(column.name) for column in grouped), count.label("n"))
            .where(*conditions)
            .group_by(*grouped)
        )

    def final(table: sa.Table, after: Any, through: Any) -> list[sa.ColumnElement[bool]]:
        return _final_rows(table, final_statuses, after, through)

    totals = job_stats_totals
    parts: list[sa.Select[Any]] = [
        # Summed with the other parts only: a grouping of its own would sort the rows once more.
        sa.select(*(totals.c[key] for key in keys), totals.c.jobStatus, totals.c.n).where(
            totals.c.window_minutes == window_minutes,
            *([] if labels is None else [totals.c.prodSourceLabel.in_(list(labels))]),
        )
    ]
    for table in (jobs, jobs_archive):
        parts += [
            counted(table, final(table, modified_after, since), 1),
            counted(table, final(table, since, modified_after), -1),
            counted(table, final(table, upto, end), 1),
        ]
    # Word for word the condition of SQLite's ix_jobs_statistics too, which then counts from it.
    active = [jobs.c.jobStatus.in_(list(active_statuses)), jobs.c.jobStatus.not_in(STATISTICS_FINAL_STATUSES)]
    parts.append(counted(jobs, active, 1))
    union = sa.union_all(*parts).subquery("counted")
    groups = [union.c[key] for key in keys] + [union.c.jobStatus]
    total = sa.cast(sa.func.sum(union.c.n), sa.BigInteger)
    return sa.select(*groups, total.label("n")).group_by(*groups).having(total > 0)
