"""Automatic retries end to end (domain.md §5.6): a pilot reports a failure with an error code, the
agents run, and the next job of the task shows the rule's effect, or the file gets no more attempt
and the task ends with the status of domain.md §2.5."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from bamboo.config import Settings
from bamboo.db import tasks as tasks_db
from bamboo.db.schema import task_files
from bamboo.logic import queues, retry_rules
from bamboo.logic.catalog import CatalogFile
from bamboo.server import ServerStartError, install_retry_rules
from tests.api.test_job_watchdog import watch
from tests.api.test_merge_jobs import start as start_merging
from tests.api.test_merge_jobs import statuses
from tests.api.test_task_flow import acquire, report, run_job, submit, task_status, world
from tests.tasks import input_task

# The fixture, imported for pytest to find.
__all__ = ["world"]

DATASET = "user.testuser.retried.v1"


@pytest.fixture
def rules() -> Iterator:
    """Install a table of the given rules for one test; the built-in one comes back after."""

    def install(*items: dict) -> None:
        retry_rules.install(retry_rules.parse_table(json.dumps({"rules": list(items)})))

    yield install
    retry_rules.install(None)


async def start(api, runner, n_files: int, n_files_per_job: int = 1, **params) -> int:
    files = [CatalogFile(lfn=f"retried.{i:02d}.root", fsize=1000 + i, n_events=10) for i in range(n_files)]
    async with api.state.db.transaction() as conn:
        await api.state.dm.register_files(conn, api.state.clock, DATASET, files)
    task_id = await submit(
        api, {**input_task(DATASET, "user.testuser.retry.v1", n_files_per_job=n_files_per_job), **params}
    )
    await runner.drain()
    return task_id


async def fail(api, job: dict, site: str = "TEST_PQ", **errors) -> None:
    """The pilot runs the job and reports it failed with ``errors`` (update_job field names)."""
    common = {"job_id": job["PandaID"], "attempt_nr": job["attemptNr"], "site_name": site}
    (running,) = await report(api, [{**common, "job_status": "running"}])
    assert running["data"] == {"StatusCode": 0, "command": "NULL"}
    (failed,) = await report(api, [{**common, "job_status": "failed", **errors}])
    assert failed["data"] == {"StatusCode": 0, "command": "NULL"}


async def rows(api, task_id: int) -> list[dict]:
    async with api.state.db.transaction(write=False) as conn:
        result = await conn.execute(
            sa.select(task_files)
            .where(task_files.c.jediTaskID == task_id, task_files.c.type == "input")
            .order_by(task_files.c.lfn)
        )
        return [dict(row) for row in result.mappings()]


async def task_row(api, task_id: int) -> dict:
    async with api.state.db.transaction(write=False) as conn:
        return await tasks_db.get(conn, task_id)


async def test_no_retry_fails_the_file_at_once_and_the_task_finishes(world) -> None:
    api, runner = world
    task_id = await start(api, runner, n_files=2)
    first, second = await acquire(api, n_jobs=2)
    await run_job(api, first)
    # 1335 is in the built-in table: the user's code is not on the server, a retry cannot help.
    await fail(api, second, pilot_error_code=1335, pilot_error_diag="User code not available")
    await runner.drain()
    assert await acquire(api) == []
    finished, failed = await rows(api, task_id)
    assert (finished["status"], finished["attemptNr"]) == ("finished", 0)
    assert (failed["status"], failed["attemptNr"], failed["failedAttempt"], failed["maxAttempt"]) == (
        "ready",
        1,
        1,
        1,
    )
    assert await task_status(api, task_id) == "finished"


async def test_a_task_whose_every_file_gets_no_retry_fails(world) -> None:
    api, runner = world
    task_id = await start(api, runner, n_files=1)
    (job,) = await acquire(api)
    await fail(api, job, pilot_error_code=1349)
    await runner.drain()
    assert await acquire(api) == []
    assert await task_status(api, task_id) == "failed"


async def test_limit_retry_caps_the_attempts(world) -> None:
    api, runner = world
    task_id = await start(api, runner, n_files=1)
    # 1150 (looping job) allows two attempts in the built-in table; the task would allow three.
    (job,) = await acquire(api)
    await fail(api, job, pilot_error_code=1150)
    await runner.drain()
    (retry,) = await acquire(api)
    assert (retry["attemptNr"], retry["inFiles"]) == (2, job["inFiles"])
    await fail(api, retry, pilot_error_code=1150)
    await runner.drain()
    assert await acquire(api) == []
    (row,) = await rows(api, task_id)
    assert (row["attemptNr"], row["failedAttempt"], row["maxAttempt"]) == (2, 2, 2)
    assert await task_status(api, task_id) == "failed"


async def test_an_error_without_a_rule_keeps_the_usual_attempts(world) -> None:
    api, runner = world
    task_id = await start(api, runner, n_files=1, ramCount=2000)
    for attempt in (1, 2, 3):
        (job,) = await acquire(api)
        assert (job["attemptNr"], job["minRamCount"]) == (attempt, 2000)
        await fail(api, job, pilot_error_code=1099)
        await runner.drain()
    assert await acquire(api) == []
    (row,) = await rows(api, task_id)
    assert (row["attemptNr"], row["maxAttempt"]) == (3, 3)
    assert await task_status(api, task_id) == "failed"


async def test_increase_memory_gives_the_next_job_more_within_the_queue(world) -> None:
    api, runner = world
    async with api.state.db.transaction() as conn:
        await queues.put(
            conn, api.state.clock, {"name": "TEST_PQ", "type": "unified", "corecount": 1, "maxrss": 4000}
        )
    task_id = await start(api, runner, n_files=1, ramCount=2000)
    (job,) = await acquire(api)
    assert job["minRamCount"] == 2000
    await fail(api, job, pilot_error_code=1212, pilot_error_diag="Payload ran out of memory")
    await runner.drain()
    (retry,) = await acquire(api)
    assert (retry["attemptNr"], retry["minRamCount"], retry["inFiles"]) == (2, 3000, job["inFiles"])
    assert (await task_row(api, task_id))["ramCount"] == 3000
    # 4500 MB would be more than any queue of the task offers: the queue's 4000 MB it is.
    await fail(api, retry, pilot_error_code=1235)
    await runner.drain()
    (third,) = await acquire(api)
    assert (third["attemptNr"], third["minRamCount"]) == (3, 4000)
    await run_job(api, third)
    await runner.drain()
    assert await task_status(api, task_id) == "done"


async def test_a_diag_rule_acts_only_on_its_diagnostic(world) -> None:
    api, runner = world
    task_id = await start(api, runner, n_files=1, ramCount=2000)
    (job,) = await acquire(api)
    # 1305 with another diagnostic: no rule, the usual retry with the same memory.
    await fail(api, job, pilot_error_code=1305, pilot_error_diag="payload crashed")
    await runner.drain()
    (retry,) = await acquire(api)
    assert retry["minRamCount"] == 2000
    await fail(api, retry, pilot_error_code=1305, pilot_error_diag="std::bad_alloc in Reco")
    await runner.drain()
    (third,) = await acquire(api)
    assert third["minRamCount"] == 3000
    assert (await task_row(api, task_id))["ramCount"] == 3000


async def test_increase_cputime_moves_the_next_job_to_a_longer_queue(world) -> None:
    api, runner = world
    async with api.state.db.transaction() as conn:
        await queues.put(conn, api.state.clock, {"name": "SHORT_PQ", "type": "unified", "maxtime": 3600})
    task_id = await start(api, runner, n_files=1, site="SHORT_PQ,LONG_PQ", walltime=3000)
    (job,) = await acquire(api, site="SHORT_PQ")
    assert job["maxWalltime"] == 3600
    async with api.state.db.transaction() as conn:
        await queues.put(conn, api.state.clock, {"name": "LONG_PQ", "type": "unified", "maxtime": 86400})
    await fail(
        api, job, site="SHORT_PQ", pilot_error_code=1213, pilot_error_diag="Reached batch system time limit"
    )
    await runner.drain()
    assert (await task_row(api, task_id))["walltime"] == 5400
    assert await acquire(api, site="SHORT_PQ") == []
    (retry,) = await acquire(api, site="LONG_PQ")
    assert (retry["attemptNr"], retry["maxWalltime"], retry["inFiles"]) == (2, 86400, job["inFiles"])


async def test_reduce_input_per_job_halves_the_files_of_the_next_jobs(world) -> None:
    api, runner = world
    task_id = await start(api, runner, n_files=4, n_files_per_job=4)
    (job,) = await acquire(api)
    assert len(job["inFiles"].split(",")) == 4
    await fail(api, job, pilot_error_code=1124, pilot_error_diag="Output file too large")
    await runner.drain()
    retries = await acquire(api, n_jobs=10)
    assert [len(r["inFiles"].split(",")) for r in retries] == [2, 2]
    assert sorted(lfn for r in retries for lfn in r["inFiles"].split(",")) == sorted(
        job["inFiles"].split(",")
    )
    assert "NF=2" in (await task_row(api, task_id))["splitRule"].split(",")
    for retry in retries:
        await run_job(api, retry)
    await runner.drain()
    assert await task_status(api, task_id) == "done"


async def test_an_inactive_rule_only_logs(world, rules, caplog) -> None:
    api, runner = world
    rules({"source": "pilotErrorCode", "code": 1099, "action": "no_retry", "active": False})
    task_id = await start(api, runner, n_files=1)
    (job,) = await acquire(api)
    with caplog.at_level(logging.INFO, logger="bamboo.logic.retry_rules"):
        await fail(api, job, pilot_error_code=1099)
        await runner.drain()
    assert "inactive rule 1 (pilotErrorCode=1099 -> no_retry) matches" in caplog.text
    (retry,) = await acquire(api)
    assert retry["attemptNr"] == 2
    (row,) = await rows(api, task_id)
    assert row["maxAttempt"] == 3


async def test_a_configured_rule_acts_on_a_watchdog_failure(world, rules) -> None:
    api, runner = world
    rules({"source": "jobDispatcherErrorCode", "code": 100, "action": "no_retry"})
    task_id = await start(api, runner, n_files=1)
    (job,) = await acquire(api)
    (running,) = await report(
        api, [{"job_id": job["PandaID"], "attempt_nr": job["attemptNr"], "job_status": "running"}]
    )
    assert running["success"] is True
    # The heartbeat is lost: the watchdog fails the job (code 100) through holding and the finaliser.
    assert await watch(api, timedelta(hours=3)) == 1
    await runner.drain()
    assert await acquire(api) == []
    (row,) = await rows(api, task_id)
    assert (row["attemptNr"], row["maxAttempt"]) == (1, 1)
    assert await task_status(api, task_id) == "failed"


async def test_a_bad_rules_file_stops_the_start_with_the_reason(tmp_path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"rules": [{"source": "pilotErrorCode", "code": 1212, "action": "more_ram"}]}))
    with pytest.raises(ServerStartError, match=r"rules.json: rule 1: unknown action 'more_ram'"):
        install_retry_rules(Settings(retry_rules_file=path))
    path.write_text(json.dumps({"rules": [{"source": "pilotErrorCode", "code": 1212, "action": "no_retry"}]}))
    try:
        install_retry_rules(Settings(retry_rules_file=path))
        (installed,) = retry_rules.active_table()
        assert installed.action == "no_retry"
    finally:
        retry_rules.install(None)


async def test_no_retry_on_a_merge_job_fails_its_pre_merge_jobs_at_once(world) -> None:
    api, runner = world
    _, runs = await start_merging(api, runner, "user.testuser.mergenoretry.v1", 2)
    for job in runs:
        await run_job(api, job)
    await runner.drain()
    (merge,) = await acquire(api)
    assert merge["processingType"] == "pmerge"
    # Without a rule the unmerged files would get two more merge jobs.
    await fail(api, merge, pilot_error_code=1349)
    await runner.drain()
    assert await acquire(api, n_jobs=10) == []
    assert await statuses(api, runs) == ["failed", "failed"]


async def test_a_rule_sees_the_error_the_finaliser_itself_sets(world, rules) -> None:
    api, runner = world
    rules({"source": "ddmErrorCode", "code": 200, "diag": "GUID/LFN/MD5/FSIZE", "action": "no_retry"})
    task_id = await start(api, runner, n_files=1)
    (job,) = await acquire(api)
    common = {"job_id": job["PandaID"], "attempt_nr": job["attemptNr"]}
    await report(api, [{**common, "job_status": "running"}])
    # The output report lacks sizes and checksums: the finaliser fails the job with ddmErrorCode 200.
    bad_report = json.dumps({lfn: {"guid": "g"} for lfn in job["outFiles"].split(",")})
    await report(api, [{**common, "job_status": "finished", "job_output_report": bad_report}])
    await runner.drain()
    assert await acquire(api) == []
    (row,) = await rows(api, task_id)
    assert (row["attemptNr"], row["maxAttempt"]) == (1, 1)
    assert await task_status(api, task_id) == "failed"
