"""Queries on jobs and job files."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db.rows import skips_locked, uniform, update_each
from bamboo.db.schema import job_files, jobs, jobs_archive
from bamboo.db.types import UTCDateTime


async def insert(conn: AsyncConnection, rows: list[dict[str, Any]], files: list[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(sa.insert(jobs), uniform(rows))
    if files:
        await conn.execute(sa.insert(job_files), uniform(files))


# Hot-path statements are built once: constructing a ~130-column statement costs more than
# running it (parameters are bound at execution).
_REPORT_VIEW = (
    sa.select(
        jobs.c.PandaID,
        jobs.c.jobStatus,
        jobs.c.attemptNr,
        jobs.c.commandToPilot,
        jobs.c.specialHandling,
        jobs.c.batchID,
    )
    .where(jobs.c.PandaID == sa.bindparam("panda_id"))
    .with_for_update()
)
_FILES_OF = (
    sa.select(job_files)
    .where(job_files.c.PandaID.in_(sa.bindparam("ids", expanding=True)))
    .order_by(job_files.c.row_ID)
)


async def lock_for_report(conn: AsyncConnection, panda_id: int) -> dict[str, Any] | None:
    """The few columns a pilot report decides on, with the row locked until the transaction ends."""
    row = (await conn.execute(_REPORT_VIEW, {"panda_id": panda_id})).mappings().first()
    return dict(row) if row else None


async def get_many(conn: AsyncConnection, panda_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    if not panda_ids:
        return {}
    query = sa.select(jobs).where(jobs.c.PandaID.in_(list(panda_ids)))
    return {row["PandaID"]: dict(row) for row in (await conn.execute(query)).mappings()}


async def statuses(conn: AsyncConnection, panda_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    if not panda_ids:
        return {}
    query = sa.select(jobs.c.PandaID, jobs.c.jobStatus, jobs.c.commandToPilot, jobs.c.attemptNr).where(
        jobs.c.PandaID.in_(list(panda_ids))
    )
    return {row["PandaID"]: dict(row) for row in (await conn.execute(query)).mappings()}


async def files_of(conn: AsyncConnection, panda_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    grouped: dict[int, list[dict[str, Any]]] = {panda_id: [] for panda_id in panda_ids}
    if not panda_ids:
        return grouped
    for row in (await conn.execute(_FILES_OF, {"ids": list(panda_ids)})).mappings():
        grouped[row["PandaID"]].append(dict(row))
    return grouped


_UPDATE_CACHE_SIZE = 512
_update_cache: dict[tuple[str, ...], sa.Update] = {}


def _update_statement(columns: tuple[str, ...]) -> sa.Update:
    """An UPDATE of these columns by PandaID, built once per column set (pilot heartbeats run
    thousands a second with a handful of column sets)."""
    statement = _update_cache.get(columns)
    if statement is None:
        statement = (
            sa.update(jobs)
            .where(jobs.c.PandaID == sa.bindparam("row_panda_id"))
            .values({name: sa.bindparam(f"new_{name}", type_=jobs.c[name].type) for name in columns})
        )
        if len(_update_cache) < _UPDATE_CACHE_SIZE:
            _update_cache[columns] = statement
    return statement


async def update(conn: AsyncConnection, panda_id: int, **values: Any) -> None:
    columns = tuple(sorted(values))
    parameters = {f"new_{name}": value for name, value in values.items()}
    parameters["row_panda_id"] = panda_id
    await conn.execute(_update_statement(columns), parameters)


async def update_jobs_each(conn: AsyncConnection, updates: Iterable[tuple[int, dict[str, Any]]]) -> None:
    """Write each job's own values, given as ``(PandaID, values)`` pairs, in a few statements."""
    await update_each(conn, jobs.c.PandaID, updates)


async def update_files_each(conn: AsyncConnection, updates: Iterable[tuple[int, dict[str, Any]]]) -> None:
    """Write each job-file row's own values, given as ``(row_ID, values)`` pairs."""
    await update_each(conn, job_files.c.row_ID, updates)


async def update_files_of_jobs(
    conn: AsyncConnection, panda_ids: Sequence[int], types: Sequence[str], **values: Any
) -> None:
    if panda_ids:
        await conn.execute(
            sa.update(job_files)
            .where(job_files.c.PandaID.in_(list(panda_ids)), job_files.c.type.in_(list(types)))
            .values(**values)
        )


