"""Queries on event ranges (the ``events`` table, upstream's JEDI_Events).

One row per range. While a range waits to be handed out its ``PandaID`` is its jobset's id;
once a consumer job takes it, the consumer's PandaID. The hand-out (:func:`claim_ready`) is the
one hot path: it locks the ranges it takes and, on PostgreSQL, skips the ones another consumer is
taking at that moment, so a range goes to one consumer only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.rows import skips_locked, uniform, update_each
from bamboo.db.schema import events, job_files, jobs, jobs_archive, task_files

#: Range statuses whose events count as processed for a job's ``nEvents``.
PROCESSED = ("finished", "done", "merged")


# Rows per executemany: bounded so one statement's parameters stay small on both backends.
INSERT_CHUNK = 5000


async def insert_ranges(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Insert event rows, each a dict of ``events`` columns (``row_ID`` is assigned), in a few
    executemany statements: a 10,000-range task costs a few statements, not one per range."""
    for start in range(0, len(rows), INSERT_CHUNK):
        await conn.execute(sa.insert(events), uniform(rows[start : start + INSERT_CHUNK]))


def _eligible(task_id: Any, jobset_id: Any | None, dataset_id: Any | None) -> list[sa.ColumnElement[bool]]:
    conditions = [events.c.jediTaskID == task_id, events.c.status == "ready", events.c.attemptNr > 0]
    if jobset_id is None:
        # The whole task (jumbo jobs): ranges no consumer holds, of any jobset.
        conditions.append(events.c.PandaID == events.c.jobsetID)
    else:
        conditions.append(events.c.PandaID == jobset_id)
    if dataset_id is not None:
        conditions.append(events.c.datasetID == dataset_id)
    return conditions


async def claim_ready(
    conn: AsyncConnection,
    *,
    task_id: int,
    jobset_id: int | None,
    dataset_id: int | None,
    limit: int,
    scattered: bool,
    consumer: int,
    is_jumbo: bool,
    now: datetime,
) -> list[dict[str, Any]]:
    """Hand up to ``limit`` ready ranges (attempts left) to ``consumer``: they become ``sent``.

    ``jobset_id`` None takes from every jobset of the task (jumbo jobs). Returned with the LFN,
    GUID and scope of their file, in hand-out order: by file and first event, or, ``scattered``,
    by first event then file, which with in-file event numbering takes one range of each file
    before a second one of any.

    On PostgreSQL the pick locks its rows and skips rows another transaction holds (``SKIP
    LOCKED``), so concurrent consumers of one jobset never get the same range; on SQLite the write
    transaction holds the database lock, which gives the same guarantee.
    """
    order = (
        (events.c.job_processID, events.c.fileID) if scattered else (events.c.fileID, events.c.job_processID)
    )
    pick = (
        sa.select(events.c.row_ID)
        .where(*_eligible(task_id, jobset_id, dataset_id))
        .order_by(*order)
        .limit(limit)
    )
    if skips_locked(conn):
        pick = pick.with_for_update(skip_locked=True)
    picked = list((await conn.execute(pick)).scalars())
    if not picked:
        return []
    # By primary key and still ready: the pick's lock (or SQLite's write lock) makes the guard a
    # formality, kept so that no statement can turn a range that is no longer ready into `sent`.
    await conn.execute(
        sa.update(events)
        .where(events.c.row_ID.in_(picked), events.c.status == "ready")
        .values(status="sent", PandaID=consumer, is_jumbo=is_jumbo, modificationTime=now)
    )
    query = (
        sa.select(
            events.c.row_ID,
            events.c.jediTaskID,
            events.c.PandaID,
            events.c.fileID,
            events.c.job_processID,
            events.c.attemptNr,
            events.c.def_min_eventID,
            events.c.def_max_eventID,
            task_files.c.lfn,
            task_files.c.GUID,
            task_files.c.scope,
        )
        .select_from(events.outerjoin(task_files, task_files.c.fileID == events.c.fileID))
        .where(events.c.row_ID.in_(picked), events.c.PandaID == consumer, events.c.status == "sent")
    )
    rows = [dict(row) for row in (await conn.execute(query)).mappings()]
    rank = {row_id: index for index, row_id in enumerate(picked)}
    rows.sort(key=lambda row: rank[row["row_ID"]])
    return rows


async def count_ready(conn: AsyncConnection, task_id: int, jobset_id: int | None) -> int:
    """Ranges of the jobset (None: of the whole task) that may still be handed out."""
    query = sa.select(sa.func.count()).select_from(events).where(*_eligible(task_id, jobset_id, None))
    return int((await conn.execute(query)).scalar_one())


async def holders(conn: AsyncConnection, panda_ids: Sequence[int]) -> set[int]:
    """Which of these jobs hold at least one range (in any status)."""
    if not panda_ids:
        return set()
    query = sa.select(events.c.PandaID).where(events.c.PandaID.in_(list(panda_ids))).distinct()
    return set((await conn.execute(query)).scalars())


