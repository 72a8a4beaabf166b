"""Re-brokerage: sending queued jobs back to their task so the generator brokers them elsewhere.

A re-brokered job ends ``closed`` with kill code 51 (taskBufferErrorCode 100, "reassigned by
JEDI", jobSubStatus ``toreassign``, api-v1.md §3.6); its input rows go back to ``ready`` with their
attempt unchanged, and the generator makes a new job for them at whichever queue brokerage now
prefers. ``job/reassign`` goes the same way (:func:`rebroker`). The job watchdog applies the
re-brokerage rules of domain.md §10.3 (:func:`watch`):

* a queue that went ``offline``: its jobs not yet handed to a pilot, at once (also done in the
  transaction that sets the status, :func:`leave_offline_queue`);
* ``ANALY_TIMEOUT``: analysis jobs queued longer than :attr:`RebrokerageLimits.analysis` at a queue
  no pilot talked to within :attr:`RebrokerageLimits.pilot_activity`;
* production jobs with priority >= 800 activated or starting for
  :attr:`RebrokerageLimits.high_priority` at a queue where no job started within
  :attr:`RebrokerageLimits.no_job_start`, or that is offline or in ``test`` (analysis jobs, whose
  priorities start at 1000, have the rule above);
* fast re-brokerage of overloaded queues: when a queue holds more than
  :attr:`RebrokerageLimits.fast_min_queued` activated production jobs of one global share and more
  than :attr:`RebrokerageLimits.fast_ratio` times as many as it runs, the oldest of the excess
  (activated for at least :attr:`RebrokerageLimits.fast_min_age`, of tasks that do not name the
  queue) end ``closed`` with kill code 10 (taskBufferErrorCode 130) and are brokered again.

Queues in ``paused`` status or with the catchall ``disableReassign`` are exempt from all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.config import Settings
from bamboo.db import brokerage as brokerage_db
from bamboo.db import job_admin as admin_db
from bamboo.db import notify
from bamboo.db import queues as queues_db
from bamboo.db.schema import jobs as jobs_table
from bamboo.logic import killing
from bamboo.logic.brokerage import ANALYSIS_LABELS, disables_reassign
from bamboo.logic.clock import Clock
from bamboo.logic.taskparams import PRODUCTION_SOURCE_LABELS

log = logging.getLogger(__name__)

REASSIGN_CODE = 51
FAST_REBROKERAGE_CODE = 10
REASSIGNED_SUB_STATUS = "toreassign"
REQUESTER = "bamboo rebrokerage"
BATCH = 200
HIGH_PRIORITY = 800
# Jobs a queue still holds for a pilot (not yet sent): what leaves an offline queue.
WAITING_AT_QUEUE = ("defined", "assigned", "activated")
_PAUSED = "paused"
# claim_stale wants jobs changed before a moment: any moment will do for a queue gone offline.
_ANY_AGE = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class RebrokerageLimits:
    """How long jobs wait before re-brokerage; the documented defaults are the Settings fields."""

    pilot_activity: timedelta = timedelta(hours=3)
    analysis: timedelta = timedelta(hours=3)
    high_priority: timedelta = timedelta(hours=4)
    no_job_start: timedelta = timedelta(hours=2)
    fast_min_queued: int = 100
    fast_ratio: float = 2.0
    fast_min_age: timedelta = timedelta(hours=1)

    @classmethod
    def from_settings(cls, settings: Settings) -> RebrokerageLimits:
        return cls(
            pilot_activity=timedelta(hours=settings.brokerage_pilot_activity_hours),
            analysis=timedelta(hours=settings.job_rebrokerage_analysis_hours),
            high_priority=timedelta(hours=settings.job_rebrokerage_high_priority_hours),
            no_job_start=timedelta(hours=settings.job_rebrokerage_no_job_start_hours),
            fast_min_queued=settings.job_fast_rebrokerage_min_queued,
            fast_ratio=settings.job_fast_rebrokerage_ratio,
            fast_min_age=timedelta(minutes=settings.job_fast_rebrokerage_min_age_minutes),
        )


async def rebroker(
    conn: AsyncConnection,
    clock: Clock,
    jobs: Sequence[dict[str, Any]],
    requester: str,
    code: int = REASSIGN_CODE,
) -> list[int]:
    """Re-broker these jobs (rows with PandaID and jobStatus): kill code 51 (``toreassign``) or 10
    (fast re-brokerage), their inputs back to ``ready`` and the generator woken. Returns the
    PandaIDs re-brokered."""
    done = await killing.kill(conn, clock, jobs, code, requester)
    if done and code == REASSIGN_CODE:
        await admin_db.set_columns(conn, done, jobSubStatus=REASSIGNED_SUB_STATUS)
    if done:
        await notify.announce(conn, "generator")
    return done


async def exempt_sites(conn: AsyncConnection) -> list[str]:
    """Queues whose jobs are never re-brokered: ``paused`` ones and catchall ``disableReassign``."""
    return [
        row["name"]
        for row in await queues_db.list_all(conn)
        if row["status"] == _PAUSED or disables_reassign(row["spec"])
    ]


def reassignable(exempt: Sequence[str]) -> sa.ColumnElement[bool]:
    """Jobs not at one of the ``exempt`` queues."""
    if not exempt:
        return sa.true()
    site = jobs_table.c.computingSite
    return sa.or_(site.is_(None), site.notin_(list(exempt)))


async def leave_offline_queue(conn: AsyncConnection, clock: Clock, spec: dict[str, Any]) -> int:
    """Re-broker the jobs waiting at a queue that has just gone offline, in the transaction that
    changed its status. A queue that disables reassignment keeps them."""
    if spec.get("status") != "offline" or disables_reassign(spec):
        return 0
    done = 0
    while True:
        claimed = await brokerage_db.claim_queued_at(
            conn, WAITING_AT_QUEUE, [spec["name"]], clock.now() + _ANY_AGE, BATCH
        )
        if not claimed:
            return done
        done += len(await rebroker(conn, clock, claimed, REQUESTER))


async def watch(conn: AsyncConnection, clock: Clock, limits: RebrokerageLimits) -> int:
    """Apply the re-brokerage rules once, each over a bounded batch. Returns how many jobs left."""
    now = clock.now()
    specs = [row["spec"] for row in await queues_db.list_all(conn)]
    movable = [spec for spec in specs if spec["status"] != _PAUSED and not disables_reassign(spec)]
    if not movable:
        return 0
    offline = [spec["name"] for spec in movable if spec["status"] == "offline"]
    done = await _rebroker_claimed(
        conn, clock, "queue offline", WAITING_AT_QUEUE, offline, now + _ANY_AGE, None
    )
    active = await brokerage_db.sites_with_pilot_activity(conn, now - limits.pilot_activity)
    idle = [spec["name"] for spec in movable if spec["name"] not in active]
    done += await _rebroker_claimed(
        conn,
        clock,
        "analysis jobs at an idle queue",
        WAITING_AT_QUEUE,
        idle,
        now - limits.analysis,
        jobs_table.c.prodSourceLabel.in_(sorted(ANALYSIS_LABELS)),
    )
    started = await brokerage_db.sites_with_job_start(conn, now - limits.no_job_start)
    stalled = [
        spec["name"]
        for spec in movable
        if spec["status"] in ("offline", "test") or spec["name"] not in started
    ]
    done += await _rebroker_claimed(
        conn,
        clock,
        f"priority >= {HIGH_PRIORITY} at a queue starting no jobs",
        ("activated", "starting"),
        stalled,
        now - limits.high_priority,
        sa.and_(
            jobs_table.c.prodSourceLabel.in_(sorted(PRODUCTION_SOURCE_LABELS)),
            jobs_table.c.currentPriority >= HIGH_PRIORITY,
        ),
        column=jobs_table.c.stateChangeTime,
    )
    return done + await _fast_rebrokerage(conn, clock, now, limits, movable)


async def _fast_rebrokerage(
    conn: AsyncConnection,
    clock: Clock,
    now: datetime,
    limits: RebrokerageLimits,
    movable: Sequence[dict[str, Any]],
) -> int:
    """Kill code 10 for the excess of overloaded (queue, share) pairs, oldest first."""
    names = {spec["name"] for spec in movable}
    counts = await brokerage_db.share_counts(conn, ("activated", "running"), sorted(PRODUCTION_SOURCE_LABELS))
    done = 0
    for (site, share, status), queued in sorted(counts.items(), key=lambda item: str(item[0])):
        if status != "activated" or site not in names or queued <= limits.fast_min_queued:
            continue
        running = counts.get((site, share, "running"), 0)
        excess = queued - max(limits.fast_min_queued, int(limits.fast_ratio * running))
        if excess <= 0:
            continue
        claimed = await brokerage_db.claim_queued_at(
            conn,
            ("activated",),
            [site],
            now - limits.fast_min_age,
            min(BATCH, excess),
            condition=sa.and_(
                jobs_table.c.prodSourceLabel.in_(sorted(PRODUCTION_SOURCE_LABELS)),
                brokerage_db.of_share(share),
                brokerage_db.of_unsited_task(),
            ),
        )
        moved = await rebroker(conn, clock, claimed, REQUESTER, FAST_REBROKERAGE_CODE)
        if moved:
            log.info(
                "fast re-brokerage of %s (share %s, %d queued, %d running): %d jobs",
                site,
                share,
                queued,
                running,
                len(moved),
            )
        done += len(moved)
    return done


async def _rebroker_claimed(
    conn: AsyncConnection,
    clock: Clock,
    reason: str,
    statuses: Sequence[str],
    sites: Sequence[str],
    before: datetime,
    condition: sa.ColumnElement[bool] | None,
    *,
    column: sa.Column[Any] = jobs_table.c.modificationTime,
) -> int:
    if not sites:
        return 0
    claimed = await brokerage_db.claim_queued_at(
        conn, statuses, sites, before, BATCH, condition=condition, column=column
    )
    if not claimed:
        return 0
    done = await rebroker(conn, clock, claimed, REQUESTER)
    log.info("re-brokerage (%s): %d jobs: %s", reason, len(done), ", ".join(map(str, done[:20])))
    return len(done)
