"""Job counts for the statistics endpoints: one aggregate query over the active and archived jobs.

A job is in exactly one of ``jobs`` and ``jobs_archive`` (db/archive.py moves it in one
transaction), so counting both tables never counts a job twice. The archive holds final jobs only.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.rows import with_values_inline
from bamboo.db.schema import jobs, jobs_archive

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

    parts = [_part(jobs, keys, [jobs.c.jobStatus.in_(list(active_statuses)), *label_filter(jobs)])]
    if modified_after is not None:
        if final_statuses:
            recent = [jobs.c.jobStatus.in_(list(final_statuses)), jobs.c.modificationTime > modified_after]
            parts.append(_part(jobs, keys, [*recent, *label_filter(jobs)]))
        window = [jobs_archive.c.modificationTime > modified_after, *label_filter(jobs_archive)]
        parts.append(_part(jobs_archive, keys, window))
    counted = sa.union_all(*parts).subquery("counted") if len(parts) > 1 else parts[0].subquery("counted")
    groups = [counted.c[key] for key in keys] + [counted.c.jobStatus]
    return with_values_inline(sa.select(*groups, sa.func.count().label("n")).group_by(*groups))
