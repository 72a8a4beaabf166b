"""Queries on Harvester workers and the worker -> job relation (domain.md §8.1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.rows import skips_locked
from bamboo.db.schema import harvester_workers, jobs, jobs_archive, worker_jobs
from bamboo.db.types import UTCDateTime


async def relate_jobs(
    conn: AsyncConnection, harvester_id: str, worker_id: int, panda_ids: Sequence[int], now: datetime
) -> None:
    """Record that the worker runs these jobs (just dispatched: a PandaID is handed out once, so
    every pair is new)."""
    if not panda_ids:
        return
    await conn.execute(
        sa.insert(worker_jobs),
        [
            {"harvesterID": harvester_id, "workerID": worker_id, "PandaID": panda_id, "lastUpdate": now}
            for panda_id in panda_ids
        ],
    )


async def jobs_of_worker(conn: AsyncConnection, harvester_id: str, worker_id: int) -> list[int]:
    """PandaIDs related to a worker, in PandaID order."""
    query = (
        sa.select(worker_jobs.c.PandaID)
        .where(worker_jobs.c.harvesterID == harvester_id, worker_jobs.c.workerID == worker_id)
        .order_by(worker_jobs.c.PandaID)
    )
    return list((await conn.execute(query)).scalars())


async def set_pilot_status(
    conn: AsyncConnection, harvester_id: str, worker_id: int, values: dict[str, Any]
) -> bool:
    """Update the pilot columns of a worker; False when the worker is unknown."""
    result = await conn.execute(
        sa.update(harvester_workers)
        .where(harvester_workers.c.harvesterID == harvester_id, harvester_workers.c.workerID == worker_id)
        .values(**values)
    )
    return bool(result.rowcount)


async def get(conn: AsyncConnection, harvester_id: str, worker_id: int) -> dict[str, Any] | None:
    """A worker's row, or None."""
    query = sa.select(harvester_workers).where(
        harvester_workers.c.harvesterID == harvester_id, harvester_workers.c.workerID == worker_id
    )
    row = (await conn.execute(query)).mappings().first()
    return dict(row) if row else None


def _dialect(conn: AsyncConnection) -> Any:
    # INSERT ... ON CONFLICT has the same shape on both backends but lives in each dialect.
    return postgresql if conn.dialect.name == "postgresql" else sqlite


async def lock_states(
    conn: AsyncConnection, harvester_id: str, worker_ids: Sequence[int]
) -> dict[int, dict[str, Any]]:
    """Status and lastUpdate of the workers already stored, locked until the end of the
    transaction on PostgreSQL (two reports on one worker then apply one after the other)."""
    if not worker_ids:
        return {}
    query = sa.select(
        harvester_workers.c.workerID, harvester_workers.c.status, harvester_workers.c.lastUpdate
    ).where(
        harvester_workers.c.harvesterID == harvester_id, harvester_workers.c.workerID.in_(list(worker_ids))
    )
    if skips_locked(conn):
        query = query.order_by(harvester_workers.c.workerID).with_for_update()
    return {row["workerID"]: dict(row) for row in (await conn.execute(query)).mappings()}


async def upsert(
    conn: AsyncConnection, harvester_id: str, rows: Sequence[tuple[int, dict[str, Any]]]
) -> None:
    """Insert each worker, or set the given columns of the stored one (by workerID).

    One executemany per set of columns: Harvester sends the same keys for every worker, so a call
    is one statement whatever its size.
    """
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for worker_id, values in sorted(rows, key=lambda row: row[0]):
        groups.setdefault(tuple(sorted(values)), []).append(
            {**values, "harvesterID": harvester_id, "workerID": worker_id}
        )
    for columns, parameters in groups.items():
        statement = _dialect(conn).insert(harvester_workers)
        statement = statement.on_conflict_do_update(
            index_elements=["harvesterID", "workerID"],
            set_={name: statement.excluded[name] for name in columns},
        )
        await conn.execute(statement, parameters)


