"""``/api/v1/job/*``: job status, descriptions and administration (api-v1.md §2.2).

Behaviour lives in ``logic/jobs.py`` (get_status, get_description) and ``logic/job_admin.py``
(everything else: kill, reassign, set_command, set_debug_mode, submit, the offline script, metadata).
"""

from __future__ import annotations

from typing import Annotated

from bamboo.api.call import Call
from bamboo.api.envelope import BareText, Reply, failure
from bamboo.api.registry import Access, DbUse, Module
from bamboo.api.v1 import registry
from bamboo.auth.identity import has_production_role
from bamboo.logic import job_admin, jobs
from bamboo.logic.errors import InvalidInput

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


@job.endpoint(method=None)
async def get_description_incl_archive(call: Call, job_ids: JobIds) -> Reply:
    """The full record of each job with its files, including archived jobs (null for unknown ones).

    Reads the active jobs and the job archive (logic/archive.py); get_description reads both too,
    Bamboo's one archive standing for upstream's recent and long-term ones, so the answers agree.
    """
    return Reply(data=await job_admin.descriptions_incl_archive(call.db, job_ids))


@job.endpoint(method="GET", access=Access.PUBLIC, answers_text=True)
async def generate_offline_execution_script(
    call: Call,
    job_id: Annotated[int, "PandaID of the job."],
    days: Annotated[int | None, "Look back this many days (default 30)."] = None,
) -> BareText:
    """A bash script that re-runs the job's payload offline, as a bare JSON string (no envelope).

    A job not found answers upstream's ``ERROR: Cannot get PandaID=...`` text the same way.
    """
    return BareText(await job_admin.offline_script(call.db, call.state.clock, job_id, days))


@job.endpoint(method="GET")
async def get_metadata_for_analysis_jobs(
    call: Call, task_id: Annotated[int, "The task's jediTaskID."]
) -> Reply:
    """The metadata of the task's finished user jobs, keyed by PandaID."""
    found = await job_admin.analysis_metadata(call.db, task_id)
    return Reply(data=found) if found else Reply(message=job_admin.NO_METADATA, data={})


@job.endpoint(method="POST", db=DbUse.WRITE)
async def kill(
    call: Call,
    job_ids: JobIds,
    code: Annotated[int | None, "Kill code (api-v1.md §3.6); none for a user kill."] = None,
    use_email_as_id: Annotated[bool, "Name the requester by the token's email claim."] = False,
    kill_options: Annotated[list[str], "keepUnmerged, jobSubStatus=<status>."] = [],  # noqa: B006
) -> Reply:
    """Kill jobs: one boolean per id, whether it was killed (owner, or production role)."""
    identity = call.caller
    requester = identity.user_name
    email = identity.claims.get("email")
    if use_email_as_id and isinstance(email, str) and email:
        requester = email[:100]
    try:
        options = job_admin.parse_kill_options(kill_options)
        killed = await job_admin.kill_jobs(
            call.db,
            call.state.clock,
            identity,
            job_ids,
            code,
            production=_is_production(call),
            options=options,
            requester=requester,
        )
    except InvalidInput as exc:
        return failure(exc.message)
    if any(killed):
        call.on_commit.append(lambda: call.state.wake("generator"))
    return Reply(data=killed)


@job.endpoint(method="POST", db=DbUse.WRITE)
async def reassign(call: Call, job_ids: JobIds) -> Reply:
    """Send queued jobs back to their task, which makes and brokers new ones."""
    try:
        reassigned = await job_admin.reassign(call.db, call.state.clock, job_ids, call.caller.user_name)
    except InvalidInput as exc:
        return failure(exc.message)
    if reassigned:
        call.on_commit.append(lambda: call.state.wake("generator"))
    return Reply()


@job.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def set_command(
    call: Call,
    job_id: Annotated[int, "PandaID of the job."],
    command: Annotated[str, "The command the pilot receives at its next update (< 250 chars)."],
) -> Reply:
    """Set the pilot command of a live job."""
    ok, message = await job_admin.set_command(call.db, call.state.clock, job_id, command)
    return Reply(success=ok, message=message)


@job.endpoint(method="POST", access=Access.PRODUCTION, db=DbUse.WRITE)
async def set_debug_mode(
    call: Call,
    job_id: Annotated[int, "PandaID of the job."],
    mode: Annotated[bool, "Debug mode on (true) or off (false)."],
) -> Reply:
    """Switch a job's debug mode; its pilot receives ``debug`` at its next update.

    ``success`` is true when the job is in the mode asked (upstream inverts it, DESIGN §9.3).
    """
    ok, message = await job_admin.set_debug_mode(
        call.db, call.state.clock, call.caller, job_id, mode, production=_is_production(call)
    )
    return Reply(success=ok, message=message)


@job.endpoint(method="POST", db=DbUse.WRITE)
async def submit(
    call: Call,
    jobs: Annotated[str, "JSON array of serialized jobs (JobSpec values in order, then their files)."],
) -> Reply:
    """Submit jobs directly, bypassing tasks: ``[PandaID, jobDefinitionID, jobsetID or jobName]`` each."""
    try:
        stored = await job_admin.submit(
            call.db, call.state.clock, call.caller, jobs, production=_is_production(call)
        )
    except InvalidInput as exc:
        return failure(exc.message)
    return Reply(data=stored)


def _is_production(call: Call) -> bool:
    return has_production_role(call.caller, call.state.settings.production_dns)
