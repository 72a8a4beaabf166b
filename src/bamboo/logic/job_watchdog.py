"""The job watchdog: the job timeouts of domain.md §10.3.

Jobs a pilot had and no longer talks about fail, with upstream's jobDispatcherErrorCode:

* ``starting``/``running`` without a heartbeat for :attr:`JobTimeouts.heartbeat`: 100, "lost
  heartbeat";
* ``sent`` without any pilot reply for :attr:`JobTimeouts.sent`: 102. This is also what recovers jobs
  an acquire_jobs answer claimed but never delivered (the pilot's connection broke);
* ``holding`` without a final report: 103, after :attr:`JobTimeouts.holding_analysis` for analysis
  jobs and production jobs with priority above 800, after :attr:`JobTimeouts.holding` for any;
* ``transferring`` without an update: 104, after :attr:`JobTimeouts.transferring_analysis` for
  analysis jobs and :attr:`JobTimeouts.transferring` for the others.

Such a job is not failed here: it goes to ``holding`` with a failed final report and the error set,
the state a pilot's own ``failed`` report leaves it in, and the finaliser ends it. So its inputs go
back to their task (attempt + 1, retried while attempts remain) by the very code that handles pilot
failures, in the finaliser's transaction. ``commandToPilot`` becomes ``tobekilled`` so a pilot that
comes back after all stops its payload.

Jobs that wait too long for a pilot, or run for weeks, are killed with the kill codes of
api-v1.md §3.6 through :func:`bamboo.logic.killing.kill`: code 2 (expire) for ``defined``/
``assigned``, ``activated`` and ``throttled`` jobs after days and for jobs still ``running`` weeks
after their creation, code 4 (expire in waiting) for ``pending`` and ``waiting`` jobs after an hour,
and code 51 (reassigned by JEDI) for production jobs stuck in ``defined``/``assigned``,
``activated`` or ``starting`` for hours, except at queues exempt from reassignment (catchall
``disableReassign``). The re-brokerage rules (:mod:`bamboo.logic.rebrokerage`) run in the same step.
Jobs at a ``paused`` queue are left alone by every rule: the queue holds them as they are.
A killed job's inputs return to ``ready``, so the task makes a new job for them.

A merge job whose pre-merge jobs have all left ``merging`` (killed or reassigned while they waited)
is killed with code 52 once it is :attr:`JobTimeouts.merge_orphan` old, and its unmerged files
become ``notmerged``. The other merge rule of §10.3, re-triggering merge generation for jobs stuck
in ``merging``, has no counterpart: the generator finds ready unmerged files from the rows every
cycle, so there is no trigger to lose.

Each call is one transaction over bounded batches; a step killed half-way is simply rerun.
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
from bamboo.db import commands as commands_db
from bamboo.db import es_jobs, notify
from bamboo.db import job_watchdog as watchdog_db
from bamboo.db import jobs as jobs_db
from bamboo.db import merges as merges_db
from bamboo.db import tasks as tasks_db
from bamboo.db.schema import jobs as jobs_table
from bamboo.logic import killing, merge_jobs, rebrokerage
from bamboo.logic.brokerage import ANALYSIS_LABELS
from bamboo.logic.clock import Clock
from bamboo.logic.states import COMMAND_KILL
from bamboo.logic.taskparams import PRODUCTION_SOURCE_LABELS

log = logging.getLogger(__name__)

BATCH = 200
REQUESTER = "bamboo watchdog"

# jobDispatcherErrorCode values of the Watcher (domain.md §5.5).
LOST_HEARTBEAT = 100
SENT_TIMEOUT = 102
HOLDING_TIMEOUT = 103
TRANSFERRING_TIMEOUT = 104

# Kill codes (api-v1.md §3.6).
EXPIRE = 2
EXPIRE_IN_WAITING = 4
REASSIGNED_BY_JEDI = 51
FORCE_KILL_BY_JEDI = 52

# jobSubStatus of ES consumers the watchdog ends (domain.md §7.4).
ES_HEARTBEAT = "es_heartbeat"
ES_TOOLONG = "es_toolong"

# Above this priority a production job in holding gets the short analysis timeout (domain.md §10.3).
_URGENT_PRIORITY = 800
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True, slots=True)
class JobTimeouts:
    """How long a job may stay in a status; the documented defaults are the Settings fields."""

    heartbeat: timedelta = timedelta(hours=2)
    sent: timedelta = timedelta(minutes=30)
    holding_analysis: timedelta = timedelta(hours=3)
    holding: timedelta = timedelta(hours=48)
    transferring_analysis: timedelta = timedelta(hours=2)
    transferring: timedelta = timedelta(hours=48)
    running_max: timedelta = timedelta(days=21)
    defined: timedelta = timedelta(days=7)
    defined_production: timedelta = timedelta(hours=4)
    activated: timedelta = timedelta(days=7)
    activated_production: timedelta = timedelta(hours=48)
    starting_production: timedelta = timedelta(hours=48)
    pending: timedelta = timedelta(hours=1)
    waiting: timedelta = timedelta(hours=1)
    throttled: timedelta = timedelta(days=7)
    merge_orphan: timedelta = timedelta(minutes=30)
    es_toolong: timedelta = timedelta(hours=24)
    es_toolong_min_priority: int = 900

    @classmethod
    def from_settings(cls, settings: Settings) -> JobTimeouts:
        return cls(
            heartbeat=timedelta(minutes=settings.job_heartbeat_timeout_minutes),
            sent=timedelta(minutes=settings.job_sent_timeout_minutes),
            holding_analysis=timedelta(minutes=settings.job_holding_timeout_analysis_minutes),
            holding=timedelta(minutes=settings.job_holding_timeout_minutes),
            transferring_analysis=timedelta(minutes=settings.job_transferring_timeout_analysis_minutes),
            transferring=timedelta(minutes=settings.job_transferring_timeout_minutes),
            running_max=timedelta(days=settings.job_running_max_days),
            defined=timedelta(days=settings.job_defined_timeout_days),
            defined_production=timedelta(hours=settings.job_defined_timeout_production_hours),
            activated=timedelta(days=settings.job_activated_timeout_days),
            activated_production=timedelta(hours=settings.job_activated_timeout_production_hours),
            starting_production=timedelta(hours=settings.job_starting_timeout_production_hours),
            pending=timedelta(minutes=settings.job_pending_timeout_minutes),
            waiting=timedelta(minutes=settings.job_waiting_timeout_minutes),
            throttled=timedelta(days=settings.job_throttled_timeout_days),
            merge_orphan=timedelta(minutes=settings.job_merge_orphan_minutes),
            es_toolong=timedelta(hours=settings.job_es_toolong_hours),
            es_toolong_min_priority=settings.job_es_toolong_min_priority,
        )


def _analysis() -> sa.ColumnElement[bool]:
    return jobs_table.c.prodSourceLabel.in_(sorted(ANALYSIS_LABELS))


def _production() -> sa.ColumnElement[bool]:
    return jobs_table.c.prodSourceLabel.in_(sorted(PRODUCTION_SOURCE_LABELS))


def _stamp(moment: datetime | None) -> str:
    return moment.strftime(_TIME_FORMAT) if moment is not None else "unknown"


def _minutes(span: timedelta) -> str:
    return f"{span.total_seconds() / 60:g}"


async def watch(conn: AsyncConnection, clock: Clock, timeouts: JobTimeouts) -> int:
    """Apply every rule once. Returns how many jobs it failed or killed."""
    now = clock.now()
    failed = (
        await _lost_heartbeats(conn, now, timeouts)
        + await _sent_without_reply(conn, now, timeouts)
        + await _stuck_after_the_payload(conn, now, timeouts)
    )
    if failed:
        await notify.announce(conn, "finaliser")
    killed = await _expire_waiting_jobs(conn, clock, now, timeouts)
    killed += await _orphan_merge_jobs(conn, clock, now, timeouts)
    killed += await _es_consumers_too_long(conn, clock, now, timeouts)
    if killed:
        # Killed jobs' inputs are ready again: the generator makes their new jobs.
        await notify.announce(conn, "generator")
    return failed + killed


async def _lost_heartbeats(conn: AsyncConnection, now: datetime, timeouts: JobTimeouts) -> int:
    # A job at a paused queue is waiting for the queue, not lost: claim_stale leaves it alone.
    claimed = await watchdog_db.claim_stale(
        conn, ("starting", "running"), jobs_table.c.modificationTime, now - timeouts.heartbeat, BATCH
    )
    failures = [
        {**job, "code": LOST_HEARTBEAT, "diag": f"lost heartbeat : {_stamp(job['modificationTime'])}"}
        for job in claimed
    ]
    failed = await _fail(conn, failures, now, "lost heartbeat")
    # An ES consumer gone without a single finished range is marked so (domain.md §7.4).
    fruitless = await es_jobs.consumers_without_ranges(conn, [job["PandaID"] for job in claimed])
    await jobs_db.update_jobs_each(
        conn, [(panda_id, {"jobSubStatus": ES_HEARTBEAT}) for panda_id in fruitless]
    )
    return failed


async def _sent_without_reply(conn: AsyncConnection, now: datetime, timeouts: JobTimeouts) -> int:
    claimed = await watchdog_db.claim_stale(
        conn, ("sent",), jobs_table.c.modificationTime, now - timeouts.sent, BATCH
    )
    diag = f"Sent job didn't receive reply from pilot within {_minutes(timeouts.sent)} min"
    failures = [{**job, "code": SENT_TIMEOUT, "diag": diag} for job in claimed]
    return await _fail(conn, failures, now, "no pilot reply")


async def _stuck_after_the_payload(conn: AsyncConnection, now: datetime, timeouts: JobTimeouts) -> int:
    """Holding without a final report, and transferring, for too long."""
    # Jobs with a final report belong to the finaliser, however long they wait for it.
    waiting = watchdog_db.not_reported()
    urgent = sa.or_(_analysis(), jobs_table.c.currentPriority > _URGENT_PRIORITY)
    rules = (
        ("holding", HOLDING_TIMEOUT, timeouts.holding_analysis, sa.and_(waiting, urgent)),
        ("holding", HOLDING_TIMEOUT, timeouts.holding, waiting),
        ("transferring", TRANSFERRING_TIMEOUT, timeouts.transferring_analysis, _analysis()),
        ("transferring", TRANSFERRING_TIMEOUT, timeouts.transferring, None),
    )
    done = 0
    for status, code, timeout, condition in rules:
        claimed = await watchdog_db.claim_stale(
            conn, (status,), jobs_table.c.modificationTime, now - timeout, BATCH, condition=condition
        )
        failures = []
        for job in claimed:
            last = job["endTime"] or job["modificationTime"]
            failures.append(
                {**job, "code": code, "diag": f"timeout in {status} : last heartbeat at {_stamp(last)}"}
            )
        done += await _fail(conn, failures, now, f"timeout in {status}")
    return done


async def _fail(conn: AsyncConnection, failures: list[dict[str, Any]], now: datetime, reason: str) -> int:
    if not failures:
        return 0
    for job in failures:
        # The last sign of life is when the job ended, as far as anyone can tell.
        job["end"] = job["modificationTime"]
    await watchdog_db.fail_for_finaliser(conn, failures, COMMAND_KILL, now)
    log.info(
        "job watchdog: %d jobs failed (%s): %s",
        len(failures),
        reason,
        ", ".join(str(job["PandaID"]) for job in failures[:20]) + (" ..." if len(failures) > 20 else ""),
    )
    return len(failures)


@dataclass(frozen=True, slots=True)
class _KillRule:
    statuses: tuple[str, ...]
    column: sa.Column[Any]
    timeout: timedelta
    code: int
    condition: sa.ColumnElement[bool] | None = None


def _kill_rules(timeouts: JobTimeouts, exempt: Sequence[str]) -> Sequence[_KillRule]:
    c = jobs_table.c
    # Production jobs are reassigned, except at queues exempt from reassignment (§10.3; paused
    # queues are never claimed at all).
    prod = sa.and_(_production(), rebrokerage.reassignable(exempt))
    reassign = REASSIGNED_BY_JEDI
    # The shorter production rules come first: a job both would take is reassigned, not expired.
    return (
        _KillRule(("defined", "assigned"), c.modificationTime, timeouts.defined_production, reassign, prod),
        _KillRule(("activated",), c.modificationTime, timeouts.activated_production, reassign, prod),
        _KillRule(("starting",), c.stateChangeTime, timeouts.starting_production, reassign, prod),
        _KillRule(("defined", "assigned"), c.modificationTime, timeouts.defined, EXPIRE),
        _KillRule(("activated",), c.modificationTime, timeouts.activated, EXPIRE),
        _KillRule(("throttled",), c.modificationTime, timeouts.throttled, EXPIRE),
        _KillRule(("pending",), c.modificationTime, timeouts.pending, EXPIRE_IN_WAITING),
        _KillRule(("waiting",), c.modificationTime, timeouts.waiting, EXPIRE_IN_WAITING),
        _KillRule(("running",), c.creationTime, timeouts.running_max, EXPIRE),
    )  # fmt: skip


async def _expire_waiting_jobs(
    conn: AsyncConnection, clock: Clock, now: datetime, timeouts: JobTimeouts
) -> int:
    done = 0
    exempt = await rebrokerage.exempt_sites(conn)
    for rule in _kill_rules(timeouts, exempt):
        claimed = await watchdog_db.claim_stale(
            conn, rule.statuses, rule.column, now - rule.timeout, BATCH, condition=rule.condition
        )
        if not claimed:
            continue
        if rule.code == REASSIGNED_BY_JEDI:
            # Reassignment is re-brokerage: closed/toreassign, the task brokers the inputs again.
            killed = set(await rebrokerage.rebroker(conn, clock, claimed, REQUESTER))
        else:
            killed = set(await killing.kill(conn, clock, claimed, rule.code, REQUESTER))
        if rule.code in (EXPIRE, EXPIRE_IN_WAITING):
            # The kill code's own diagnostic is the bare word; §3.6 names the status and since when.
            await watchdog_db.set_kill_diagnostics(
                conn,
                {
                    job["PandaID"]: f"expired in {job['jobStatus']}. status unchanged since "
                    f"{_stamp(job[rule.column.name])}"
                    for job in claimed
                    if job["PandaID"] in killed
                },
            )
        log.info(
            "job watchdog: %d %s jobs killed with code %d after %s",
            len(killed),
            "/".join(rule.statuses),
            rule.code,
            rule.timeout,
        )
        done += len(killed)
    return done


# A merge job in any of these may still run; holding and transferring ones belong to the finaliser.
_ORPHAN_MERGE_STATUSES = (*killing.QUEUED_JOB_STATUSES, "sent", "starting", "running")
ORPHAN_MERGE_DIAG = f"{REQUESTER}: pre-merge jobs are gone"


async def _orphan_merge_jobs(
    conn: AsyncConnection, clock: Clock, now: datetime, timeouts: JobTimeouts
) -> int:
    """Merge jobs created more than :attr:`JobTimeouts.merge_orphan` ago none of whose pre-merge
    jobs still waits in ``merging`` (a user killed them, say): killed with code 52 (domain.md
    §10.3). Their unmerged files become ``notmerged``: released as ready, they would only make
    another merge job for jobs that are gone."""
    claimed = await watchdog_db.claim_stale(
        conn,
        _ORPHAN_MERGE_STATUSES,
        jobs_table.c.creationTime,
        now - timeouts.merge_orphan,
        BATCH,
        condition=sa.and_(
            jobs_table.c.processingType == merge_jobs.PROCESSING_TYPE, merges_db.pre_merge_jobs_gone()
        ),
    )
    if not claimed:
        return 0
    held = await commands_db.rows_held_by(conn, [job["PandaID"] for job in claimed])
    killed = set(await killing.kill(conn, clock, claimed, FORCE_KILL_BY_JEDI, ORPHAN_MERGE_DIAG))
    unmerged = [row for row in held if row["PandaID"] in killed]
    await tasks_db.update_files(conn, [row["fileID"] for row in unmerged], status="notmerged")
    per_dataset: dict[int, int] = {}
    for row in unmerged:
        per_dataset[row["datasetID"]] = per_dataset.get(row["datasetID"], 0) + 1
    for dataset_id, count in per_dataset.items():
        await tasks_db.bump_dataset(conn, dataset_id, now, nFilesFailed=count)
    log.info("job watchdog: %d merge jobs without pre-merge jobs killed with code 52", len(killed))
    return len(killed)


async def _es_consumers_too_long(
    conn: AsyncConnection, clock: Clock, now: datetime, timeouts: JobTimeouts
) -> int:
    """ES consumers running for more than :attr:`JobTimeouts.es_toolong` with a priority of at least
    :attr:`JobTimeouts.es_toolong_min_priority`: killed with code 2 and jobSubStatus ``es_toolong``
    (domain.md §7.4). Their ranges go back to the jobset, which gets a new consumer."""
    claimed = await watchdog_db.claim_stale(
        conn,
        ("running",),
        jobs_table.c.startTime,
        now - timeouts.es_toolong,
        BATCH,
        condition=sa.and_(
            jobs_table.c.eventService.in_(list(es_jobs.CONSUMERS)),
            jobs_table.c.currentPriority >= timeouts.es_toolong_min_priority,
        ),
    )
    if not claimed:
        return 0
    killed = await killing.kill(conn, clock, claimed, EXPIRE, REQUESTER)
    hours = f"{timeouts.es_toolong.total_seconds() / 3600:g}"
    await jobs_db.update_jobs_each(
        conn,
        [
            (
                panda_id,
                {
                    "jobSubStatus": ES_TOOLONG,
                    "taskBufferErrorDiag": f"{ES_TOOLONG}: running longer than {hours} h",
                },
            )
            for panda_id in killed
        ],
    )
    log.info("job watchdog: %d ES consumers running too long killed", len(killed))
    return len(killed)