async def ids_of_task(conn: AsyncConnection, task_id: int) -> list[int]:
    """PandaIDs of all the task's jobs, active and archived, ascending."""
    found: list[int] = []
    for table in (jobs, jobs_archive):
        query = sa.select(table.c.PandaID).where(table.c.jediTaskID == task_id)
        found.extend((await conn.execute(query)).scalars())
    return sorted(found)


async def status_counts_of_task(conn: AsyncConnection, task_id: int) -> dict[str, int]:
    """How many of the task's jobs, active and archived, are in each status."""
    counts: dict[str, int] = {}
    for table in (jobs, jobs_archive):
        query = (
            sa.select(table.c.jobStatus, sa.func.count())
            .where(table.c.jediTaskID == task_id)
            .group_by(table.c.jobStatus)
        )
        for status, count in await conn.execute(query):
            counts[status] = counts.get(status, 0) + count
    return counts


async def status_counts_by_site(conn: AsyncConnection, statuses: Sequence[str]) -> dict[tuple[str, str], int]:
    query = (
        sa.select(jobs.c.computingSite, jobs.c.jobStatus, sa.func.count())
        .where(jobs.c.jobStatus.in_(list(statuses)))
        .group_by(jobs.c.computingSite, jobs.c.jobStatus)
    )
    return {(row[0], row[1]): row[2] for row in await conn.execute(query)}


async def with_status(
    conn: AsyncConnection, status: str, limit: int, *, condition: Any = None
) -> list[dict[str, Any]]:
    query = sa.select(jobs).where(jobs.c.jobStatus == status)
    if condition is not None:
        query = query.where(condition)
    query = query.order_by(jobs.c.PandaID).limit(limit)
    if skips_locked(conn):
        query = query.with_for_update(skip_locked=True)
    return [dict(row) for row in (await conn.execute(query)).mappings()]


@dataclass(frozen=True, slots=True)
class DispatchFilter:
    """What acquire_jobs selects on (api-v1.md §2.3)."""

    site: str
    labels: tuple[str, ...]
    memory: int = 0
    disk_space: int = 0
    remaining_time: int = 0
    resource_type: str | None = None
    task_id: int | None = None
    user_name: str | None = None
    # Only jobs flagged to run in the background (jobExecutionID = BACKGROUND_EXECUTION).
    background: bool = False
    # Jobs of this processingType also match, whatever their label (test pilots with a CE).
    also_processing_type: str | None = None
    # Global shares in the order dispatch serves them at this queue (logic/shares.py); jobs of
    # any other share come after them. Empty: order by priority alone.
    share_order: tuple[str, ...] = ()
    # (gshare, resource type) kinds whose target slots are used up (logic/target_slots.py); ""
    # matches any. Jobs of these kinds are not picked.
    excluded: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ClaimStamp:
    """What a claim writes on the jobs it hands out."""

    now: datetime
    node: str | None = None
    computing_element: str | None = None
    scheduler_id: str | None = None


def _keep_unless_given(name: str, column: Any) -> Any:
    return sa.func.coalesce(sa.bindparam(name, type_=sa.String()), column)


# The job attributes a dispatched job's description is made of (logic/dispatch.py job_dict):
# returning only these keeps the hottest write path from shipping ~130 columns per job.
DISPATCH_COLUMNS = (
    "PandaID",
    "prodSourceLabel",
    "AtlasRelease",
    "homepackage",
    "transformation",
    "jobName",
    "jobDefinitionID",
    "cloud",
    "jobParameters",
    "attemptNr",
    "destinationSE",
    "prodUserID",
    "maxCpuCount",
    "minRamCount",
    "maxDiskCount",
    "cmtConfig",
    "processingType",
    "transferType",
    "sourceSite",
    "currentPriority",
    "jediTaskID",
    "coreCount",
    "jobsetID",
    "reqID",
    "nucleus",
    "maxWalltime",
    "resource_type",
    "diskIO",
    "container_name",
    "specialHandling",
    "eventService",
    "prodUserName",  # whose secrets a job flagged "us" carries (logic/secrets.py)
)

