"""Random command sequences on random tasks, with pilots reporting in between (issue 6, Done when).

Every status a task is written with must follow the transition table from the one before it;
a final status is left only by a retry someone asked for; no job outlives a killed task; the
dataset counters equal a recount of the file rows.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bamboo.db import tasks as tasks_db
from bamboo.db.schema import jobs, task_datasets, task_files
from bamboo.logic.catalog import CatalogFile
from bamboo.logic.states import JOB_FINAL, TASK_FINAL, task_transition_allowed
from tests.api.test_task_flow import output_report, report, submit, world
from tests.tasks import NO_INPUT_TASK, input_task

# The fixture, imported for pytest to find.
__all__ = ["world"]

OPERATOR = {"user": "Prod Operator", "role": "production"}
COMMANDS = ("kill", "finish", "finish_soft", "pause", "resume", "retry", "reassign", "release")

_command = st.tuples(st.just("command"), st.sampled_from(COMMANDS))
_acquire = st.tuples(st.just("acquire"), st.integers(1, 3))
_report = st.tuples(st.just("report"), st.integers(0, 20), st.sampled_from(["running", "finished", "failed"]))
_drain = st.tuples(st.just("drain"))
ACTIONS = st.lists(st.one_of(_command, _acquire, _report, _report, _drain), min_size=1, max_size=14)
SHAPES = st.sampled_from(["no_input", "input", "merge"])
# Examples share the test's database: each makes its own task and dataset names.
_SERIALS = itertools.count()


class StatusLog:
    """Every status written for each task, in order (wraps ``db.tasks.write_status``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.written: dict[int, list[str]] = defaultdict(list)
        original = tasks_db.write_status

        async def recording(conn: Any, task_id: int, status: str, **values: Any) -> None:
            await original(conn, task_id, status, **values)
            self.written[task_id].append(status)

        monkeypatch.setattr(tasks_db, "write_status", recording)


async def new_task(api, runner, shape: str, serial: int) -> int:
    if shape == "no_input":
        params = {**NO_INPUT_TASK, "taskName": f"user.testuser.prop.{serial}/", "nEvents": 6}
    else:
        dataset = f"user.testuser.prop.input.{serial}"
        files = [CatalogFile(lfn=f"prop.{serial}.{i}.root", fsize=100, n_events=10) for i in range(4)]
        async with api.state.db.transaction() as conn:
            await api.state.dm.register_files(conn, api.state.clock, dataset, files)
        params = input_task(dataset, f"user.testuser.prop.{serial}", n_files_per_job=1)
        if shape == "merge":
            merge_spec = {"jobParameters": "${TRN_OUTPUT:OUTPUT} ${TRN_LOG:LOG}"}
            params = {**params, "mergeOutput": True, "mergeSpec": merge_spec, "nFilesPerMergeJob": 2}
    task_id = await submit(api, params)
    await runner.drain()
    return task_id


async def send_command(api, task_id: int, name: str) -> None:
    endpoint, body = {
        "finish_soft": ("finish", {"soft": True}),
        "reassign": ("reassign", {"site": "TEST_PQ"}),
    }.get(name, (name, {}))
    async with api.client(headers=api.token_headers(**OPERATOR)) as client:
        response = await client.post(f"/api/v1/task/{endpoint}", json={"task_id": task_id, **body})
    assert response.status_code == 200, response.text
    answer = response.json()
    # Refused commands answer success false with a code; either way the envelope is complete.
    assert set(answer) == {"success", "message", "data"}


async def acquire_jobs(api, n_jobs: int) -> list[dict]:
    async with api.client(headers=api.token_headers("Harvester Robot", role="production")) as client:
        body = (
            await client.post(
                "/api/v1/pilot/acquire_jobs",
                json={"site_name": "TEST_PQ", "node": "wn01", "prod_source_label": "user", "n_jobs": n_jobs},
            )
        ).json()
    return body["data"]["jobs"] if body["success"] else []


async def pilot_report(api, job: dict, status: str) -> None:
    update: dict[str, Any] = {"job_id": job["PandaID"], "job_status": status, "attempt_nr": job["attemptNr"]}
    if status == "finished":
        update["job_output_report"] = output_report(job)
    [reply] = await report(api, [update])
    # The server always answers; for a job it killed it tells the pilot so.
    assert reply["success"] is True, reply


async def check_invariants(api, task_id: int, written: list[str], retried: bool) -> None:
    previous = None
    for status in written:
        if previous is not None:
            # The finisher ends a task through ``prepared`` without writing that step.
            via_prepared = task_transition_allowed(previous, "prepared") and task_transition_allowed(
                "prepared", status
            )
            assert task_transition_allowed(previous, status) or via_prepared, (previous, status, written)
            if previous in TASK_FINAL and status != previous:
                assert retried and status in ("toretry", "toincexec"), written
        previous = status
    async with api.state.db.transaction(write=False) as conn:
        task = await tasks_db.get(conn, task_id)
        job_statuses = [
            row.jobStatus
            for row in await conn.execute(sa.select(jobs.c.jobStatus).where(jobs.c.jediTaskID == task_id))
        ]
        masters = (
            await conn.execute(
                sa.select(task_datasets).where(
                    task_datasets.c.jediTaskID == task_id,
                    task_datasets.c.masterID.is_(None),
                    task_datasets.c.type.in_(["input", "pseudo_input"]),
                )
            )
        ).mappings()
        for dataset in list(masters):
            rows = (
                await conn.execute(
                    sa.select(task_files).where(
                        task_files.c.datasetID == dataset["datasetID"], task_files.c.keepTrack == 1
                    )
                )
            ).mappings()
            rows = list(rows)
            finished = sum(row["status"] == "finished" for row in rows)
            failed = sum(
                row["status"] == "ready"
                and (
                    (row["maxAttempt"] is not None and row["attemptNr"] >= row["maxAttempt"])
                    or (row["maxFailure"] is not None and row["failedAttempt"] >= row["maxFailure"])
                )
                for row in rows
            )
            running = sum(row["status"] == "running" for row in rows)
            counted = (
                dataset["nFiles"],
                dataset["nFilesFinished"],
                dataset["nFilesFailed"],
                dataset["nFilesUsed"],
            )
            assert counted == (len(rows), finished, failed, running + finished + failed), (
                task["status"],
                written,
            )
        # Unmerged files count once they are merge inputs; those out of merge attempts are notmerged.
        twins = (
            await conn.execute(
                sa.select(task_datasets).where(
                    task_datasets.c.jediTaskID == task_id, task_datasets.c.type.in_(["trn_output", "trn_log"])
                )
            )
        ).mappings()
        for dataset in list(twins):
            rows = (
                await conn.execute(
                    sa.select(task_files.c.status).where(
                        task_files.c.datasetID == dataset["datasetID"], task_files.c.keepTrack == 1
                    )
                )
            ).scalars()
            tally = Counter(rows)
            merged, not_merged = tally["finished"], tally["notmerged"]
            assert (
                dataset["nFiles"],
                dataset["nFilesFinished"],
                dataset["nFilesFailed"],
                dataset["nFilesUsed"],
            ) == (sum(tally.values()), merged, not_merged, tally["running"] + merged + not_merged), (
                dict(tally),
                written,
            )
    assert written and task["status"] == written[-1]
    if task["status"] == "aborted":
        assert all(status in JOB_FINAL for status in job_statuses), job_statuses


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=SHAPES, actions=ACTIONS)
async def test_random_commands_and_reports_keep_every_invariant(
    world, monkeypatch: pytest.MonkeyPatch, shape: str, actions: list[tuple]
) -> None:

    api, runner = world
    log = StatusLog(monkeypatch)
    try:
        await run_actions(api, runner, log, shape, actions)
    finally:
        # Examples share the fixture: the next one wraps the original again.
        monkeypatch.undo()


async def run_actions(api, runner, log: StatusLog, shape: str, actions: list[tuple]) -> None:
    task_id = await new_task(api, runner, shape, next(_SERIALS))
    held: list[dict] = []
    retried = False
    for action in actions:
        if action[0] == "command":
            retried = retried or action[1] == "retry"
            await send_command(api, task_id, action[1])
        elif action[0] == "acquire":
            held += await acquire_jobs(api, action[1])
        elif action[0] == "report" and held:
            job = held[action[1] % len(held)]
            await pilot_report(api, job, action[2])
            if action[2] != "running":
                held.remove(job)
        else:
            await runner.drain()
    await runner.drain()
    await check_invariants(api, task_id, log.written[task_id], retried)
