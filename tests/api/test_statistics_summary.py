"""The statistics agent's totals (logic/statistics.py): a refresh follows the clock by the jobs
entering and leaving each window, jobs moving to the archive count once, rows written with old
times count from the next rebuild, and one PostgreSQL process refreshes at a time. Every count is
checked against the job tables counted directly, on both databases, with the agent driven on the
test's clock."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bamboo.agents.runner import AgentContext, AgentRunner
from bamboo.config import Settings
from bamboo.db import statistics as statistics_db
from bamboo.db.engine import Database
from bamboo.db.schema import job_stats_totals, jobs, jobs_archive
from bamboo.logic import archive
from bamboo.logic import statistics as stats
from bamboo.logic.catalog import LocalCatalog
from tests.conftest import FixedClock

_ids = itertools.count(1)
# Every way the endpoints group, and windows on and between the kept ones.
GROUPINGS = (["cloud"], ["computingSite", "resource_type"], ["computingSite", "gshare", "resource_type"])
WINDOWS = (0, 30, 60, 500, 720, 1440, 3000, 10080)


def job(status: str, modified: datetime, *, site: str = "SITE_A", label: str = "managed") -> dict[str, Any]:
    return {
        "PandaID": next(_ids),
        "jobStatus": status,
        "prodSourceLabel": label,
        "computingSite": site,
        "cloud": "CA",
        "resource_type": "SCORE",
        "processingType": "simul",
        "gshare": None,
        "modificationTime": modified,
    }


class Agent:
    """The statistics agent of one process, on the test's clock."""

    def __init__(self, db: Database, clock: FixedClock, tmp_path: Path, **settings: Any) -> None:
        config = Settings(home=tmp_path / "home", **settings)
        self.runner = AgentRunner(AgentContext(db, clock, LocalCatalog(), settings=config))

    async def refresh(self) -> None:
        assert await self.runner.run_once("statistics") == 0


async def insert(db: Database, active: list[dict[str, Any]], archived: list[dict[str, Any]] = ()) -> None:
    async with db.transaction() as conn:
        if active:
            await conn.execute(sa.insert(jobs), active)
        if archived:
            await conn.execute(sa.insert(jobs_archive), list(archived))


async def assert_exact(db: Database, clock: FixedClock) -> None:
    """Every grouping and window read from the totals equals the job tables counted directly."""
    async with db.transaction(write=False) as conn:
        assert await statistics_db.windows(conn), "the agent keeps no window"
        for keys in GROUPINGS:
            for minutes in WINDOWS:
                direct = await statistics_db.job_counts(
                    conn,
                    keys,
                    active_statuses=stats.ACTIVE_STATUSES,
                    final_statuses=stats.FINAL_STATUSES,
                    modified_after=clock.now() - timedelta(minutes=minutes),
                )
                summary = await stats._window_counts(conn, clock, keys, minutes)
                assert sorted(summary, key=repr) == sorted(direct, key=repr), (keys, minutes)


async def windows(db: Database) -> dict[int, dict[str, Any]]:
    async with db.transaction(write=False) as conn:
        return await statistics_db.windows(conn)


async def test_a_refresh_follows_the_clock_by_the_jobs_entering_and_leaving_windows(
    db: Database, tmp_path: Path
) -> None:
    clock = FixedClock()
    agent = Agent(db, clock, tmp_path)
    start = clock.now()
    ages = [timedelta(minutes=minutes) for minutes in (2, 45, 61, 300, 700, 730, 1500, 5000, 10000, 11000)]
    await insert(
        db,
        [job("running", start - timedelta(hours=30)), *(job("finished", start - age) for age in ages[:4])],
        [job("failed", start - age, site="SITE_B") for age in ages[4:]],
    )
    await agent.refresh()
    rebuilt = {length: window["rebuilt_at"] for length, window in (await windows(db)).items()}
    assert set(rebuilt) == set(stats.KEPT_WINDOWS)
    await assert_exact(db, clock)
    # Jobs end and time passes: each refresh adds and removes the difference, no recount.
    for step, minutes in enumerate((1, 7, 20, 25)):
        clock.set(clock.now() + timedelta(minutes=minutes))
        await insert(db, [job("cancelled", clock.now() - timedelta(seconds=step)), job("sent", clock.now())])
        await assert_exact(db, clock)
        await agent.refresh()
        await assert_exact(db, clock)
    kept = await windows(db)
    assert {length: window["rebuilt_at"] for length, window in kept.items()} == rebuilt
    assert kept[720]["since"] == clock.now() - timedelta(minutes=720)
    assert kept[720]["upto"] == clock.now() - timedelta(seconds=60)


async def test_the_totals_count_final_jobs_only_and_drop_emptied_groups(db: Database, tmp_path: Path) -> None:
    clock = FixedClock()
    agent = Agent(db, clock, tmp_path)
    await insert(
        db,
        [job("running", clock.now() - timedelta(hours=1))],
        [job("closed", clock.now() - timedelta(minutes=90))],
    )
    await agent.refresh()
    async with db.transaction(write=False) as conn:
        rows = (
            await conn.execute(
                sa.select(
                    job_stats_totals.c.window_minutes, job_stats_totals.c.jobStatus, job_stats_totals.c.n
                )
            )
        ).all()
    assert sorted(rows) == [
        (360, "closed", 1),
        (720, "closed", 1),
        (1440, "closed", 1),
        (4320, "closed", 1),
        (10080, "closed", 1),
    ]
    # Five hours later the job is six and a half hours old: out of the 6 h window too.
    clock.set(clock.now() + timedelta(hours=5))
    await agent.refresh()
    async with db.transaction(write=False) as conn:
        kept = {
            row.window_minutes for row in await conn.execute(sa.select(job_stats_totals.c.window_minutes))
        }
    assert kept == {720, 1440, 4320, 10080}
    await assert_exact(db, clock)


