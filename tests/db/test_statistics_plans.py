"""The statistics' window of the archive is read through ``ix_jobs_archive_time`` (migration
0015_statistics), from the index alone, with the window's start in the SQL text: the cost of a
statistics call must not grow with the archive (bench/README, "Statistics beside 1,000,000
archived jobs")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from bamboo.db import statistics as statistics_db
from bamboo.db.engine import Database
from bamboo.logic import statistics as stats


def window_query(keys: list[str], labels: tuple[str, ...] | None = None) -> sa.Select:
    return statistics_db.count_query(
        keys,
        active_statuses=stats.ACTIVE_STATUSES,
        final_statuses=stats.FINAL_STATUSES,
        modified_after=datetime.now(UTC) - timedelta(hours=12),
        labels=labels,
    )


QUERIES = [
    window_query(["cloud"], stats.PRODUCTION_LABELS),
    window_query(["cloud", "processingType"], stats.PRODUCTION_LABELS),
    window_query(["computingSite", "resource_type"]),
    window_query(["computingSite", "gshare", "resource_type"]),
]


async def plan(db: Database, query: sa.Select) -> str:
    async with db.transaction() as conn:
        sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True}))
        assert "?" not in sql and "$" not in sql and "%(" not in sql, sql
        if conn.dialect.name == "postgresql":
            # An empty table is read sequentially whatever its indexes: ask whether the index serves.
            await conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
            rows = await conn.execute(sa.text(f"EXPLAIN {sql}"))
        else:
            rows = await conn.execute(sa.text(f"EXPLAIN QUERY PLAN {sql}"))
        return "\n".join(str(row[-1]) for row in rows)


async def test_the_archive_window_is_read_from_its_index_alone(db: Database) -> None:
    for query in QUERIES:
        text = await plan(db, query)
        if db.is_sqlite:
            assert (
                "SEARCH jobs_archive USING COVERING INDEX ix_jobs_archive_time (modificationTime>?)" in text
            ), text
        else:
            assert "Index Only Scan using ix_jobs_archive_time on jobs_archive" in text, text


async def test_active_only_counts_do_not_read_the_archive(db: Database) -> None:
    query = statistics_db.count_query(["computingSite"], active_statuses=stats.ACTIVE_STATUSES)
    assert "jobs_archive" not in await plan(db, query)
