"""Job statistics (api-v1.md §2.9): how many jobs are in each status, by cloud, site, resource type,
processing type, label or share, as monitoring, Harvester and the pilot factories read them.

"Active" jobs are the jobs of the active table in a non-final status (upstream's defined and active
tables). The "window" adds the jobs that reached a final status recently: final jobs modified in
the last 12 hours (or ``time_window`` minutes), whether the archiver has moved them to the archive
yet or not (docs/architecture.md, "Job statistics"). The database counts (db/statistics.py); this
module only nests the counted groups into the answer's dictionaries and fills the zeros.

An empty system answers empty dictionaries: the endpoints report success with them (DESIGN §9.3),
unlike upstream, which reports an empty answer as a database failure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.config import Settings
from bamboo.db import statistics as statistics_db
from bamboo.logic import shares
from bamboo.logic.clock import Clock
from bamboo.logic.errors import InvalidInput
from bamboo.logic.shares import ShareTree
from bamboo.logic.states import JOB_FINAL, JOB_STATUSES

ANALYSIS_LABELS = ("user", "panda")
# Pilot test jobs count as production here, as upstream's list of "ptest" labels does.
PILOT_TEST_LABELS = ("ptest", "rc_test", "rc_test2", "rc_alrb")
PRODUCTION_LABELS = ("managed", *PILOT_TEST_LABELS)
KINDS = {"production": PRODUCTION_LABELS, "analysis": ANALYSIS_LABELS}

ACTIVE_STATUSES = tuple(sorted(JOB_STATUSES - JOB_FINAL))
FINAL_STATUSES = tuple(sorted(JOB_FINAL))
# Event-service jobs waiting for their merge are left out of the per-site counts: pilot factories
# would read them as queued work.
SITE_EXCLUDED_STATUSES = ("merging",)
# Statuses every innermost dictionary shows, 0 when no job has them.
ACTIVE_ZERO_FILLED = ("assigned", "activated", "running")
WINDOW_ZERO_FILLED = ("assigned", "activated", "running", "finished", "failed")

DEFAULT_WINDOW_MINUTES = 12 * 60
MAX_WINDOW_MINUTES = 60 * 24 * 7
# Reads of the totals a refresh may overtake before an answer is counted from the job tables.
SUMMARY_ATTEMPTS = 3
UNKNOWN_LABEL = "unknown"

BAD_TYPE = 'Parameter "type" needs to be either "production" or "analysis" '
BAD_WINDOW = 'Parameter "time_window" needs to be a positive integer smaller than 10080 min (7 days)'


def _nest(rows: Iterable[tuple[Any, ...]], zero_filled: Sequence[str] = ()) -> dict[Any, Any]:
    """``(key 1, ..., key n, jobStatus, count)`` rows as ``{key 1: ... {key n: {jobStatus: count}}}``,
    each innermost dictionary holding every status of ``zero_filled``.

    Rows are counted groups, a handful per site, not jobs; groups whose keys meet (two shares with
    one label) are added up.
    """
    nested: dict[Any, Any] = {}
    leaves: list[dict[str, int]] = []
    for *keys, status, count in rows:
        level = nested
        for key in keys[:-1]:
            level = level.setdefault(key, {})
        if keys[-1] not in level:
            level[keys[-1]] = {}
            leaves.append(level[keys[-1]])
        leaf = level[keys[-1]]
        leaf[status] = leaf.get(status, 0) + count
    for leaf in leaves:
        for status in zero_filled:
            leaf.setdefault(status, 0)
    return nested


def window_minutes(time_window: int | None) -> int:
    """The window of final jobs in minutes: ``time_window``, or 720 (12 h) when not given.

    Raises:
        InvalidInput: ``time_window`` is not from 0 to 10080 minutes (7 days); ``data`` is ``{}``.
    """
    if time_window is None:
        return DEFAULT_WINDOW_MINUTES
    if isinstance(time_window, bool) or not isinstance(time_window, int):
        raise InvalidInput(BAD_WINDOW, {})
    if not 0 <= time_window <= MAX_WINDOW_MINUTES:
        raise InvalidInput(BAD_WINDOW, {})
    return time_window


async def _window_counts(
    conn: AsyncConnection,
    clock: Clock,
    keys: Sequence[str],
    minutes: int,
    labels: Sequence[str] | None = None,
) -> list[tuple[Any, ...]]:
    """Non-final jobs and the final jobs of the last ``minutes``, counted by ``keys`` and status:
    from the totals of the kept window nearest to ``minutes`` when the statistics agent keeps any,
    else from the job tables alone. Both give the same counts."""
    since = clock.now() - timedelta(minutes=minutes)
    for _ in range(SUMMARY_ATTEMPTS):
        kept = await statistics_db.windows(conn)
        if not kept:
            break
        nearest = kept[min(kept, key=lambda length: (abs(length - minutes), length))]
        rows = await statistics_db.summary_counts(
            conn,
            keys,
            window=nearest,
            active_statuses=ACTIVE_STATUSES,
            final_statuses=FINAL_STATUSES,
            modified_after=since,
            labels=labels,
        )
        # A refresh committed meanwhile (PostgreSQL) would have paired its totals with the
        # previous range: the answer counts only if the windows are still those it read.
        if await statistics_db.windows(conn) == kept:
            return rows
    return await statistics_db.job_counts(
        conn,
        keys,
        active_statuses=ACTIVE_STATUSES,
        final_statuses=FINAL_STATUSES,
        modified_after=since,
        labels=labels,
    )


async def jobs_by_cloud(conn: AsyncConnection, clock: Clock, kind: str) -> dict[str, Any]:
    """``{cloud: {jobStatus: n}}`` of production or analysis jobs, active and in the 12 h window.

    The cloud is the job's own (set from its queue's cloud when the job was made).

    Raises:
        InvalidInput: ``kind`` is neither ``production`` nor ``analysis``; ``data`` is ``{}``.
    """
    labels = KINDS.get(kind)
    if labels is None:
        raise InvalidInput(BAD_TYPE, {})
    rows = await _window_counts(conn, clock, ["cloud"], DEFAULT_WINDOW_MINUTES, labels)
    return _nest(rows)


async def production_jobs_by_cloud_and_processing_type(conn: AsyncConnection, clock: Clock) -> dict[str, Any]:
    """``{cloud: {processingType: {jobStatus: n}}}`` of production jobs, active and in the 12 h window."""
    rows = await _window_counts(
        conn, clock, ["cloud", "processingType"], DEFAULT_WINDOW_MINUTES, PRODUCTION_LABELS
    )
    return _nest(rows)


def _site_statuses() -> tuple[str, ...]:
    return tuple(status for status in ACTIVE_STATUSES if status not in SITE_EXCLUDED_STATUSES)


async def active_jobs_by_site(conn: AsyncConnection) -> dict[str, Any]:
    """``{site: {jobStatus: n}}`` of active jobs (``merging`` left out), with assigned, activated
    and running always present."""
    rows = await statistics_db.job_counts(conn, ["computingSite"], active_statuses=_site_statuses())
    return _nest(rows, ACTIVE_ZERO_FILLED)


async def active_jobs_by_site_detailed(conn: AsyncConnection) -> dict[str, Any]:
    """``{site: {resource_type: {prodSourceLabel: {jobStatus: n}}}}`` of active jobs, filtered and
    zero-filled as :func:`active_jobs_by_site`."""
    rows = await statistics_db.job_counts(
        conn, ["computingSite", "resource_type", "prodSourceLabel"], active_statuses=_site_statuses()
    )
    return _nest(rows, ACTIVE_ZERO_FILLED)


async def jobs_by_site_and_resource_type(
    conn: AsyncConnection, clock: Clock, time_window: int | None
) -> dict[str, Any]:
    """``{site: {resource_type: {jobStatus: n}}}`` of active jobs and final jobs in the window,
    with assigned, activated, running, finished and failed always present.

    Raises:
        InvalidInput: a ``time_window`` outside 0..10080 minutes.
    """
    rows = await _window_counts(conn, clock, ["computingSite", "resource_type"], window_minutes(time_window))
    return _nest(rows, WINDOW_ZERO_FILLED)


# The first label a prodsourcelabel selector names: "managed", "(managed|test)", "^(?:user)$" ...
_FIRST_LABEL = re.compile(r"\^?(?:\((?:\?:)?)*([A-Za-z0-9_]+)")


def share_labels(tree: ShareTree | None) -> dict[str, str]:
    """The prodSourceLabel each leaf share stands for, by share name.

    A share's label is the first label its ``prodsourcelabel`` selector names, when the selector
    itself accepts that label (``managed|test`` -> managed, ``(user|panda)`` -> user); a share
    without that selector, or whose selector names no plain label (``.*``), has none.
    """
    if tree is None:
        return {}
    found: dict[str, str] = {}
    for share in tree.leaves():
        pattern = dict(share.selectors).get("prodsourcelabel")
        if pattern is None:
            continue
        first = _FIRST_LABEL.match(pattern)
        if first and shares.compile_selector(pattern).match(first.group(1)):
            found[share.name] = first.group(1)
    return found


async def jobs_by_site_share_and_resource_type(
    conn: AsyncConnection, clock: Clock, time_window: int | None
) -> dict[str, Any]:
    """``{site: {prodSourceLabel of the job's share: {resource_type: {jobStatus: n}}}}`` of active
    jobs and final jobs in the window (``unknown`` for a job whose share names no label), with
    assigned, activated, running, finished and failed always present.

    Raises:
        InvalidInput: a ``time_window`` outside 0..10080 minutes.
    """
    minutes = window_minutes(time_window)
    rows = await _window_counts(conn, clock, ["computingSite", "gshare", "resource_type"], minutes)
    labels = share_labels(await shares.current_tree(conn))
    labelled = (
        (site, labels.get(share, UNKNOWN_LABEL), resource_type, status, count)
        for site, share, resource_type, status, count in rows
    )
    return _nest(labelled, WINDOW_ZERO_FILLED)


# --- the totals the statistics agent keeps ----------------------------------------------------------

# The windows whose final jobs are kept counted, in minutes: the 12 h of four endpoints and of the
# default time_window, the longest time_window, and steps between so any other time_window is
# counted from the nearest of them plus the jobs between the two starts.
KEPT_WINDOWS = (60, 360, 720, 1440, 4320, 10080)


@dataclass(frozen=True, slots=True)
class SummaryPolicy:
    """How the statistics agent keeps its totals; the defaults are the documented Settings fields.

    Attributes:
        settle: a final job enters the totals once its modification time is this old.
        rebuild: the totals are recounted from the job tables this often.
        period: a refresh sooner than this after the last one leaves the totals as they are (the
            tests' ``drain`` runs every agent many times a second).
        retention: how long the archive keeps jobs (None: forever); a window reaching that far
            is not kept, as jobs deleted from the archive could not be taken out of its totals.
    """

    settle: timedelta = timedelta(seconds=60)
    rebuild: timedelta = timedelta(hours=1)
    retention: timedelta | None = timedelta(days=90)
    period: timedelta = timedelta(seconds=5)

    @classmethod
    def from_settings(cls, settings: Settings) -> SummaryPolicy:
        retention_days = settings.job_archive_retention_days
        return cls(
            settle=timedelta(seconds=settings.statistics_settle_seconds),
            rebuild=timedelta(minutes=settings.statistics_rebuild_minutes),
            retention=timedelta(days=retention_days) if retention_days else None,
            period=timedelta(seconds=settings.statistics_refresh_period_seconds),
        )

    def windows(self) -> tuple[int, ...]:
        """The windows kept: those the archive's retention (less a rebuild period) still covers."""
        if self.retention is None:
            return KEPT_WINDOWS
        return tuple(
            length for length in KEPT_WINDOWS if timedelta(minutes=length) + self.rebuild < self.retention
        )


async def refresh(conn: AsyncConnection, clock: Clock, policy: SummaryPolicy) -> None:
    """Bring the totals of every kept window up to now, in this transaction.

    Each window's totals count the final jobs of both tables modified in its (since, upto]: since
    is now less the window, upto now less ``policy.settle``. A refresh adds the jobs modified
    between the previous upto and the new one and takes out those between the previous since and
    the new one (both read by modification time through the tables' indexes), so its cost follows
    the jobs that entered or left a window, not the window's size. A job's move to the archive
    changes none of this (it keeps its modification time, and both tables are read). The totals are
    recounted instead every ``policy.rebuild``, when the windows kept change, or when the clock
    jumped past a window's upto. A refresh within ``policy.period`` of the last one does nothing.
    On PostgreSQL one process refreshes at a time (an advisory lock; the others skip their turn).
    """
    if not await statistics_db.lock_refresh(conn):
        return
    now = clock.now()
    upto = now - policy.settle
    kept = await statistics_db.windows(conn)
    if _needs_rebuild(kept, now, policy):
        await _rebuild(conn, now, upto, policy.windows())
        return
    if not _due(kept, now, policy):
        return
    ranges: dict[int, tuple[datetime, datetime]] = {}
    # Each slice of modification times (after, upto], and the windows it adds to (+1) or takes from.
    changes: dict[tuple[datetime, datetime], list[tuple[int, int]]] = {}
    # The clock moved forwards since the last refresh (by a period at least): every window moves.
    for length, window in kept.items():
        since = now - timedelta(minutes=length)
        changes.setdefault((window["since"], since), []).append((length, -1))
        changes.setdefault((window["upto"], upto), []).append((length, 1))
        ranges[length] = (since, upto)
    counted = await statistics_db.final_slices(conn, FINAL_STATUSES, list(changes))
    deltas: dict[tuple[int, tuple[Any, ...]], int] = {}
    for bounds, rows in counted.items():
        for length, sign in changes[bounds]:
            for *group, count in rows:
                key = (length, tuple(group))
                deltas[key] = deltas.get(key, 0) + sign * count
    await statistics_db.add_to_totals(conn, {key: delta for key, delta in deltas.items() if delta})
    await statistics_db.move_windows(conn, ranges)


async def refresh_due(conn: AsyncConnection, clock: Clock, policy: SummaryPolicy) -> bool:
    """Whether :func:`refresh` would change the totals now: a read, so the agent's many idle steps
    (every round of the tests' ``drain``) take no write lock."""
    kept = await statistics_db.windows(conn)
    now = clock.now()
    return _needs_rebuild(kept, now, policy) or _due(kept, now, policy)


def _due(kept: dict[int, dict[str, Any]], now: datetime, policy: SummaryPolicy) -> bool:
    return any(now - policy.settle - window["upto"] >= policy.period for window in kept.values())


def _needs_rebuild(kept: dict[int, dict[str, Any]], now: datetime, policy: SummaryPolicy) -> bool:
    """Whether the totals are to be recounted: the kept windows are not the wanted ones, the last
    recount is ``policy.rebuild`` old, or the clock moved backwards before it or forwards past a
    window's counted range (the totals would lose jobs they never held)."""
    if set(kept) != set(policy.windows()):
        return True
    for length, window in kept.items():
        rebuilt = window["rebuilt_at"]
        if not now - policy.rebuild < rebuilt <= now or now - timedelta(minutes=length) >= window["upto"]:
            return True
    return False


async def _rebuild(conn: AsyncConnection, now: datetime, upto: datetime, lengths: Sequence[int]) -> None:
    starts = [now - timedelta(minutes=length) for length in lengths]
    rows = await statistics_db.final_counts_since(conn, FINAL_STATUSES, starts, upto) if lengths else []
    await statistics_db.replace_windows(
        conn,
        [
            {"window_minutes": length, "since": start, "upto": upto, "rebuilt_at": now}
            for length, start in zip(lengths, starts, strict=True)
        ],
    )
    width = len(statistics_db.SUMMARY_KEYS) + 1
    counts: dict[tuple[int, tuple[Any, ...]], int] = {}
    # A group has a row from each job table.
    for row in rows:
        for index, length in enumerate(lengths):
            if row[width + index]:
                key = (length, tuple(row[:width]))
                counts[key] = counts.get(key, 0) + row[width + index]
    await statistics_db.add_to_totals(conn, counts)
