"""Queries on tasks, their datasets and their file rows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import merges
from bamboo.db.rows import skips_locked, uniform, update_each, with_values_inline
from bamboo.db.schema import events, task_datasets, task_files, tasks


async def insert(conn: AsyncConnection, values: dict[str, Any]) -> None:
    await conn.execute(sa.insert(tasks).values(**values))


async def get(conn: AsyncConnection, task_id: int) -> dict[str, Any] | None:
    row = (await conn.execute(sa.select(tasks).where(tasks.c.jediTaskID == task_id))).mappings().first()
    return dict(row) if row else None


async def status_of(conn: AsyncConnection, task_id: int) -> str | None:
    query = sa.select(tasks.c.status).where(tasks.c.jediTaskID == task_id)
    return (await conn.execute(query)).scalar_one_or_none()


async def newest_by_name(conn: AsyncConnection, user_name: str, task_name: str) -> dict[str, Any] | None:
    query = (
        sa.select(tasks.c.jediTaskID, tasks.c.status)
        .where(tasks.c.userName == user_name, tasks.c.taskName == task_name)
        .order_by(tasks.c.jediTaskID.desc())
        .limit(1)
    )
    row = (await conn.execute(query)).mappings().first()
    return dict(row) if row else None


async def update(conn: AsyncConnection, task_id: int, **values: Any) -> None:
    """Write task columns other than the status (a status goes through ``logic.task_status``)."""
    if "status" in values:
        raise ValueError("a task status is written only by logic.task_status.change")
    await conn.execute(sa.update(tasks).where(tasks.c.jediTaskID == task_id).values(**values))


async def write_status(conn: AsyncConnection, task_id: int, status: str, **values: Any) -> None:
    """Write a status the transition table allowed (called by ``logic.task_status.change`` only)."""
    await conn.execute(sa.update(tasks).where(tasks.c.jediTaskID == task_id).values(status=status, **values))


async def claim(
    conn: AsyncConnection, statuses: Iterable[str], limit: int, *, old_statuses: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """Tasks in the given statuses (or pending with one of ``old_statuses``), oldest first,
    locked for this transaction; rows other agents hold are skipped on PostgreSQL."""
    condition = tasks.c.status.in_(list(statuses))
    old = list(old_statuses)
    if old:
        condition = sa.or_(condition, sa.and_(tasks.c.status == "pending", tasks.c.oldStatus.in_(old)))
    query = sa.select(tasks).where(condition).order_by(tasks.c.jediTaskID).limit(limit)
    if skips_locked(conn):
        query = query.with_for_update(skip_locked=True)
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def ids_for_user(
    conn: AsyncConnection, user_name: str | None, since: datetime, equal_filters: dict[str, Any], limit: int
) -> list[int]:
    query = sa.select(tasks.c.jediTaskID).where(tasks.c.modificationTime >= since)
    if user_name is not None:
        query = query.where(tasks.c.userName == user_name)
    for field, value in equal_filters.items():
        query = query.where(tasks.c[field] == value)
    query = query.order_by(tasks.c.jediTaskID).limit(limit)
    return list((await conn.execute(query)).scalars())


async def get_many(conn: AsyncConnection, task_ids: Sequence[int]) -> list[dict[str, Any]]:
    if not task_ids:
        return []
    query = sa.select(tasks).where(tasks.c.jediTaskID.in_(list(task_ids))).order_by(tasks.c.jediTaskID)
    return [dict(row) for row in (await conn.execute(query)).mappings()]


# --- datasets -------------------------------------------------------------------------------------
#: The counters of a dataset just inserted, before any file row is added.
EMPTY_DATASET_COUNTERS: dict[str, int] = dict.fromkeys(
    (
        "nFiles",
        "nFilesToBeUsed",
        "nFilesUsed",
        "nFilesFinished",
        "nFilesFailed",
        "nFilesOnHold",
        "nFilesMissing",
        "nEvents",
        "nEventsToBeUsed",
        "nEventsUsed",
    ),
    0,
)


async def insert_dataset(conn: AsyncConnection, values: dict[str, Any]) -> int:
    result = await conn.execute(
        sa.insert(task_datasets).values(**values).returning(task_datasets.c.datasetID)
    )
    return result.scalar_one()


async def datasets(conn: AsyncConnection, task_id: int) -> list[dict[str, Any]]:
    query = (
        sa.select(task_datasets)
        .where(task_datasets.c.jediTaskID == task_id)
        .order_by(task_datasets.c.datasetID)
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def datasets_of_tasks(conn: AsyncConnection, task_ids: Sequence[int]) -> list[dict[str, Any]]:
    if not task_ids:
        return []
    query = (
        sa.select(task_datasets)
        .where(task_datasets.c.jediTaskID.in_(list(task_ids)))
        .order_by(task_datasets.c.datasetID)
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def lock_datasets_of_tasks(conn: AsyncConnection, task_ids: Sequence[int]) -> None:
    """Lock the dataset rows of these tasks until the transaction ends, in datasetID order.

    Agents that change several dataset rows in one transaction (the generator, the finaliser) take
    them in ascending datasetID order, so none of them can hold a row that another one waits for
    while waiting for a row that other one holds: no deadlock between them. PostgreSQL only:
    SQLite has one writer at a time.
    """
    if not task_ids or not skips_locked(conn):
        return
    query = (
        sa.select(task_datasets.c.datasetID)
        .where(task_datasets.c.jediTaskID.in_(sorted(task_ids)))
        .order_by(task_datasets.c.datasetID)
        .with_for_update()
    )
    await conn.execute(query)


async def bump_dataset(conn: AsyncConnection, dataset_id: int, now: datetime, **increments: int) -> None:
    """Add to dataset counters (``nFilesUsed=+3``...) in one statement, safe under concurrency."""
    values: dict[str, Any] = {
        name: task_datasets.c[name] + delta for name, delta in increments.items() if delta
    }
    if values:
        values["modificationTime"] = now
        await conn.execute(
            sa.update(task_datasets).where(task_datasets.c.datasetID == dataset_id).values(**values)
        )


async def update_dataset(conn: AsyncConnection, dataset_id: int, **values: Any) -> None:
    await conn.execute(
        sa.update(task_datasets).where(task_datasets.c.datasetID == dataset_id).values(**values)
    )


async def reserve_serials(conn: AsyncConnection, dataset_id: int, count: int) -> int:
    """Reserve ``count`` serial numbers of an output dataset; returns the first. Never reused."""
    result = await conn.execute(
        sa.update(task_datasets)
        .where(task_datasets.c.datasetID == dataset_id)
        .values(serial_nr=task_datasets.c.serial_nr + count)
        .returning(task_datasets.c.serial_nr)
    )
    return result.scalar_one() - count


# --- file rows ------------------------------------------------------------------------------------
async def insert_files(conn: AsyncConnection, rows: list[dict[str, Any]]) -> list[int]:
    """Insert file rows; returns their fileIDs in the order given."""
    if not rows:
        return []
    result = await conn.execute(
        sa.insert(task_files).returning(task_files.c.fileID, sort_by_parameter_order=True), uniform(rows)
    )
    return list(result.scalars())


# Bulk paths. SQLAlchemy can promise RETURNING in parameter order on SQLite only by inserting one
# row per statement (SQLite does not guarantee the order of RETURNING rows), which made a 100,000
# row insert take minutes; these two never need that order.


async def add_files(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Insert file rows whose fileIDs the caller does not need, in one executemany."""
    if rows:
        await conn.execute(sa.insert(task_files), uniform(rows))