# Built once: dispatch is the hottest write path, and building the statement costs more than
# running it.
_MARK_SENT = (
    sa.update(jobs)
    .where(jobs.c.PandaID.in_(sa.bindparam("ids", expanding=True)))
    .values(
        jobStatus="sent",
        modificationTime=sa.bindparam("now", type_=UTCDateTime()),
        stateChangeTime=sa.bindparam("now", type_=UTCDateTime()),
        startTime=sa.bindparam("now", type_=UTCDateTime()),
        modificationHost=_keep_unless_given("node", jobs.c.modificationHost),
        computingElement=_keep_unless_given("computing_element", jobs.c.computingElement),
        schedulerID=_keep_unless_given("scheduler_id", jobs.c.schedulerID),
    )
    .returning(*(jobs.c[name] for name in DISPATCH_COLUMNS))
)


# jobExecutionID of a job meant to run in the background (acquire_jobs ``background=true``).
BACKGROUND_EXECUTION = 1

_PICK_FILTERS = {
    "memory": lambda: sa.func.coalesce(jobs.c.minRamCount, 0) <= sa.bindparam("memory"),
    "disk_space": lambda: sa.func.coalesce(jobs.c.maxDiskCount, 0) <= sa.bindparam("disk_space"),
    "remaining_time": lambda: sa.func.coalesce(jobs.c.maxWalltime, 0) <= sa.bindparam("remaining_time"),
    "resource_type": lambda: jobs.c.resource_type == sa.bindparam("resource_type"),
    "task_id": lambda: jobs.c.jediTaskID == sa.bindparam("task_id"),
    "user_name": lambda: jobs.c.prodUserName == sa.bindparam("user_name"),
    "background": lambda: jobs.c.jobExecutionID == BACKGROUND_EXECUTION,
}
# Which jobs of the queue one pick reads: all of them, those of one share, or those of any share
# but the ones named in the share order.
_ALL, _ONE_SHARE, _OTHER_SHARES = "all", "share", "others"
_SHARE_CONDITIONS = {
    _ONE_SHARE: lambda: jobs.c.gshare == sa.bindparam("share"),
    _OTHER_SHARES: lambda: sa.or_(
        jobs.c.gshare.is_(None), jobs.c.gshare.not_in(sa.bindparam("ranked", expanding=True))
    ),
}
_pick_cache: dict[tuple[tuple[str, ...], bool, str, bool], sa.Select[Any]] = {}


def _active_filters(selection: DispatchFilter) -> tuple[str, ...]:
    present = []
    for name in _PICK_FILTERS:
        value = getattr(selection, name)
        if value is not None and value != 0:
            present.append(name)
    return tuple(present)


def _pick_statement(selection: DispatchFilter, skip_locked: bool, shares: str = _ALL) -> sa.Select[Any]:
    """The selection of a claim, built once per combination of filters and share condition."""
    by_processing = selection.also_processing_type is not None
    key = (_active_filters(selection), skip_locked, shares, by_processing)
    statement = _pick_cache.get(key)
    if statement is None:
        label_condition: Any = jobs.c.prodSourceLabel.in_(sa.bindparam("labels", expanding=True))
        if by_processing:
            label_condition = sa.or_(
                label_condition, jobs.c.processingType == sa.bindparam("processing_type")
            )
        statement = sa.select(jobs.c.PandaID).where(
            jobs.c.jobStatus == "activated",
            jobs.c.computingSite == sa.bindparam("site"),
            label_condition,
            *(_PICK_FILTERS[name]() for name in key[0]),
        )
        if shares != _ALL:
            statement = statement.where(_SHARE_CONDITIONS[shares]())
        statement = statement.order_by(jobs.c.currentPriority.desc(), jobs.c.PandaID).limit(
            sa.bindparam("limit")
        )
        if skip_locked:
            statement = statement.with_for_update(skip_locked=True)
        _pick_cache[key] = statement
    if selection.excluded:
        # Only queues with used-up target slots get here; their few kinds are bound values.
        statement = statement.where(sa.not_(sa.or_(*(_of_kind(*kind) for kind in selection.excluded))))
    return statement


