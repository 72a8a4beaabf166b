"""The job archive (DESIGN §4, domain.md §10.4): jobs in a final status move from the active tables
to the archive tables after a delay, and archived jobs are deleted after a retention period.

Each step is one transaction over a bounded batch: claim old final jobs (skipping rows other
processes hold), copy them and their files into the archive, delete them from the active tables.
Killed at any line, the transaction rolls back and the next step moves the same jobs; the copy
also skips rows the archive already holds, so no job is ever lost or duplicated.

Who reads jobs, and why moving final jobs after ``job_archive_delay_hours`` (at least one hour)
changes no answer:

- read both tables: job/get_description and get_description_incl_archive, the offline execution
  script, get_metadata_for_analysis_jobs, task/get_job_ids, task/get_details, task job
  descriptions, task progress counts (``bamboo task``), task/kill_unfinished_jobs (archived jobs
  listed as not killed), pilot/get_job_status, scout measurements (a task may wait in scouting
  past the delay of its first scouts), the retry chain of a regenerated job (``origin_panda_id``
  of a previous attempt) and the producer site of an unmerged file waiting for its merge;
- active table only, because they need live jobs: dispatch, pilot/update_job (a report on an
  archived job is answered ``tobekilled``, as for an unknown one: its pilot has long finished),
  the job watchdog, brokerage and share counts (non-final statuses), the finaliser (``holding``),
  pre-merge jobs (``merging`` is not final), task commands (pause, resume, kill, retry act on
  unfinished jobs; the task's final status comes from its file counters, not from jobs), and
  job/kill, reassign, set_command and set_debug_mode (final jobs cannot change: archived gives
  the contract's "not active" answers);
- job/get_status: live jobs and jobs final for less than an hour, which the delay keeps active.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.config import Settings
from bamboo.db import archive as archive_db
from bamboo.logic.clock import Clock
from bamboo.logic.states import JOB_FINAL

log = logging.getLogger(__name__)

_FINAL_STATUSES = tuple(sorted(JOB_FINAL))


@dataclass(frozen=True, slots=True)
class ArchivePolicy:
    """When final jobs move to the archive, how many per batch, and how long the archive keeps them
    (``retention`` None: forever). The defaults are the documented Settings fields."""

    delay: timedelta = timedelta(hours=6)
    batch: int = 1000
    retention: timedelta | None = timedelta(days=90)

    @classmethod
    def from_settings(cls, settings: Settings) -> ArchivePolicy:
        retention_days = settings.job_archive_retention_days
        return cls(
            delay=timedelta(hours=settings.job_archive_delay_hours),
            batch=settings.job_archive_batch_size,
            retention=timedelta(days=retention_days) if retention_days else None,
        )


async def archive_final_jobs(conn: AsyncConnection, clock: Clock, policy: ArchivePolicy) -> int:
    """Move one batch of final jobs unchanged for ``policy.delay`` to the archive. Returns how many."""
    panda_ids = await archive_db.claim_to_archive(
        conn, _FINAL_STATUSES, clock.now() - policy.delay, policy.batch
    )
    if panda_ids:
        await archive_db.copy_to_archive(conn, panda_ids)
        await archive_db.delete_active(conn, panda_ids)
        log.info("archived %d final jobs", len(panda_ids))
    return len(panda_ids)


async def delete_expired(conn: AsyncConnection, clock: Clock, policy: ArchivePolicy) -> int:
    """Delete one batch of archived jobs (with their files) older than the retention. Returns how many."""
    if policy.retention is None:
        return 0
    panda_ids = await archive_db.claim_expired(conn, clock.now() - policy.retention, policy.batch)
    if panda_ids:
        await archive_db.delete_archived(conn, panda_ids)
        log.info("deleted %d archived jobs past retention", len(panda_ids))
    return len(panda_ids)


async def archive(conn: AsyncConnection, clock: Clock, policy: ArchivePolicy) -> int:
    """One archiver step: a batch to archive and a batch past retention. Returns the jobs handled."""
    return await archive_final_jobs(conn, clock, policy) + await delete_expired(conn, clock, policy)
