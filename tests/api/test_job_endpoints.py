"""The job/* endpoints of api-v1.md §2.2 through the API, on both databases."""

from __future__ import annotations

import orjson
import sqlalchemy as sa

from bamboo.db.schema import FILE_FIELDS, JOB_FIELDS, jobs
from tests.api.conftest import ApiServer
from tests.api.test_task_flow import acquire, envelope, output_report, report, submit, world
from tests.tasks import NO_INPUT_TASK

__all__ = ["world"]

OWNER = "test user"
PRODUCTION = ("Job Operator", "production")
UNKNOWN = 987654321
SECURE_REQUIRED = {"success": False, "message": "SSL secure connection is required", "data": None}
PRODUCTION_REQUIRED = {"success": False, "message": "production or pilot role required", "data": None}


async def call(api: ApiServer, name: str, as_user: str | None = OWNER, role: str | None = None, **params):
    headers = api.token_headers(as_user, role=role) if as_user else None
    async with api.client(headers=headers) as client:
        if name in ("get_metadata_for_analysis_jobs", "get_status"):
            return envelope(await client.get(f"/api/v1/job/{name}", params=params))
        return envelope(await client.post(f"/api/v1/job/{name}", json=params))


async def prod(api: ApiServer, name: str, **params):
    return await call(api, name, as_user=PRODUCTION[0], role=PRODUCTION[1], **params)


async def task_jobs(world) -> tuple[ApiServer, object, int, list[int]]:
    api, runner = world
    task_id = await submit(api, NO_INPUT_TASK, user=OWNER)
    await runner.drain()
    async with api.state.db.transaction() as conn:
        query = sa.select(jobs.c.PandaID).where(jobs.c.jediTaskID == task_id).order_by(jobs.c.PandaID)
        job_ids = list((await conn.execute(query)).scalars())
    assert len(job_ids) == 2
    return api, runner, task_id, job_ids


async def row(api: ApiServer, panda_id: int) -> dict:
    async with api.state.db.transaction() as conn:
        found = (await conn.execute(sa.select(jobs).where(jobs.c.PandaID == panda_id))).mappings().first()
        return dict(found)


async def heartbeat(api: ApiServer, job: dict) -> dict:
    replies = await report(
        api, [{"job_id": job["PandaID"], "job_status": "running", "attempt_nr": job["attemptNr"]}]
    )
    return replies[0]["data"]


# --- get_status, get_description ---------------------------------------------------------------------


async def test_status_and_description_answers(world) -> None:
    api, _, task_id, job_ids = await task_jobs(world)
    statuses = await call(api, "get_status", job_ids=[*job_ids, UNKNOWN])
    assert statuses == {
        "success": True,
        "message": "",
        "data": [
            {"status": "activated", "command": None},
            {"status": "activated", "command": None},
            {"status": "unknown", "command": "tobekilled"},
        ],
    }
    described = await call(api, "get_description", job_ids=[UNKNOWN, job_ids[1]])
    assert described["success"] is True and described["message"] == ""
    missing, record = described["data"]
    assert missing is None
    assert list(record) == [*JOB_FIELDS, "Files"] and record["PandaID"] == job_ids[1]
    assert record["jediTaskID"] == task_id
    for name in ("get_status", "get_description"):
        assert await call(api, name, as_user=None, job_ids=[job_ids[0]]) == SECURE_REQUIRED
        bad = await call(api, name, job_ids="x")
        assert bad["success"] is False and "'job_ids'" in bad["message"], bad
        assert await call(api, name) == {
            "success": False,
            "message": "Argument error: missing a required argument: 'job_ids'",
            "data": None,
        }


# --- get_description_incl_archive ---------------------------------------------------------------------


