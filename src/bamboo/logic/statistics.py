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
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

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

DEFAULT_WINDOW = timedelta(hours=12)
MAX_WINDOW_MINUTES = 60 * 24 * 7
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


def window_start(clock: Clock, time_window: int | None) -> datetime:
    """The start of the window of final jobs: ``time_window`` minutes (default 12 h) before now.

    Raises:
        InvalidInput: ``time_window`` is not from 0 to 10080 minutes (7 days); ``data`` is ``{}``.
    """
    if time_window is None:
        return clock.now() - DEFAULT_WINDOW
    if isinstance(time_window, bool) or not isinstance(time_window, int):
        raise InvalidInput(BAD_WINDOW, {})
    if not 0 <= time_window <= MAX_WINDOW_MINUTES:
        raise InvalidInput(BAD_WINDOW, {})
    return clock.now() - timedelta(minutes=time_window)


async def jobs_by_cloud(conn: AsyncConnection, clock: Clock, kind: str) -> dict[str, Any]:
    """``{cloud: {jobStatus: n}}`` of production or analysis jobs, active and in the 12 h window.

    The cloud is the job's own (set from its queue's cloud when the job was made).

    Raises:
        InvalidInput: ``kind`` is neither ``production`` nor ``analysis``; ``data`` is ``{}``.
    """
    labels = KINDS.get(kind)
    if labels is None:
        raise InvalidInput(BAD_TYPE, {})
    rows = await statistics_db.job_counts(
        conn,
        ["cloud"],
        active_statuses=ACTIVE_STATUSES,
        final_statuses=FINAL_STATUSES,
        modified_after=clock.now() - DEFAULT_WINDOW,
        labels=labels,
    )
    return _nest(rows)


async def production_jobs_by_cloud_and_processing_type(conn: AsyncConnection, clock: Clock) -> dict[str, Any]:
    """``{cloud: {processingType: {jobStatus: n}}}`` of production jobs, active and in the 12 h window."""
    rows = await statistics_db.job_counts(
        conn,
        ["cloud", "processingType"],
        active_statuses=ACTIVE_STATUSES,
        final_statuses=FINAL_STATUSES,
        modified_after=clock.now() - DEFAULT_WINDOW,
        labels=PRODUCTION_LABELS,
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
    since = window_start(clock, time_window)
    rows = await statistics_db.job_counts(
        conn,
        ["computingSite", "resource_type"],
        active_statuses=ACTIVE_STATUSES,
        final_statuses=FINAL_STATUSES,
        modified_after=since,
    )
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
    since = window_start(clock, time_window)
    rows = await statistics_db.job_counts(
        conn,
        ["computingSite", "gshare", "resource_type"],
        active_statuses=ACTIVE_STATUSES,
        final_statuses=FINAL_STATUSES,
        modified_after=since,
    )
    labels = share_labels(await shares.current_tree(conn))
    labelled = (
        (site, labels.get(share, UNKNOWN_LABEL), resource_type, status, count)
        for site, share, resource_type, status, count in rows
    )
    return _nest(labelled, WINDOW_ZERO_FILLED)