async def sync_jobs(
    conn: AsyncConnection, harvester_id: str, lists: Mapping[int, Sequence[int]], now: datetime
) -> None:
    """Make each worker's job relations exactly its list (``{workerID: PandaIDs}``): new pairs
    inserted, kept ones refreshed, the others deleted; a few statements for the whole call."""
    if not lists:
        return
    query = sa.select(worker_jobs.c.workerID, worker_jobs.c.PandaID).where(
        worker_jobs.c.harvesterID == harvester_id, worker_jobs.c.workerID.in_(sorted(lists))
    )
    known = {(worker_id, panda_id) for worker_id, panda_id in (await conn.execute(query)).all()}
    wanted = {(worker_id, panda_id) for worker_id, panda_ids in lists.items() for panda_id in panda_ids}
    pair = (
        worker_jobs.c.harvesterID == harvester_id,
        worker_jobs.c.workerID == sa.bindparam("b_worker"),
        worker_jobs.c.PandaID == sa.bindparam("b_panda"),
    )
    stale = [{"b_worker": w, "b_panda": p} for w, p in sorted(known - wanted)]
    if stale:
        await conn.execute(sa.delete(worker_jobs).where(*pair), stale)
    kept = [{"b_worker": w, "b_panda": p, "b_now": now} for w, p in sorted(known & wanted)]
    if kept:
        statement = (
            sa.update(worker_jobs).where(*pair).values(lastUpdate=sa.bindparam("b_now", type_=UTCDateTime()))
        )
        await conn.execute(statement, kept)
    new = sorted(wanted - known)
    if new:
        # A pair acquire_jobs records meanwhile (a job handed to the worker now) is no error.
        insert = _dialect(conn).insert(worker_jobs)
        insert = insert.on_conflict_do_update(
            index_elements=["harvesterID", "workerID", "PandaID"],
            set_={"lastUpdate": insert.excluded.lastUpdate},
        )
        await conn.execute(
            insert,
            [{"harvesterID": harvester_id, "workerID": w, "PandaID": p, "lastUpdate": now} for w, p in new],
        )


_EFFECT_COLUMNS = ("PandaID", "jobStatus", "reported_status", "prodUserName", "prodUserID")


async def jobs_for_effects(conn: AsyncConnection, panda_ids: Sequence[int]) -> list[dict[str, Any]]:
    """What a worker report needs of its jobs, active (``active`` true) or archived, each once."""
    active = sa.select(*(jobs.c[name] for name in _EFFECT_COLUMNS), sa.literal(True).label("active")).where(
        jobs.c.PandaID.in_(list(panda_ids))
    )
    found = {row["PandaID"]: dict(row) for row in (await conn.execute(active)).mappings()}
    archived = sa.select(
        *(jobs_archive.c[name] for name in _EFFECT_COLUMNS), sa.literal(False).label("active")
    ).where(jobs_archive.c.PandaID.in_(list(panda_ids)))
    for row in (await conn.execute(archived)).mappings():
        found.setdefault(row["PandaID"], dict(row))
    return [found[key] for key in sorted(found)]


async def set_supervisor_errors(conn: AsyncConnection, errors: dict[int, tuple[int, str | None]]) -> None:
    """Set supErrorCode/supErrorDiag of jobs, in the active and the archive table."""
    if not errors:
        return
    parameters = [
        {"b_panda_id": panda_id, "b_code": code, "b_diag": diag[:250] if diag else diag}
        for panda_id, (code, diag) in sorted(errors.items())
    ]
    for table in (jobs, jobs_archive):
        statement = (
            sa.update(table)
            .where(table.c.PandaID == sa.bindparam("b_panda_id"))
            .values(supErrorCode=sa.bindparam("b_code"), supErrorDiag=sa.bindparam("b_diag"))
        )
        await conn.execute(statement, parameters)


# The status guard keeps a job that moved on since it was read (SQLite has no row locks) untouched.
_FAIL = (
    sa.update(jobs)
    .where(jobs.c.PandaID == sa.bindparam("b_panda_id"), jobs.c.jobStatus == sa.bindparam("b_status"))
    .values(
        jobStatus="holding",
        reported_status="failed",
        output_report="",
        taskBufferErrorCode=sa.bindparam("b_code"),
        taskBufferErrorDiag=sa.bindparam("b_diag"),
        commandToPilot=sa.bindparam("b_command"),
        modificationTime=sa.bindparam("b_now", type_=UTCDateTime()),
        stateChangeTime=sa.bindparam("b_now", type_=UTCDateTime()),
        endTime=sa.func.coalesce(jobs.c.endTime, sa.bindparam("b_now", type_=UTCDateTime())),
    )
)


async def fail_for_finaliser(
    conn: AsyncConnection, failures: Sequence[dict[str, Any]], code: int, command: str, now: datetime
) -> None:
    """Put each job (``PandaID``, ``jobStatus``, ``diag``) in holding with a failed final report
    and taskBufferErrorCode ``code``, for the finaliser to end as a pilot-reported failure."""
    await conn.execute(
        _FAIL,
        [
            {
                "b_panda_id": job["PandaID"],
                "b_status": job["jobStatus"],
                "b_code": code,
                "b_diag": job["diag"][:300],
                "b_command": command,
                "b_now": now,
            }
            for job in sorted(failures, key=lambda job: job["PandaID"])
        ],
    )


async def max_worker_id(conn: AsyncConnection, harvester_id: str) -> int | None:
    """The largest workerID of the instance, None without workers."""
    query = sa.select(sa.func.max(harvester_workers.c.workerID)).where(
        harvester_workers.c.harvesterID == harvester_id
    )
    return (await conn.execute(query)).scalar()