async def test_jobs_moving_to_the_archive_count_once(db: Database, tmp_path: Path) -> None:
    clock = FixedClock()
    agent = Agent(db, clock, tmp_path)
    ended = clock.now() - timedelta(minutes=10)
    await insert(db, [job("finished", ended), job("failed", ended, site="SITE_B"), job("running", ended)])
    await agent.refresh()
    clock.set(clock.now() + timedelta(hours=2))
    policy = archive.ArchivePolicy(delay=timedelta(hours=1))
    async with db.transaction() as conn:
        assert await archive.archive_final_jobs(conn, clock, policy) == 2
    # Before the agent's next refresh, and after it.
    await assert_exact(db, clock)
    await agent.refresh()
    await assert_exact(db, clock)
    async with db.transaction(write=False) as conn:
        counts = await stats._window_counts(conn, clock, ["computingSite"], 720)
    assert sorted(counts) == [("SITE_A", "finished", 1), ("SITE_A", "running", 1), ("SITE_B", "failed", 1)]


async def test_rows_written_with_old_times_count_from_the_next_rebuild(db: Database, tmp_path: Path) -> None:
    """The documented limit: a refresh adds the jobs modified since the previous one, so a final
    job written later with an older modification time is counted once the totals are recounted."""
    clock = FixedClock()
    agent = Agent(db, clock, tmp_path, statistics_rebuild_minutes=30)
    await agent.refresh()
    await insert(db, [], [job("finished", clock.now() - timedelta(hours=2))])
    clock.set(clock.now() + timedelta(minutes=10))
    await agent.refresh()
    async with db.transaction(write=False) as conn:
        assert await stats._window_counts(conn, clock, ["cloud"], 720) == []
    clock.set(clock.now() + timedelta(minutes=25))
    await agent.refresh()
    await assert_exact(db, clock)
    async with db.transaction(write=False) as conn:
        assert await stats._window_counts(conn, clock, ["cloud"], 720) == [("CA", "finished", 1)]


async def test_a_clock_jump_past_the_counted_range_recounts(db: Database, tmp_path: Path) -> None:
    clock = FixedClock()
    agent = Agent(db, clock, tmp_path)
    await insert(
        db,
        [job("finished", clock.now() - timedelta(minutes=5))],
        [job("failed", clock.now() - timedelta(hours=3))],
    )
    await agent.refresh()
    first = (await windows(db))[60]["rebuilt_at"]
    clock.set(clock.now() + timedelta(hours=3))
    await assert_exact(db, clock)
    await agent.refresh()
    assert (await windows(db))[60]["rebuilt_at"] == clock.now() != first
    await assert_exact(db, clock)


async def test_windows_beyond_the_archive_retention_are_not_kept(db: Database, tmp_path: Path) -> None:
    clock = FixedClock()
    agent = Agent(db, clock, tmp_path, job_archive_retention_days=2)
    await insert(db, [], [job("finished", clock.now() - timedelta(days=days)) for days in (0.5, 1.5, 2.5)])
    await agent.refresh()
    assert set(await windows(db)) == {60, 360, 720, 1440}
    # A week is counted from the day's totals and the jobs before them.
    await assert_exact(db, clock)


async def test_a_refresh_within_the_period_leaves_the_totals_alone(db: Database, tmp_path: Path) -> None:
    """What ``drain`` costs the tests: within the refresh period (and on their fixed clock) a
    refresh reads the windows and stops."""
    clock = FixedClock()
    agent = Agent(db, clock, tmp_path, statistics_refresh_period_seconds=5)
    await agent.refresh()
    before = await windows(db)
    await insert(db, [], [job("finished", clock.now() - timedelta(minutes=2))])
    await agent.refresh()
    clock.set(clock.now() + timedelta(seconds=4))
    await agent.refresh()
    assert await windows(db) == before
    async with db.transaction(write=False) as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(job_stats_totals))).scalar() == 0


async def test_one_process_refreshes_at_a_time(db: Database, tmp_path: Path) -> None:
    """On PostgreSQL a refresh holds an advisory lock; another process's refresh meanwhile skips
    its turn (SQLite has one writer at a time, its lock is the database's)."""
    clock = FixedClock()
    async with db.transaction() as first:
        assert await statistics_db.lock_refresh(first)
        if db.is_sqlite:
            return
        async with db.transaction() as second:
            await stats.refresh(second, clock, stats.SummaryPolicy())
    assert await windows(db) == {}
    await Agent(db, clock, tmp_path).refresh()
    assert set(await windows(db)) == set(stats.KEPT_WINDOWS)


@pytest.mark.parametrize("retention_days", [0, 90])
def test_kept_windows(retention_days: float) -> None:
    settings = Settings(job_archive_retention_days=retention_days, statistics_rebuild_minutes=60)
    assert stats.SummaryPolicy.from_settings(settings).windows() == stats.KEPT_WINDOWS
    short = stats.SummaryPolicy(retention=timedelta(days=1), rebuild=timedelta(hours=1))
    assert short.windows() == (60, 360, 720)