async def test_description_incl_archive(world) -> None:
    api, _, task_id, job_ids = await task_jobs(world)
    body = await call(api, "get_description_incl_archive", job_ids=[job_ids[0], UNKNOWN])
    assert body["success"] is True and body["message"] == ""
    record, missing = body["data"]
    assert missing is None
    assert list(record) == [*JOB_FIELDS, "Files"]
    assert record["PandaID"] == job_ids[0] and record["jediTaskID"] == task_id
    assert all(list(f) == list(FILE_FIELDS) for f in record["Files"])
    assert await call(api, "get_description_incl_archive", as_user=None, job_ids=[1]) == SECURE_REQUIRED
    bad = await call(api, "get_description_incl_archive", job_ids="x")
    assert bad["success"] is False and "job_ids" in bad["message"]


# --- generate_offline_execution_script ----------------------------------------------------------------


async def offline_script(api: ApiServer, as_user: str | None = OWNER, **params):
    """The raw answer: upstream sends this endpoint's text bare, as a JSON string."""
    headers = api.token_headers(as_user) if as_user else None
    async with api.client(headers=headers) as client:
        response = await client.get("/api/v1/job/generate_offline_execution_script", params=params)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    return orjson.loads(response.content)


async def test_offline_script(world) -> None:
    api, _, task_id, job_ids = await task_jobs(world)
    # Public: no credentials needed.
    script = await offline_script(api, as_user=None, job_id=job_ids[0])
    assert isinstance(script, str) and script.startswith("#!/bin/bash\n")
    assert f"PandaID={job_ids[0]}" in script and f"jediTaskID={task_id}" in script
    assert "TRANSFORMATION=runGen-00-00-02" in script
    assert "JOB_PARAMETERS='-p \"echo hello\" --maxEvents=2 --skipEvents=0'" in script
    assert await offline_script(api, as_user=None, job_id=UNKNOWN) == (
        f"ERROR: Cannot get PandaID={UNKNOWN} in DB for the last 30 days. You may add &days=N to the URL"
    )
    assert await offline_script(api, job_id=UNKNOWN, days=3) == (
        f"ERROR: Cannot get PandaID={UNKNOWN} in DB for the last 3 days. You may change &days=N in the URL"
    )
    assert await offline_script(api, job_id=job_ids[0], days=0) == "ERROR: days must be between 1 and 3650"
    # A parameter the pipeline refuses is still answered with the envelope, as upstream's decorator does.
    bad = await offline_script(api, job_id="abc")
    assert bad["success"] is False and "job_id" in bad["message"]


