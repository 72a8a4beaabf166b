"""Queries on event-service jobsets after dispatch: their ranges, consumers, input rows and clones
(the life cycle is in :mod:`bamboo.logic.es_lifecycle`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.rows import skips_locked
from bamboo.db.schema import events, job_files, jobs, task_datasets, task_files

# Job eventService values (domain.md §7): consumers take ranges; jumbo jobs take them task-wide.
CONSUMER = 1
MERGE = 2
CLONE = 3
JUMBO = 4
CONSUMERS = (CONSUMER, JUMBO)
# Range statuses a consumer holds while it runs (api-v1.md §3.4).
HELD = ("sent", "running", "failed")
_FINAL_JOBS = ("finished", "failed", "cancelled", "closed")
# A failed range whose consumer processed part of it: ``processed_upto_eventID`` (the last event
# processed) within the range and short of its end. No pilot report carries that value today
# (api-v1.md §2.4 lists no such field), so only a row written otherwise takes this path.
_PARTIAL = sa.and_(
    events.c.status == "failed",
    events.c.processed_upto_eventID >= events.c.def_min_eventID,
    events.c.processed_upto_eventID < events.c.def_max_eventID,
)
# What a range copied from a partly processed one does not inherit: what the run wrote.
_RUN_FIELDS = (
    "row_ID processed_upto_eventID objstore_ID error_code error_diag path_convention zipRow_ID "
    "core_count cpu_consumption_time"
).split()


async def lock_jobset_rows(
    conn: AsyncConnection, jobset_ids: Sequence[int]
) -> dict[int, list[dict[str, Any]]]:
    """The input rows each jobset still holds (``PandaID = jobsetID``, running), locked until the
    transaction ends, jobsets and rows in ascending order: whoever decides a jobset's fate holds
    these, so two finalisers (or a finaliser and a kill) never decide the same jobset twice."""
    found: dict[int, list[dict[str, Any]]] = {jobset_id: [] for jobset_id in jobset_ids}
    if not jobset_ids:
        return found
    query = (
        sa.select(task_files)
        .where(task_files.c.PandaID.in_(sorted(jobset_ids)), task_files.c.status == "running")
        .order_by(task_files.c.PandaID, task_files.c.fileID)
    )
    if skips_locked(conn):
        query = query.with_for_update()
    for row in (await conn.execute(query)).mappings():
        found[row["PandaID"]].append(dict(row))
    return found


async def lock_datasets(conn: AsyncConnection, dataset_ids: Sequence[int]) -> None:
    """Lock these dataset rows in ascending datasetID order (the order every agent takes them in,
    db/tasks.py lock_datasets_of_tasks). PostgreSQL only: SQLite has one writer at a time."""
    if not dataset_ids or not skips_locked(conn):
        return
    query = (
        sa.select(task_datasets.c.datasetID)
        .where(task_datasets.c.datasetID.in_(sorted(set(dataset_ids))))
        .order_by(task_datasets.c.datasetID)
        .with_for_update()
    )
    await conn.execute(query)


async def finished_counts(conn: AsyncConnection, panda_ids: Sequence[int]) -> dict[int, int]:
    """How many ranges each consumer has finished (or already done, or failed after processing
    part of them)."""
    if not panda_ids:
        return {}
    query = (
        sa.select(events.c.PandaID, sa.func.count())
        .where(
            events.c.PandaID.in_(list(panda_ids)),
            sa.or_(events.c.status.in_(["finished", "done"]), _PARTIAL),
        )
        .group_by(events.c.PandaID)
    )
    return {row[0]: row[1] for row in await conn.execute(query)}


async def jobsets_held_by(conn: AsyncConnection, panda_ids: Sequence[int]) -> set[int]:
    """The jobsets whose ranges these consumers hold (a jumbo job holds ranges of many)."""
    if not panda_ids:
        return set()
    query = sa.select(events.c.jobsetID).where(events.c.PandaID.in_(list(panda_ids))).distinct()
    return set((await conn.execute(query)).scalars())


async def end_consumer_ranges(
    conn: AsyncConnection,
    panda_ids: Sequence[int],
    now: datetime,
    *,
    hopeless: str,
    release: str,
    failed_only: bool = False,
) -> None:
    """A consumer's end (domain.md §7.4): its ``finished`` ranges are ``done``; the ranges it still
    held go back to their jobset (``release``: ``ready`` with one attempt less, or ``cancelled``),
    and those whose attempts run out become ``hopeless`` (``failed`` or ``fatal``).

    ``failed_only`` (the task's decAttOnFailedES, splitRule ``XF``): only ``failed`` ranges lose an
    attempt; ranges handed out and given back unprocessed (``sent``/``running``) keep theirs.
    A failed range with partial progress (``processed_upto_eventID`` set) is split first: its
    processed part stays with the consumer as ``done`` and the rest is a new ready row.
    """
    if not panda_ids:
        return
    ids = list(panda_ids)
    mine = events.c.PandaID.in_(ids)
    await conn.execute(
        sa.update(events)
        .where(mine, events.c.status == "finished")
        .values(status="done", modificationTime=now)
    )
    held = sa.and_(mine, events.c.status.in_(HELD))
    if release == "cancelled":
        await conn.execute(
            sa.update(events)
            .where(held)
            .values(status="cancelled", PandaID=events.c.jobsetID, modificationTime=now)
        )
        return
    await _split_partial(conn, mine, now, hopeless)
    if failed_only:
        await conn.execute(
            sa.update(events)
            .where(mine, events.c.status.in_(["sent", "running"]))
            .values(status="ready", PandaID=events.c.jobsetID, modificationTime=now)
        )
        held = sa.and_(mine, events.c.status == "failed")
    await conn.execute(
        sa.update(events)
        .where(held, events.c.attemptNr <= 1)
        .values(status=hopeless, attemptNr=0, PandaID=events.c.jobsetID, modificationTime=now)
    )
    await conn.execute(
        sa.update(events)
        .where(held)
        .values(
            status="ready", attemptNr=events.c.attemptNr - 1, PandaID=events.c.jobsetID, modificationTime=now
        )
    )


async def _split_partial(conn: AsyncConnection, mine: Any, now: datetime, hopeless: str) -> None:
    """Failed ranges with partial progress (domain.md §7.4): the part up to
    ``processed_upto_eventID`` is kept ``done`` (the row's range ends there) and the rest becomes a
    new row of the jobset, ready with one attempt less (hopeless at 0). Three statements whatever
    the number of such ranges."""
    partial = sa.and_(mine, _PARTIAL)
    rows = [dict(row) for row in (await conn.execute(sa.select(events).where(partial))).mappings()]
    if not rows:
        return
    copies = []
    for row in rows:
        attempts = row["attemptNr"] - 1
        first = row["processed_upto_eventID"] + 1
        copy = {key: value for key, value in row.items() if key not in _RUN_FIELDS}
        copy.update(
            PandaID=row["jobsetID"],
            status="ready" if attempts > 0 else hopeless,
            attemptNr=max(attempts, 0),
            job_processID=first,
            def_min_eventID=first,
            modificationTime=now,
        )
        copies.append(copy)
    await conn.execute(sa.insert(events), copies)
    await conn.execute(
        sa.update(events)
        .where(events.c.row_ID.in_([row["row_ID"] for row in rows]))
        .values(status="done", def_max_eventID=events.c.processed_upto_eventID, modificationTime=now)
    )


async def done_holders(conn: AsyncConnection, jobset_id: int) -> set[int]:
    """The jobs that processed the jobset's ``done`` ranges: its consumers, jumbo jobs, and with
    notDiscardEvents the consumers of an earlier jobset of the same files (their ranges were
    adopted, logic/es_generation.py). Their zip files are the merge job's inputs."""
    query = (
        sa.select(events.c.PandaID)
        .where(events.c.jobsetID == jobset_id, events.c.status == "done", events.c.PandaID != jobset_id)
        .distinct()
    )
    return set((await conn.execute(query)).scalars())


async def files_with_done_ranges(conn: AsyncConnection, jobset_ids: Sequence[int]) -> dict[int, set[int]]:
    """Per jobset, the input fileIDs that have at least one ``done`` range."""
    found: dict[int, set[int]] = {}
    if not jobset_ids:
        return found
    query = (
        sa.select(events.c.jobsetID, events.c.fileID)
        .where(events.c.jobsetID.in_(list(jobset_ids)), events.c.status == "done")
        .distinct()
    )
    for jobset_id, file_id in await conn.execute(query):
        found.setdefault(jobset_id, set()).add(file_id)
    return found


async def range_counts(conn: AsyncConnection, jobset_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """Per jobset, how many ranges are in each status; ``failed``/``fatal`` ranges without attempts
    count as ``hopeless``, ``ready`` ones without attempts too (never handed out again)."""
    counts: dict[int, dict[str, int]] = {jobset_id: {} for jobset_id in jobset_ids}
    if not jobset_ids:
        return counts
    kind = sa.case(
        (
            sa.and_(events.c.status.in_(["failed", "fatal", "ready"]), events.c.attemptNr <= 0),
            sa.literal("hopeless"),
        ),
        else_=events.c.status,
    )
    query = (
        sa.select(events.c.jobsetID, kind, sa.func.count())
        .where(events.c.jobsetID.in_(list(jobset_ids)))
        .group_by(events.c.jobsetID, kind)
    )
    for jobset_id, status, count in await conn.execute(query):
        counts[jobset_id][status] = counts[jobset_id].get(status, 0) + count
    return counts


async def set_jobset_ranges(
    conn: AsyncConnection, jobset_ids: Sequence[int], statuses: Sequence[str], now: datetime, **values: Any
) -> None:
    if jobset_ids:
        await conn.execute(
            sa.update(events)
            .where(events.c.jobsetID.in_(list(jobset_ids)), events.c.status.in_(list(statuses)))
            .values(modificationTime=now, **values)
        )


async def jobs_of_jobsets(conn: AsyncConnection, jobset_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Every job of these jobsets (consumers, merge jobs, clones), full rows, by PandaID."""
    if not jobset_ids:
        return []
    # A normal job's jobsetID is its task's reqID, which may equal an ES jobsetID: not counted.
    query = (
        sa.select(jobs)
        .where(
            jobs.c.jobsetID.in_(list(jobset_ids)), jobs.c.eventService.in_([CONSUMER, MERGE, CLONE, JUMBO])
        )
        .order_by(jobs.c.PandaID)
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def live_jumbo_tasks(conn: AsyncConnection, task_ids: Sequence[int]) -> set[int]:
    """Tasks with a jumbo job still alive (it may still take any of the task's ranges)."""
    if not task_ids:
        return set()
    query = (
        sa.select(jobs.c.jediTaskID)
        .where(
            jobs.c.jediTaskID.in_(list(task_ids)),
            jobs.c.eventService == JUMBO,
            jobs.c.jobStatus.not_in(_FINAL_JOBS),
        )
        .distinct()
    )
    return set((await conn.execute(query)).scalars())


async def zip_files(conn: AsyncConnection, panda_ids: Sequence[int]) -> list[dict[str, Any]]:
    """The zip files consumers uploaded (job files of type ``zipoutput``)."""
    if not panda_ids:
        return []
    query = (
        sa.select(job_files)
        .where(job_files.c.PandaID.in_(list(panda_ids)), job_files.c.type == "zipoutput")
        .order_by(job_files.c.row_ID)
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def take_semaphore(conn: AsyncConnection, jobset_id: int, panda_id: int, now: datetime) -> bool:
    """A runonce clone takes its jobset's semaphore range (ready -> sent): one atomic UPDATE, so of
    two clones claimed at once exactly one sees a row changed."""
    result = await conn.execute(
        sa.update(events)
        .where(events.c.PandaID == jobset_id, events.c.jobsetID == jobset_id, events.c.status == "ready")
        .values(status="sent", PandaID=panda_id, modificationTime=now)
    )
    return result.rowcount == 1


async def close_jobs(
    conn: AsyncConnection, panda_ids: Sequence[int], statuses: Sequence[str], **values: Any
) -> list[int]:
    """Set ``values`` on those of the jobs still in one of ``statuses``; returns the ones changed.

    Rows another transaction holds are skipped (PostgreSQL): a clone being claimed elsewhere is
    closed by that claim when it loses the semaphore, and waiting for it could deadlock with it.
    """
    if not panda_ids:
        return []
    pick = (
        sa.select(jobs.c.PandaID)
        .where(jobs.c.PandaID.in_(list(panda_ids)), jobs.c.jobStatus.in_(list(statuses)))
        .order_by(jobs.c.PandaID)
    )
    if skips_locked(conn):
        pick = pick.with_for_update(skip_locked=True)
    picked = list((await conn.execute(pick)).scalars())
    if picked:
        await conn.execute(sa.update(jobs).where(jobs.c.PandaID.in_(picked)).values(**values))
    return picked


async def clone_siblings(conn: AsyncConnection, jobset_ids: Sequence[int]) -> list[dict[str, Any]]:
    """The clones of these jobsets, with their status."""
    if not jobset_ids:
        return []
    query = (
        sa.select(jobs.c.PandaID, jobs.c.jobsetID, jobs.c.jobStatus, jobs.c.jediTaskID)
        .where(jobs.c.jobsetID.in_(list(jobset_ids)), jobs.c.eventService == CLONE)
        .order_by(jobs.c.PandaID)
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def cancel_planned_outputs(conn: AsyncConnection, panda_ids: Sequence[int]) -> None:
    """The output rows jobs closed before they ran were to write: never written, never counted."""
    if panda_ids:
        await conn.execute(
            sa.update(task_files)
            .where(task_files.c.outPandaID.in_(list(panda_ids)), task_files.c.status == "running")
            .values(status="cancelled")
        )


async def es_members(conn: AsyncConnection, panda_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Those of the jobs that belong to the event service (consumers, merge jobs, clones, jumbo)."""
    if not panda_ids:
        return []
    columns = ("PandaID", "eventService", "jobsetID", "jediTaskID", "jobStatus", "taskBufferErrorCode")
    query = sa.select(*(jobs.c[name] for name in columns)).where(
        jobs.c.PandaID.in_(list(panda_ids)), jobs.c.eventService.in_([CONSUMER, MERGE, CLONE, JUMBO])
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def consumers_without_ranges(conn: AsyncConnection, panda_ids: Sequence[int]) -> list[int]:
    """Those of the jobs that are ES consumers and have not finished a single range (a failed
    range with partial progress counts as finished work, as in :func:`finished_counts`)."""
    if not panda_ids:
        return []
    finished = sa.exists(
        sa.select(events.c.row_ID).where(
            events.c.PandaID == jobs.c.PandaID, sa.or_(events.c.status.in_(["finished", "done"]), _PARTIAL)
        )
    )
    query = sa.select(jobs.c.PandaID).where(
        jobs.c.PandaID.in_(list(panda_ids)), jobs.c.eventService.in_(list(CONSUMERS)), ~finished
    )
    return sorted((await conn.execute(query)).scalars())


async def held_outputs(conn: AsyncConnection, jobset_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """The planned data-output rows each jobset holds (``outPandaID = jobsetID``, running): the
    job that finally writes them (ES merge job, winning clone) takes them over."""
    found: dict[int, list[dict[str, Any]]] = {jobset_id: [] for jobset_id in jobset_ids}
    if not jobset_ids:
        return found
    query = (
        sa.select(task_files)
        .where(task_files.c.outPandaID.in_(sorted(jobset_ids)), task_files.c.status == "running")
        .order_by(task_files.c.fileID)
    )
    for row in (await conn.execute(query)).mappings():
        found[row["outPandaID"]].append(dict(row))
    return found