async def insert_outputs(conn: AsyncConnection, rows: list[dict[str, Any]]) -> dict[tuple[int, int], int]:
    """Insert planned output rows; returns their fileIDs by ``(outPandaID, datasetID)``.

    A job plans one row per output dataset, so that pair names each row of a batch.
    """
    if not rows:
        return {}
    result = await conn.execute(
        sa.insert(task_files).returning(task_files.c.fileID, task_files.c.outPandaID, task_files.c.datasetID),
        uniform(rows),
    )
    ids = {(panda_id, dataset_id): file_id for file_id, panda_id, dataset_id in result}
    if len(ids) != len(rows):
        raise ValueError("planned output rows must differ in (outPandaID, datasetID)")
    return ids


async def eligible_rows(conn: AsyncConnection, dataset_id: int, limit: int) -> list[dict[str, Any]]:
    """Master rows a new job may take: ready, tracked and with attempts left, in file order."""
    # The dataset's task is named too, so the (jediTaskID, datasetID, status) index finds the rows
    # (on SQLite already in fileID order); on datasetID alone both backends scan every file row.
    owner = sa.select(task_datasets.c.jediTaskID).where(task_datasets.c.datasetID == dataset_id)
    query = (
        sa.select(task_files)
        .where(
            task_files.c.jediTaskID == owner.scalar_subquery(),
            task_files.c.datasetID == dataset_id,
            task_files.c.status == "ready",
            task_files.c.keepTrack == 1,
            sa.or_(task_files.c.maxAttempt.is_(None), task_files.c.attemptNr < task_files.c.maxAttempt),
            sa.or_(task_files.c.maxFailure.is_(None), task_files.c.failedAttempt < task_files.c.maxFailure),
        )
        .order_by(task_files.c.fileID)
        .limit(limit)
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def rows_of_jobs(conn: AsyncConnection, panda_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Input rows held by the given jobs and output rows they produce."""
    if not panda_ids:
        return []
    ids = list(panda_ids)
    query = sa.select(task_files).where(
        sa.or_(task_files.c.PandaID.in_(ids), task_files.c.outPandaID.in_(ids))
    )
    return [dict(row) for row in (await conn.execute(query)).mappings()]


async def update_files(conn: AsyncConnection, file_ids: Sequence[int], **values: Any) -> None:
    if file_ids:
        await conn.execute(
            sa.update(task_files).where(task_files.c.fileID.in_(list(file_ids))).values(**values)
        )


async def assign_files(conn: AsyncConnection, assignments: Sequence[tuple[int, int]], **values: Any) -> None:
    """Hand file rows to jobs: each ``(fileID, PandaID)`` pair sets that row's PandaID, and
    ``values`` are written on every row.

    One executemany of a prepared UPDATE by primary key for the whole batch: a statement per job
    cost the generator most of its time, and executemany is the same on both backends.
    """
    if not assignments:
        return
    # Bind names differ from the column names: SQLAlchemy reserves those for its own SET parameters.
    statement = (
        sa.update(task_files)
        .where(task_files.c.fileID == sa.bindparam("assigned_file_id"))
        .values(
            PandaID=sa.bindparam("assigned_panda_id"),
            **{name: sa.bindparam(f"new_{name}", type_=task_files.c[name].type) for name in values},
        )
    )
    common = {f"new_{name}": value for name, value in values.items()}
    await conn.execute(
        statement,
        [
            {"assigned_file_id": file_id, "assigned_panda_id": panda_id, **common}
            for file_id, panda_id in assignments
        ],
    )


async def update_file(conn: AsyncConnection, file_id: int, **values: Any) -> None:
    await conn.execute(sa.update(task_files).where(task_files.c.fileID == file_id).values(**values))


async def update_files_each(conn: AsyncConnection, updates: Iterable[tuple[int, dict[str, Any]]]) -> None:
    """Write each file row's own values, given as ``(fileID, values)`` pairs, in a few statements."""
    await update_each(conn, task_files.c.fileID, updates)


async def file_status_counts(conn: AsyncConnection, dataset_ids: Sequence[int]) -> dict[tuple[int, str], int]:
    if not dataset_ids:
        return {}
    query = (
        sa.select(task_files.c.datasetID, task_files.c.status, sa.func.count())
        .where(task_files.c.datasetID.in_(list(dataset_ids)))
        .group_by(task_files.c.datasetID, task_files.c.status)
    )
    return {(row[0], row[1]): row[2] for row in await conn.execute(query)}


async def claim_generating(
    conn: AsyncConnection, statuses: Sequence[str], limit: int, merge_statuses: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Tasks the job generator should look at: in a generating status (or pending after one) and
    with at least one master row that a new job may take, or, in those statuses or
    ``merge_statuses``, an unmerged file ready for a merge job."""
    # Correlated explicitly: nested inside EXISTS, SQLAlchemy would otherwise add a FROM tasks of
    # its own and every task would look as if it had work.
    master = (
        sa.select(task_datasets.c.datasetID)
        .where(
            task_datasets.c.jediTaskID == tasks.c.jediTaskID,
            task_datasets.c.masterID.is_(None),
            task_datasets.c.type.in_(["input", "pseudo_input"]),
        )
        .correlate(tasks)
    )
    # The task is named as well as its master datasets so that the (jediTaskID, datasetID, status)
    # index answers: on datasetID alone SQLite scanned every file row, once per task, every cycle.
    has_work = sa.exists(
        sa.select(task_files.c.fileID).where(
            task_files.c.jediTaskID == tasks.c.jediTaskID,
            task_files.c.datasetID.in_(master.scalar_subquery()),
            task_files.c.status == "ready",
            task_files.c.keepTrack == 1,
            sa.or_(task_files.c.maxAttempt.is_(None), task_files.c.attemptNr < task_files.c.maxAttempt),
            sa.or_(task_files.c.maxFailure.is_(None), task_files.c.failedAttempt < task_files.c.maxFailure),
        )
    )
    status_ok = sa.or_(
        tasks.c.status.in_(list(statuses)),
        sa.and_(tasks.c.status == "pending", tasks.c.oldStatus.in_(list(statuses))),
    )
    merge_status_ok = sa.or_(status_ok, tasks.c.status.in_(list(merge_statuses)))
    # Least recently served first: generation updates modificationTime, so tasks take turns.
    query = (
        sa.select(tasks)
        .where(
            sa.or_(
                sa.and_(status_ok, has_work),
                sa.and_(merge_status_ok, merges.waiting_for_merge(tasks.c.jediTaskID)),
            )
        )
        .order_by(tasks.c.modificationTime, tasks.c.jediTaskID)
        .limit(limit)
    )
    if skips_locked(conn):
        query = query.with_for_update(skip_locked=True, of=tasks)
    claimed = [dict(row) for row in (await conn.execute(with_values_inline(query))).mappings()]
    if len(claimed) < limit:
        claimed += await _claim_waiting_for_jumbo(
            conn, status_ok, limit - len(claimed), [t["jediTaskID"] for t in claimed]
        )
    return claimed


async def _claim_waiting_for_jumbo(
    conn: AsyncConnection, status_ok: sa.ColumnElement[bool], limit: int, taken: Sequence[int]
) -> list[dict[str, Any]]:
    """Event-service tasks waiting for their jumbo jobs (logic/es_generation.py) once they have
    ranges. A query of its own: OR-ed into the main claim, this EXISTS made PostgreSQL give up the
    semi-join plans of the others and scan every file row per call (0.1 s -> 1 s with 30,000 jobs)."""
    query = (
        sa.select(tasks)
        .where(
            status_ok,
            tasks.c.eventService == 1,
            tasks.c.useJumbo == "W",
            tasks.c.jediTaskID.notin_(list(taken)),
            sa.exists(
                sa.select(events.c.row_ID).where(
                    events.c.jediTaskID == tasks.c.jediTaskID,
                    events.c.status == "ready",
                    events.c.attemptNr > 0,
                )
            ),
        )
        .order_by(tasks.c.modificationTime, tasks.c.jediTaskID)
        .limit(limit)
    )
    if skips_locked(conn):
        query = query.with_for_update(skip_locked=True, of=tasks)
    return [dict(row) for row in (await conn.execute(with_values_inline(query))).mappings()]


async def claim_completed(conn: AsyncConnection, statuses: Sequence[str], limit: int) -> list[dict[str, Any]]:
    """Tasks whose master input has nothing left to do (every row finished or out of attempts) and
    whose unmerged files are all merged or out of attempts."""
    done = sa.exists(
        sa.select(task_datasets.c.datasetID).where(
            task_datasets.c.jediTaskID == tasks.c.jediTaskID,
            task_datasets.c.masterID.is_(None),
            task_datasets.c.type.in_(["input", "pseudo_input"]),
            task_datasets.c.nFilesFinished + task_datasets.c.nFilesFailed >= task_datasets.c.nFiles,
            # An open input may still grow (logic/feeder.py): the task is not done yet.
            task_datasets.c.status != "toupdate",
        )
    )
    query = (
        sa.select(tasks)
        .where(tasks.c.status.in_(list(statuses)), done, ~merges.merges_outstanding(tasks.c.jediTaskID))
        .order_by(tasks.c.jediTaskID)
        .limit(limit)
    )
    if skips_locked(conn):
        query = query.with_for_update(skip_locked=True, of=tasks)
    return [dict(row) for row in (await conn.execute(with_values_inline(query))).mappings()]


async def listing(
    conn: AsyncConnection, *, status: str | None, user_name: str | None, limit: int
) -> list[dict[str, Any]]:
    """The newest tasks, optionally of one status or one owner."""
    query = sa.select(
        tasks.c.jediTaskID,
        tasks.c.taskName,
        tasks.c.status,
        tasks.c.userName,
        tasks.c.currentPriority,
        tasks.c.site,
        tasks.c.modificationTime,
    )
    if status is not None:
        query = query.where(tasks.c.status == status)
    if user_name is not None:
        query = query.where(tasks.c.userName == user_name)
    query = query.order_by(tasks.c.jediTaskID.desc()).limit(limit)
    return [dict(row) for row in (await conn.execute(query)).mappings()]