async def test_offline_script_runs(world, tmp_path) -> None:
    import asyncio

    api, _, _, job_ids = await task_jobs(world)
    async with api.state.db.transaction() as conn:
        await conn.execute(
            sa.update(jobs)
            .where(jobs.c.PandaID == job_ids[0])
            .values(transformation="echo", jobParameters="'it ran' $PANDAID")
        )
    script = await offline_script(api, job_id=job_ids[0])
    path = tmp_path / "run.sh"
    path.write_text(script)
    process = await asyncio.create_subprocess_exec(
        "bash", str(path), cwd=tmp_path, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    assert out.decode() == f"it ran {job_ids[0]}\n"


# --- get_metadata_for_analysis_jobs -------------------------------------------------------------------


async def test_metadata_for_analysis_jobs(world) -> None:
    api, runner, task_id, _ = await task_jobs(world)
    assert await call(api, "get_metadata_for_analysis_jobs", task_id=task_id) == {
        "success": True,
        "message": "No metadata found",
        "data": {},
    }
    first, second = await acquire(api, n_jobs=2)
    for job, meta in ((first, {"events": 2}), (second, "not json")):
        await heartbeat(api, job)
        update = {
            "job_id": job["PandaID"],
            "job_status": "finished",
            "attempt_nr": job["attemptNr"],
            "job_output_report": output_report(job),
            "meta_data": orjson.dumps(meta).decode() if isinstance(meta, dict) else meta,
        }
        await report(api, [update])
    await runner.drain()
    assert (await row(api, first["PandaID"]))["jobStatus"] == "finished"
    assert await call(api, "get_metadata_for_analysis_jobs", task_id=task_id) == {
        "success": True,
        "message": "",
        "data": {str(first["PandaID"]): {"events": 2}},
    }
    assert (await call(api, "get_metadata_for_analysis_jobs", task_id=UNKNOWN))[
        "message"
    ] == "No metadata found"
    assert await call(api, "get_metadata_for_analysis_jobs", as_user=None, task_id=task_id) == SECURE_REQUIRED
    missing = await call(api, "get_metadata_for_analysis_jobs")
    assert missing == {
        "success": False,
        "message": "Argument error: missing a required argument: 'task_id'",
        "data": None,
    }


# --- kill ----------------------------------------------------------------------------------------------


async def test_owner_kills_queued_and_running_jobs(world) -> None:
    api, _, _, job_ids = await task_jobs(world)
    (dispatched,) = await acquire(api)
    assert await heartbeat(api, dispatched) == {"StatusCode": 0, "command": "NULL"}
    assert (await row(api, dispatched["PandaID"]))["jobStatus"] == "running"
    body = await call(api, "kill", job_ids=[*job_ids, UNKNOWN])
    assert body == {"success": True, "message": "", "data": [True, True, False]}
    for panda_id in job_ids:
        killed = await row(api, panda_id)
        assert killed["jobStatus"] == "cancelled"
        assert killed["commandToPilot"] == "tobekilled"
        assert (killed["taskBufferErrorCode"], killed["taskBufferErrorDiag"]) == (100, "killed by Test User")
    assert await heartbeat(api, dispatched) == {"StatusCode": 0, "command": "tobekilled"}
    # Already final (archived): not killed again.
    assert (await call(api, "kill", job_ids=job_ids))["data"] == [False, False]


async def test_kill_permissions(world) -> None:
    api, _, _, job_ids = await task_jobs(world)
    assert await call(api, "kill", as_user="Someone Else", job_ids=job_ids) == {
        "success": True,
        "message": "",
        "data": [False, False],
    }
    assert (await row(api, job_ids[0]))["jobStatus"] == "activated"
    # Production may not kill user jobs without a code that allows it...
    assert (await prod(api, "kill", job_ids=[job_ids[0]]))["data"] == [False]
    # ... but may with one (51: reassigned by JEDI, closed/toreassign).
    assert (await prod(api, "kill", job_ids=[job_ids[0]], code=51))["data"] == [True]
    closed = await row(api, job_ids[0])
    assert (closed["jobStatus"], closed["jobSubStatus"], closed["taskBufferErrorDiag"]) == (
        "closed",
        "toreassign",
        "reassigned by JEDI",
    )
    assert await call(api, "kill", as_user=None, job_ids=job_ids) == SECURE_REQUIRED


async def test_kill_options_and_bad_parameters(world) -> None:
    api, _, _, job_ids = await task_jobs(world)
    body = await call(api, "kill", job_ids=[job_ids[0]], kill_options=["jobSubStatus=byuser", "keepUnmerged"])
    assert body["data"] == [True]
    assert (await row(api, job_ids[0]))["jobSubStatus"] == "byuser"
    assert await call(api, "kill", job_ids=[job_ids[1]], code=12345) == {
        "success": False,
        "message": "unknown kill code 12345",
        "data": None,
    }
    assert await call(api, "kill", job_ids=[job_ids[1]], kill_options=["bogus"]) == {
        "success": False,
        "message": "unknown kill option 'bogus' (known: keepUnmerged, jobSubStatus=<status>)",
        "data": None,
    }
    assert (await call(api, "kill", job_ids=[job_ids[1]], kill_options=["jobSubStatus="]))["success"] is False
    assert (await row(api, job_ids[1]))["jobStatus"] == "activated"
    async with api.client(headers=api.token_headers(OWNER)) as client:
        wrong_method = envelope(await client.get("/api/v1/job/kill", params={"job_ids": job_ids}))
    assert wrong_method == {"success": False, "message": "expecting POST, received GET", "data": None}
    bad = await call(api, "kill", job_ids=["x"])
    assert bad["success"] is False and "job_ids" in bad["message"]


# --- reassign ------------------------------------------------------------------------------------------


async def test_reassign_makes_new_jobs(world) -> None:
    api, runner, task_id, job_ids = await task_jobs(world)
    (dispatched,) = await acquire(api)
    queued = next(panda_id for panda_id in job_ids if panda_id != dispatched["PandaID"])
    body = await call(api, "reassign", as_user="Anyone", job_ids=[*job_ids, UNKNOWN])
    assert body == {"success": True, "message": "", "data": None}
    old = await row(api, queued)
    assert (old["jobStatus"], old["jobSubStatus"]) == ("closed", "toreassign")
    # The dispatched job is not queued: left running.
    assert (await row(api, dispatched["PandaID"]))["jobStatus"] == "sent"
    await runner.drain()
    async with api.state.db.transaction() as conn:
        query = sa.select(jobs.c.PandaID, jobs.c.jobStatus).where(
            jobs.c.jediTaskID == task_id, jobs.c.PandaID.not_in(job_ids)
        )
        new = (await conn.execute(query)).all()
    assert [status for _, status in new] == ["activated"]
    assert await call(api, "reassign", as_user=None, job_ids=job_ids) == SECURE_REQUIRED
    bad = await call(api, "reassign", job_ids=None)
    assert bad["success"] is False


# --- set_command ---------------------------------------------------------------------------------------


async def test_set_command_reaches_the_pilot(world) -> None:
    api, _, _, job_ids = await task_jobs(world)
    (dispatched,) = await acquire(api)
    panda_id = dispatched["PandaID"]
    assert await prod(api, "set_command", job_id=panda_id, command="softkill") == {
        "success": True,
        "message": "command received",
        "data": None,
    }
    assert await heartbeat(api, dispatched) == {"StatusCode": 0, "command": "softkill"}
    assert await prod(api, "set_command", job_id=panda_id, command="x" * 250) == {
        "success": False,
        "message": "command string too long. must be less than 250 chars",
        "data": None,
    }
    assert await prod(api, "set_command", job_id=UNKNOWN, command="softkill") == {
        "success": False,
        "message": f"no active job with PandaID={UNKNOWN}",
        "data": None,
    }
    assert (await call(api, "kill", job_ids=[panda_id]))["data"] == [True]
    assert await prod(api, "set_command", job_id=panda_id, command="softkill") == {
        "success": False,
        "message": f"no active job with PandaID={panda_id}",
        "data": None,
    }
    assert await call(api, "set_command", job_id=job_ids[0], command="x") == PRODUCTION_REQUIRED
    bad = await prod(api, "set_command", job_id=job_ids[0])
    assert bad == {
        "success": False,
        "message": "Argument error: missing a required argument: 'command'",
        "data": None,
    }


async def test_set_command_refused_while_being_killed(world) -> None:
    api, _, _, job_ids = await task_jobs(world)
    async with api.state.db.transaction() as conn:
        await conn.execute(
            sa.update(jobs).where(jobs.c.PandaID == job_ids[0]).values(commandToPilot="tobekilled")
        )
    assert await prod(api, "set_command", job_id=job_ids[0], command="softkill") == {
        "success": False,
        "message": "job is being killed",
        "data": None,
    }


# --- set_debug_mode ------------------------------------------------------------------------------------


async def test_set_debug_mode(world) -> None:
    api, _, _, job_ids = await task_jobs(world)
    (dispatched,) = await acquire(api)
    panda_id = dispatched["PandaID"]
    ok = {"success": True, "message": "Succeeded", "data": None}
    same = {"success": True, "message": "Already set accordingly", "data": None}
    assert await prod(api, "set_debug_mode", job_id=panda_id, mode=True) == ok
    assert await prod(api, "set_debug_mode", job_id=panda_id, mode=True) == same
    assert "debug" in (await row(api, panda_id))["specialHandling"].split(",")
    assert await heartbeat(api, dispatched) == {"StatusCode": 0, "command": "debug"}
    assert await prod(api, "set_debug_mode", job_id=panda_id, mode=False) == ok
    assert await heartbeat(api, dispatched) == {"StatusCode": 0, "command": "NULL"}
    assert await prod(api, "set_debug_mode", job_id=UNKNOWN, mode=True) == {
        "success": False,
        "message": f"PandaID={UNKNOWN} not found in active DB",
        "data": None,
    }
    async with api.state.db.transaction() as conn:
        await conn.execute(sa.update(jobs).where(jobs.c.PandaID == panda_id).values(jobStatus="holding"))
    assert await prod(api, "set_debug_mode", job_id=panda_id, mode=True) == {
        "success": False,
        "message": "Cannot set debugMode since the job status is holding which is not in one of "
        "['defined', 'activated', 'running', 'sent', 'starting', 'assigned']",
        "data": None,
    }
    assert await call(api, "set_debug_mode", job_id=job_ids[0], mode=True) == PRODUCTION_REQUIRED
    bad = await prod(api, "set_debug_mode", job_id=job_ids[0], mode="maybe")
    assert bad["success"] is False and "mode" in bad["message"]


# --- submit --------------------------------------------------------------------------------------------


def serialized(**values) -> list:
    """A job as job/submit takes it: JobSpec values in order, then its files."""
    files = values.pop("files", [])
    spec = [values.get(name) for name in JOB_FIELDS]
    return [*spec, [[f.get(name) for name in FILE_FIELDS] + [None] for f in files]]


async def test_submit_and_dispatch(world) -> None:
    api, _ = world
    job = serialized(
        prodSourceLabel="user",
        computingSite="TEST_PQ",
        transformation="https://example.org/runGen",
        jobParameters="--x 1",
        jobName="direct.test",
        creationTime={"_datetime_object": "2026-01-02 03:04:05.000000"},
        files=[{"lfn": "out.root", "type": "output", "dataset": "user.x.out/"}],
    )
    body = await call(api, "submit", jobs=orjson.dumps([job, job]).decode())
    assert body["success"] is True and body["message"] == ""
    (first_id, definition, tail), (second_id, _, tail2) = body["data"]
    assert definition == 0 and tail == {"jobsetID": first_id} and tail2 == {"jobsetID": first_id}
    stored = await row(api, first_id)
    assert (stored["jobStatus"], stored["prodUserName"], stored["computingSite"]) == (
        "activated",
        "Test User",
        "TEST_PQ",
    )
    description = (await call(api, "get_description", job_ids=[second_id]))["data"][0]
    assert [f["lfn"] for f in description["Files"]] == ["out.root"]
    dispatched = await acquire(api, n_jobs=5)
    assert {job["PandaID"] for job in dispatched} == {first_id, second_id}


async def test_submit_validation(world) -> None:
    api, _ = world
    good = {"prodSourceLabel": "user", "computingSite": "TEST_PQ", "transformation": "t"}

    async def attempt(jobs, as_user=OWNER, role=None) -> dict:
        text = jobs if isinstance(jobs, str) else orjson.dumps(jobs).decode()
        return await call(api, "submit", as_user=as_user, role=role, jobs=text)

    def refused(message: str) -> dict:
        return {"success": False, "message": message, "data": None}

    assert await attempt([]) == refused("No jobs were submitted")
    assert (await attempt("[nope"))["message"].startswith("Failed to deserialize jobs: ")
    assert await attempt({"a": 1}) == refused("Failed to deserialize jobs: expected a JSON array of jobs")
    assert await attempt([serialized(**good, currentPriority="high")]) == refused(
        "job 0: currentPriority must be an integer"
    )
    assert await attempt([serialized(**good), serialized(**{**good, "jobName": "x" * 300})]) == refused(
        "job 1: jobName is longer than 256 characters"
    )
    assert await attempt([serialized(**{**good, "computingSite": None})]) == refused(
        "job 0: computingSite is required"
    )
    assert await attempt([serialized(**{**good, "computingSite": "NOWHERE"})]) == refused(
        "job 0: computingSite=NOWHERE is not a known queue"
    )
    assert await attempt([serialized(**good, job_label="odd")]) == refused("job_label=odd is not valid")
    assert await attempt([serialized(**good, creationTime="yesterday")]) == refused(
        'job 0: creationTime must be {"_datetime_object": "YYYY-MM-DD HH:MM:SS[.ffffff]"}'
    )
    assert await attempt([serialized(**good, files=[{"lfn": "a", "type": "weird"}])]) == refused(
        "job 0 file 0: type must be one of ['input', 'log', 'output', 'pseudo_input']"
    )
    assert await attempt([[None] * (len(JOB_FIELDS) + 1)]) == refused(
        f"job 0: a job has at most {len(JOB_FIELDS)} attribute values, got {len(JOB_FIELDS) + 1}"
    )
    managed = (await attempt([serialized(**{**good, "prodSourceLabel": "managed"})]))["message"]
    assert managed.endswith(" is missing production for prodSourceLabel=managed submission")
    stored = await attempt([serialized(**{**good, "prodSourceLabel": "managed"})], *PRODUCTION)
    assert stored["success"] is True and stored["data"][0][2] is not None
    assert await call(api, "submit", as_user=None, jobs="[]") == SECURE_REQUIRED
    bad = await call(api, "submit", jobs=[1])
    assert bad["success"] is False and "jobs" in bad["message"]
    async with api.state.db.transaction() as conn:
        count = (await conn.execute(sa.select(sa.func.count()).select_from(jobs))).scalar_one()
    assert count == 1


async def test_submit_reads_the_null_markers_of_panda_client(world) -> None:
    # panda-client's JobSpec and FileSpec serialise every unset attribute as the string "NULL",
    # which upstream stores as NULL (even where "NULL" would not fit, as in the 2-character units).
    api, _ = world
    *spec, files = serialized(
        prodSourceLabel="user",
        computingSite="TEST_PQ",
        transformation="t",
        files=[{"lfn": "out.root", "type": "output", "dataset": "user.x.out/"}],
    )
    marked = [*("NULL" if value is None else value for value in spec)]
    marked_files = [[*("NULL" if value is None else value for value in file[:-1]), None] for file in files]
    body = await call(api, "submit", jobs=orjson.dumps([[*marked, marked_files]]).decode())
    assert body["success"] is True, body
    ((panda_id, _, _),) = body["data"]
    stored = await row(api, panda_id)
    assert (stored["minRamUnit"], stored["homepackage"], stored["cmtConfig"]) == (None, None, None)
    (file,) = (await call(api, "get_description", job_ids=[panda_id]))["data"][0]["Files"]
    assert (file["lfn"], file["GUID"], file["scope"]) == ("out.root", None, None)


async def test_submitted_job_runs_to_the_end(world) -> None:
    api, runner = world
    job = serialized(prodSourceLabel="user", computingSite="TEST_PQ", transformation="t", jobParameters="")
    ((panda_id, _, _),) = (await call(api, "submit", jobs=orjson.dumps([job]).decode()))["data"]
    (dispatched,) = await acquire(api)
    assert dispatched["PandaID"] == panda_id
    await heartbeat(api, dispatched)
    update = {"job_id": panda_id, "job_status": "finished", "attempt_nr": dispatched["attemptNr"]}
    await report(api, [update])
    await runner.drain()
    assert (await row(api, panda_id))["jobStatus"] == "finished"