async def held_for_update(
    conn: AsyncConnection, panda_ids: Sequence[int], statuses: Sequence[str]
) -> list[dict[str, Any]]:
    """The ranges these jobs hold in these statuses, locked until the transaction ends."""
    if not panda_ids:
        return []
    query = (
        sa.select(events)
        .where(events.c.PandaID.in_(sorted(panda_ids)), events.c.status.in_(list(statuses)))
        .order_by(events.c.row_ID)
        .with_for_update()
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def update_ranges(conn: AsyncConnection, updates: Iterable[tuple[int, dict[str, Any]]]) -> None:
    """Give each range (by ``row_ID``) its own values."""
    await update_each(conn, events.c.row_ID, updates)


async def processed_events(conn: AsyncConnection, panda_ids: Sequence[int]) -> dict[int, int]:
    """Events of each job's finished, done and merged ranges (the sum of the range sizes)."""
    if not panda_ids:
        return {}
    size = events.c.def_max_eventID - events.c.def_min_eventID + 1
    query = (
        sa.select(events.c.PandaID, sa.func.sum(size))
        .where(events.c.PandaID.in_(list(panda_ids)), events.c.status.in_(PROCESSED))
        .group_by(events.c.PandaID)
    )
    counted = {panda_id: int(total or 0) for panda_id, total in (await conn.execute(query)).all()}
    return {panda_id: counted.get(panda_id, 0) for panda_id in panda_ids}


async def of_jobs(conn: AsyncConnection, pairs: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    """The ranges each (jediTaskID, PandaID) pair holds, in file and event order."""
    if not pairs:
        return []
    query = (
        sa.select(
            events.c.jediTaskID,
            events.c.PandaID,
            events.c.fileID,
            events.c.job_processID,
            events.c.attemptNr,
            events.c.status,
            events.c.error_code,
            events.c.error_diag,
        )
        .where(sa.tuple_(events.c.jediTaskID, events.c.PandaID).in_(list(pairs)))
        .order_by(events.c.PandaID, events.c.fileID, events.c.job_processID)
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def status_counts(conn: AsyncConnection, task_id: int) -> dict[str, int]:
    """How many ranges of the task are in each status."""
    query = (
        sa.select(events.c.status, sa.func.count())
        .where(events.c.jediTaskID == task_id)
        .group_by(events.c.status)
    )
    return {status: int(count) for status, count in (await conn.execute(query)).all()}


# The job columns an event call decides on.
_EVENT_JOB_COLUMNS = (
    jobs.c.PandaID,
    jobs.c.jediTaskID,
    jobs.c.jobsetID,
    jobs.c.jobStatus,
    jobs.c.eventService,
    jobs.c.commandToPilot,
)


async def lock_job(conn: AsyncConnection, panda_id: int) -> dict[str, Any] | None:
    """The columns an event call decides on, of an active job, locked until the transaction ends.

    Locking the caller's job keeps a sibling that finds the jobset empty from closing it while it
    is taking ranges (:func:`lock_unused_siblings` skips locked jobs).
    """
    query = (
        sa.select(*_EVENT_JOB_COLUMNS, jobs.c.prodUserName)
        .where(jobs.c.PandaID == panda_id)
        .with_for_update()
    )
    row = (await conn.execute(query)).mappings().first()
    return dict(row) if row else None


async def event_jobs(
    conn: AsyncConnection, panda_ids: Sequence[int], *, lock: bool
) -> dict[int, dict[str, Any]]:
    """:func:`lock_job`'s columns for several jobs; with ``lock``, locked in PandaID order (no lock
    cycles between concurrent calls)."""
    if not panda_ids:
        return {}
    query = (
        sa.select(*_EVENT_JOB_COLUMNS).where(jobs.c.PandaID.in_(sorted(panda_ids))).order_by(jobs.c.PandaID)
    )
    if lock:
        query = query.with_for_update()
    return {row["PandaID"]: dict(row) for row in (await conn.execute(query)).mappings()}


async def lock_unused_siblings(
    conn: AsyncConnection, task_id: int, jobset_id: int, caller: int, statuses: Sequence[str]
) -> list[dict[str, Any]]:
    """ES consumers of the jobset other than ``caller``, in these statuses, holding no range.

    They are locked; a sibling another transaction holds (a pilot reporting or taking ranges right
    now) is skipped on PostgreSQL, so two consumers finding the jobset empty at once never wait
    for each other.
    """
    query = (
        sa.select(jobs.c.PandaID, jobs.c.jobStatus)
        .where(
            jobs.c.jobsetID == jobset_id,
            jobs.c.jediTaskID == task_id,
            jobs.c.eventService == 1,
            jobs.c.PandaID != caller,
            jobs.c.jobStatus.in_(list(statuses)),
        )
        .order_by(jobs.c.PandaID)
    )
    query = query.with_for_update(skip_locked=True) if skips_locked(conn) else query
    siblings = [dict(row) for row in (await conn.execute(query)).mappings()]
    busy = await holders(conn, [row["PandaID"] for row in siblings])
    return [row for row in siblings if row["PandaID"] not in busy]


async def job_owners(conn: AsyncConnection, panda_ids: Sequence[int]) -> dict[int, str | None]:
    """The owner (prodUserName) of each known job, active or archived."""
    if not panda_ids:
        return {}
    owners: dict[int, str | None] = {}
    for table in (jobs_archive, jobs):
        query = sa.select(table.c.PandaID, table.c.prodUserName).where(table.c.PandaID.in_(list(panda_ids)))
        owners.update({panda_id: owner for panda_id, owner in (await conn.execute(query)).all()})
    return owners


async def add_zip_file(conn: AsyncConnection, row: dict[str, Any]) -> int:
    """Register a zip of event outputs as a file of its job; returns the new ``job_files`` row_ID."""
    result = await conn.execute(sa.insert(job_files).values(**row))
    return int(result.inserted_primary_key[0])


async def set_job_events(conn: AsyncConnection, counts: dict[int, int]) -> None:
    """Store each job's processed event count in its ``nEvents``."""
    await update_each(conn, jobs.c.PandaID, [(panda_id, {"nEvents": n}) for panda_id, n in counts.items()])
