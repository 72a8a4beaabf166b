"""The archiver's moves and deletions (logic/archive.py), on both databases, with the injected clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from bamboo.agents.runner import AGENTS
from bamboo.config import Settings
from bamboo.db import archive as archive_db
from bamboo.db import jobs as jobs_db
from bamboo.db import merges as merges_db
from bamboo.db import scouting as scouting_db
from bamboo.db.engine import Database
from bamboo.db.schema import (
    job_files,
    job_files_archive,
    jobs,
    jobs_archive,
    task_datasets,
    task_files,
)
from bamboo.logic import archive
from bamboo.logic.states import JOB_FINAL, JOB_STATUSES
from tests.conftest import FixedClock

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
POLICY = archive.ArchivePolicy(delay=timedelta(hours=6), batch=1000, retention=timedelta(days=90))
TASK = 10_000_001
FILES_PER_JOB = 2


def job_row(panda_id: int, status: str, modified: datetime = T0, **values: Any) -> dict[str, Any]:
    return {
        "PandaID": panda_id,
        "jobStatus": status,
        "modificationTime": modified,
        "creationTime": modified - timedelta(hours=1),
        "jediTaskID": TASK,
        "computingSite": "TEST_PQ",
        "prodSourceLabel": "user",
        "attemptNr": 1,
        **values,
    }


def file_rows(panda_id: int) -> list[dict[str, Any]]:
    return [
        {"PandaID": panda_id, "lfn": f"f.{panda_id}.{n}", "type": "log" if n == 0 else "input"}
        for n in range(FILES_PER_JOB)
    ]


async def add_jobs(db: Database, rows: list[dict[str, Any]]) -> None:
    async with db.transaction() as conn:
        await jobs_db.insert(conn, rows, [f for row in rows for f in file_rows(row["PandaID"])])


async def table_rows(db: Database, table: sa.Table, key: str) -> list[dict[str, Any]]:
    async with db.transaction(write=False) as conn:
        return [dict(row) for row in (await conn.execute(sa.select(table).order_by(table.c[key]))).mappings()]


async def ids_in(db: Database, table: sa.Table) -> list[int]:
    async with db.transaction(write=False) as conn:
        return list((await conn.execute(sa.select(table.c.PandaID).order_by(table.c.PandaID))).scalars())


async def step(db: Database, clock: FixedClock, policy: archive.ArchivePolicy = POLICY) -> int:
    async with db.transaction() as conn:
        return await archive.archive(conn, clock, policy)


def at(delta: timedelta) -> FixedClock:
    return FixedClock(T0 + delta)


async def test_final_jobs_move_after_the_delay_with_their_files(db: Database) -> None:
    statuses = sorted(JOB_STATUSES)
    await add_jobs(db, [job_row(1000 + n, status) for n, status in enumerate(statuses)])
    active_jobs = await table_rows(db, jobs, "PandaID")
    active_files = await table_rows(db, job_files, "row_ID")
    final_ids = sorted(row["PandaID"] for row in active_jobs if row["jobStatus"] in JOB_FINAL)
    assert len(final_ids) == len(JOB_FINAL)

    # Not before the delay (a final job exactly as old as the delay stays too).
    assert await step(db, at(POLICY.delay - timedelta(seconds=1))) == 0
    assert await step(db, at(POLICY.delay)) == 0
    assert await ids_in(db, jobs_archive) == []

    assert await step(db, at(POLICY.delay + timedelta(seconds=1))) == len(final_ids)
    assert await ids_in(db, jobs_archive) == final_ids
    # Non-final jobs never move, however old.
    assert await step(db, at(timedelta(days=30))) == 0
    remaining = await table_rows(db, jobs, "PandaID")
    assert {row["jobStatus"] for row in remaining} == set(statuses) - JOB_FINAL
    # Rows arrive unchanged, files with their job, and leave the active tables.
    assert await table_rows(db, jobs_archive, "PandaID") == [
        row for row in active_jobs if row["PandaID"] in final_ids
    ]
    assert await table_rows(db, job_files_archive, "row_ID") == [
        row for row in active_files if row["PandaID"] in final_ids
    ]
    assert {row["PandaID"] for row in await table_rows(db, job_files, "row_ID")} == {
        row["PandaID"] for row in remaining
    }


async def test_batches_are_bounded(db: Database) -> None:
    await add_jobs(db, [job_row(2000 + n, "finished") for n in range(5)])
    policy = archive.ArchivePolicy(delay=POLICY.delay, batch=2, retention=None)
    later = at(timedelta(days=1))
    moved = [await step(db, later, policy) for _ in range(4)]
    assert moved == [2, 2, 1, 0]
    assert await ids_in(db, jobs_archive) == [2000 + n for n in range(5)]
    async with db.transaction(write=False) as conn:
        count = (await conn.execute(sa.select(sa.func.count()).select_from(job_files_archive))).scalar()
    assert count == 5 * FILES_PER_JOB


async def test_a_step_killed_mid_way_loses_nothing(db: Database) -> None:
    """A crash after the copy (before the deletes commit) rolls the whole batch back; rerun, the
    same jobs move once."""
    await add_jobs(db, [job_row(3000 + n, "failed") for n in range(3)])
    later = at(timedelta(days=1))
    with pytest.raises(RuntimeError):
        async with db.transaction() as conn:
            ids = await archive_db.claim_to_archive(conn, sorted(JOB_FINAL), later.now() - POLICY.delay, 10)
            await archive_db.copy_to_archive(conn, ids)
            raise RuntimeError("killed between the copy and the deletes")
    assert await ids_in(db, jobs_archive) == []
    assert await ids_in(db, jobs) == [3000, 3001, 3002]
    assert await step(db, later) == 3
    assert await ids_in(db, jobs_archive) == [3000, 3001, 3002]
    assert await ids_in(db, jobs) == []


async def test_a_copy_that_already_happened_is_not_duplicated(db: Database) -> None:
    """Were the copy ever committed without the deletes (or run twice), the rerun skips what the
    archive holds and still removes the active rows: no duplicate, no loss."""
    await add_jobs(db, [job_row(4000 + n, "closed") for n in range(3)])
    async with db.transaction() as conn:
        await archive_db.copy_to_archive(conn, [4000, 4001])
        await archive_db.copy_to_archive(conn, [4000, 4001])
    assert await step(db, at(timedelta(days=1))) == 3
    assert await ids_in(db, jobs_archive) == [4000, 4001, 4002]
    assert await ids_in(db, jobs) == []
    archived_files = await table_rows(db, job_files_archive, "row_ID")
    assert len(archived_files) == 3 * FILES_PER_JOB
    assert len({row["row_ID"] for row in archived_files}) == len(archived_files)
    assert await ids_in(db, job_files) == []


async def test_retention_deletes_old_archived_jobs_in_batches(db: Database) -> None:
    await add_jobs(db, [job_row(5000 + n, "finished", T0 - timedelta(days=100)) for n in range(3)])
    await add_jobs(db, [job_row(5100, "cancelled", T0 - timedelta(days=10))])
    policy = archive.ArchivePolicy(delay=POLICY.delay, batch=2, retention=timedelta(days=90))
    # Retention off: archived, kept forever.
    keep = archive.ArchivePolicy(delay=POLICY.delay, batch=10, retention=None)
    assert await step(db, at(timedelta(0)), keep) == 4
    assert await step(db, at(timedelta(days=1000)), keep) == 0
    assert await ids_in(db, jobs_archive) == [5000, 5001, 5002, 5100]
    assert [await step(db, at(timedelta(0)), policy) for _ in range(3)] == [2, 1, 0]
    assert await ids_in(db, jobs_archive) == [5100]
    assert {row["PandaID"] for row in await table_rows(db, job_files_archive, "row_ID")} == {5100}
    assert await step(db, at(timedelta(days=81)), policy) == 1
    assert await ids_in(db, jobs_archive) == []
    assert await ids_in(db, job_files_archive) == []


async def test_two_archivers_take_disjoint_batches(db: Database) -> None:
    if db.is_sqlite:
        pytest.skip("SQLite has one writer at a time: there is no second archiver to race")
    await add_jobs(db, [job_row(6000 + n, "finished") for n in range(4)])
    before = T0 + timedelta(days=1) - POLICY.delay
    entered, release = asyncio.Event(), asyncio.Event()

    async def first() -> list[int]:
        async with db.transaction() as conn:
            ids = await archive_db.claim_to_archive(conn, sorted(JOB_FINAL), before, 2)
            entered.set()
            await release.wait()
            await archive_db.copy_to_archive(conn, ids)
            await archive_db.delete_active(conn, ids)
            return ids

    async def second() -> list[int]:
        await entered.wait()
        try:
            async with db.transaction() as conn:
                ids = await archive_db.claim_to_archive(conn, sorted(JOB_FINAL), before, 10)
                await archive_db.copy_to_archive(conn, ids)
                await archive_db.delete_active(conn, ids)
                return ids
        finally:
            release.set()

    taken = await asyncio.gather(first(), second())
    assert len(taken[0]) == 2 and len(taken[1]) == 2
    assert set(taken[0]).isdisjoint(taken[1])
    assert await ids_in(db, jobs_archive) == [6000, 6001, 6002, 6003]


def test_the_archiver_agent_reads_its_settings() -> None:
    (agent,) = [agent for agent in AGENTS if agent.name == "archiver"]
    assert agent.period_setting == "job_archive_period_seconds"
    settings = Settings(job_archive_delay_hours=2, job_archive_batch_size=7, job_archive_retention_days=0)
    assert archive.ArchivePolicy.from_settings(settings) == archive.ArchivePolicy(
        delay=timedelta(hours=2), batch=7, retention=None
    )
    assert archive.ArchivePolicy.from_settings(Settings()) == POLICY
    with pytest.raises(ValueError, match="job_archive_delay_hours"):
        Settings(job_archive_delay_hours=0.5)


# --- reads over both tables --------------------------------------------------------------------------


async def archived(db: Database, rows: list[dict[str, Any]]) -> None:
    await add_jobs(db, rows)
    assert await step(db, at(timedelta(days=1))) == len(rows)


async def test_task_reads_count_archived_jobs(db: Database) -> None:
    await add_jobs(db, [job_row(7000, "running"), job_row(7001, "finished", T0 + timedelta(days=1))])
    await archived(db, [job_row(7002, "finished"), job_row(7003, "failed")])
    async with db.transaction(write=False) as conn:
        assert await jobs_db.ids_of_task(conn, TASK) == [7000, 7001, 7002, 7003]
        assert await jobs_db.status_counts_of_task(conn, TASK) == {"running": 1, "finished": 2, "failed": 1}
        assert await archive_db.archived_ids_of_task(conn, TASK) == [7002, 7003]
        statuses = await archive_db.statuses_incl_archive(conn, [7003, 7000, 1])
        assert statuses == {
            7003: {"PandaID": 7003, "jobStatus": "failed", "commandToPilot": None, "attemptNr": 1},
            7000: {"PandaID": 7000, "jobStatus": "running", "commandToPilot": None, "attemptNr": 1},
        }
        found = await archive_db.get_many_incl_archive(conn, [7002, 7000, 1])
        assert sorted(found) == [7000, 7002] and found[7002]["jobStatus"] == "finished"
        files = await archive_db.files_of_incl_archive(conn, [7002, 7000, 1])
        assert [f["lfn"] for f in files[7002]] == ["f.7002.0", "f.7002.1"]
        assert [f["lfn"] for f in files[7000]] == ["f.7000.0", "f.7000.1"]
        assert files[1] == []


async def test_scout_measurements_include_archived_scouts(db: Database) -> None:
    await add_jobs(db, [job_row(8000, "running", specialHandling="sj")])
    await archived(db, [job_row(8001, "finished", specialHandling="sj,debug"), job_row(8002, "finished")])
    async with db.transaction(write=False) as conn:
        scouts = await scouting_db.scout_jobs(conn, [TASK], "sj")
    assert sorted((job["PandaID"], job["jobStatus"]) for job in scouts[TASK]) == [
        (8000, "running"),
        (8001, "finished"),
    ]


async def test_an_unmerged_file_of_an_archived_writer_is_still_merged(db: Database) -> None:
    """A pre-merge job failed (another of its files ran out of merge attempts) and was archived;
    its other unmerged file still finds the site it was written at."""
    await archived(db, [job_row(9000, "failed", computingSite="SITE_A")])
    async with db.transaction() as conn:
        await conn.execute(
            sa.insert(task_datasets),
            {
                "datasetID": 1,
                "jediTaskID": TASK,
                "datasetName": "unmerged/",
                "type": "trn_output",
                "creationTime": T0,
                "modificationTime": T0,
                "status": "defined",
            },
        )
        await conn.execute(
            sa.insert(task_files),
            {
                "jediTaskID": TASK,
                "datasetID": 1,
                "creationDate": T0,
                "fileID": 1,
                "lfn": "unmerged.1",
                "type": "trn_output",
                "status": "ready",
                "keepTrack": 1,
                "attemptNr": 0,
                "maxAttempt": 3,
                "failedAttempt": 0,
                "outPandaID": 9000,
            },
        )
        ready = await merges_db.ready_inputs(conn, TASK, 10)
    assert [(row["lfn"], row["computingSite"]) for row in ready] == [("unmerged.1", "SITE_A")]