def _of_kind(gshare: str, resource_type: str) -> sa.ColumnElement[bool]:
    """Jobs a slot row of this share and resource type covers ("" = any), NULL-safe so that the
    negation keeps jobs without a share or resource type."""
    conditions = []
    if gshare:
        conditions.append(sa.func.coalesce(jobs.c.gshare, "") == gshare)
    if resource_type:
        conditions.append(sa.func.coalesce(jobs.c.resource_type, "") == resource_type)
    return sa.and_(sa.true(), *conditions)


def _pick_parameters(selection: DispatchFilter, limit: int) -> dict[str, Any]:
    parameters: dict[str, Any] = {"site": selection.site, "labels": list(selection.labels), "limit": limit}
    if selection.also_processing_type is not None:
        parameters["processing_type"] = selection.also_processing_type
    for name in _active_filters(selection):
        if name != "background":  # a constant in the statement
            parameters[name] = getattr(selection, name)
    return parameters


async def _pick(conn: AsyncConnection, selection: DispatchFilter, limit: int) -> list[int]:
    """PandaIDs of up to ``limit`` matching activated jobs, locked, in dispatch order.

    With a share order, one pick per share in that order until ``limit`` is reached, then one for
    every other share: each reads the first rows of an index in the order it wants, so the cost is
    a few short index reads. A single pick ordered by a CASE over the shares would have the
    database sort all the queue's activated jobs on every call (several times slower with tens of
    thousands waiting); PostgreSQL refuses FOR UPDATE on a UNION, which rules out combining them.
    """
    skip_locked = skips_locked(conn)
    parameters = _pick_parameters(selection, limit)
    if not selection.share_order:
        return list((await conn.execute(_pick_statement(selection, skip_locked), parameters)).scalars())
    picked: list[int] = []
    for share in selection.share_order:
        parameters.update(share=share, limit=limit - len(picked))
        statement = _pick_statement(selection, skip_locked, _ONE_SHARE)
        picked.extend((await conn.execute(statement, parameters)).scalars())
        if len(picked) >= limit:
            return picked
    parameters.update(ranked=list(selection.share_order), limit=limit - len(picked))
    statement = _pick_statement(selection, skip_locked, _OTHER_SHARES)
    picked.extend((await conn.execute(statement, parameters)).scalars())
    return picked


async def claim_activated(
    conn: AsyncConnection, selection: DispatchFilter, limit: int, stamp: ClaimStamp
) -> list[dict[str, Any]]:
    """Mark up to ``limit`` matching activated jobs ``sent`` and return them in dispatch order:
    by the selection's share order, then highest priority first.

    On PostgreSQL the selection locks its rows and skips rows other transactions hold, so two
    pilots never receive the same job; on SQLite the write transaction holds the database lock,
    which gives the same guarantee.
    """
    # The pick and the update are separate statements on purpose: the pick locks (skipping rows
    # another transaction is claiming), the update goes by primary key. A single UPDATE over a
    # subquery lets the planner rescan the selection (over-claiming past LIMIT) or, with stale
    # statistics, scan the table.
    picked = await _pick(conn, selection, limit)
    if not picked:
        return []
    parameters = {
        "ids": picked,
        "now": stamp.now,
        "node": stamp.node,
        "computing_element": stamp.computing_element,
        "scheduler_id": stamp.scheduler_id,
    }
    claimed = [dict(row) for row in (await conn.execute(_MARK_SENT, parameters)).mappings()]
    # RETURNING gives no order; the pick's order is the dispatch order.
    rank = {panda_id: index for index, panda_id in enumerate(picked)}
    claimed.sort(key=lambda job: rank[job["PandaID"]])
    return claimed


_COUNT_SENT = sa.select(sa.func.count()).select_from(
    sa.select(jobs.c.PandaID)
    .where(
        jobs.c.jobStatus == "sent",
        jobs.c.computingSite == sa.bindparam("site"),
        jobs.c.prodSourceLabel.in_(sa.bindparam("labels", expanding=True)),
    )
    .limit(sa.bindparam("cap"))
    .subquery()
)


async def count_sent(conn: AsyncConnection, site: str, labels: Sequence[str], cap: int) -> int:
    """How many jobs with these labels a queue has handed out and not heard of since (``sent``),
    counting at most ``cap`` so the cost stays bounded however many there are."""
    parameters = {"site": site, "labels": list(labels), "cap": cap}
    return int((await conn.execute(_COUNT_SENT, parameters)).scalar_one())
