"""``/api/v1/job/*``: job status and descriptions."""

from __future__ import annotations

from typing import Annotated

from bamboo.api.call import Call
from bamboo.api.envelope import Reply
from bamboo.api.registry import Module
from bamboo.api.v1 import registry
from bamboo.logic import jobs

job = Module(registry, "job")

JobIds = Annotated[list[int], "PandaIDs of the jobs."]


@job.endpoint(method="GET")
async def get_status(
    call: Call, job_ids: JobIds, timeout: Annotated[int, "Accepted for compatibility; not used."] = 60
) -> Reply:
    """Status and pending pilot command of each job; unknown jobs are ``unknown``/``tobekilled``."""
    return Reply(data=await jobs.statuses(call.db, job_ids))


@job.endpoint(method=None)
async def get_description(call: Call, job_ids: JobIds) -> Reply:
    """The full record of each job with its files (null for unknown jobs)."""
    return Reply(data=await jobs.descriptions(call.db, job_ids))
