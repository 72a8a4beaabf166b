"""The real panda-client and a Harvester-like resource side against the real server process.

The user side is panda-client from PyPI, configured only through its environment variables and run in a
child process (tests/e2e/panda_client_steps.py) because it reads that environment at import time. The
resource side makes exactly the calls Harvester's PandaCommunicator makes, with its payloads, a
production token and the server's CA. Both talk HTTPS to ``bamboo serve`` on SQLite and PostgreSQL;
the ``deployment`` fixture that starts them is in conftest.py.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.e2e.conftest import Deployment
from tests.tasks import NO_INPUT_TASK, input_task

pytestmark = pytest.mark.e2e

ACTIVE = {"registered", "defined", "ready", "scouting", "running"}


# urllib differs on the wire: JSON content type and a "{}" body on GETs, no gzip, Python's User-Agent.
@pytest.mark.parametrize("transport", ["curl", "urllib"])
def test_no_input_task_from_panda_client_to_done(deployment: Deployment) -> None:
    user, harvester = deployment.user, deployment.harvester
    assert user("hello") == [0, ""]
    task_id = deployment.submit(NO_INPUT_TASK)
    assert task_id >= 10_000_000
    assert deployment.task_status(task_id) in ACTIVE
    job_ids = deployment.job_ids(task_id, 2)
    assert len(job_ids) == 2

    jobs = [harvester.acquire(1)[0], harvester.acquire(1)[0]]
    assert sorted(job["PandaID"] for job in jobs) == sorted(job_ids)
    assert all(job["taskID"] == task_id and job["inFiles"] == "" for job in jobs)
    assert harvester.get_jobs(1) == []
    for job in jobs:
        harvester.run(job)

    deployment.wait_task(task_id, "done")
    status, records = user("getJobStatus", job_ids)
    assert status == 0
    assert [(record["PandaID"], record["jobStatus"]) for record in records] == [
        (job_id, "finished") for job_id in job_ids
    ]
    assert all(record["jediTaskID"] == task_id for record in records)
    # panda-client turned the server's {"__datetime__": ...} objects back into datetimes.
    assert all(datetime.fromisoformat(record["modificationTime"]) for record in records)
    status, tasks = user("get_tasks_detailed_info_since", filters={"jediTaskID": str(task_id)})
    assert status == 0
    (task,) = tasks
    assert (task["jediTaskID"], task["userName"], task["status"], task["nFilesFinished"]) == (
        task_id,
        "Test User",
        "done",
        2,
    )


def test_input_task_with_a_retry_then_a_chained_task(deployment: Deployment) -> None:
    user, harvester = deployment.user, deployment.harvester
    lfns = [f"data.{i:02d}.root" for i in range(10)]
    deployment.register_dataset(
        "user.testuser.input.v1", [f"{lfn}:{1000 + i}:100" for i, lfn in enumerate(lfns)]
    )
    task_id = deployment.submit(input_task("user.testuser.input.v1", "user.testuser.ana.v1", 3))
    job_ids = deployment.job_ids(task_id, 4)
    assert len(job_ids) == 4

    jobs = sorted(harvester.acquire(4), key=lambda job: job["PandaID"])
    assert [job["PandaID"] for job in jobs] == sorted(job_ids)
    assert [job["inFiles"].split(",") for job in jobs] == [
        [lfns[i] for i in chunk] for chunk in ([0, 1, 2], [3, 4, 5], [6, 7, 8], [9])
    ]
    for job in jobs[:3]:
        harvester.run(job)
    harvester.run(jobs[3], final="failed")

    (retry,) = harvester.acquire(1)
    assert retry["PandaID"] not in job_ids
    assert (retry["inFiles"], retry["attemptNr"]) == (lfns[9], 2)
    assert deployment.task_status(task_id) in ACTIVE
    harvester.run(retry)
    deployment.wait_task(task_id, "done")
    assert sorted(deployment.job_ids(task_id, 5)) == sorted([*job_ids, retry["PandaID"]])
    status, records = user("getJobStatus", [jobs[3]["PandaID"], retry["PandaID"]])
    assert status == 0
    assert [record["jobStatus"] for record in records] == ["failed", "finished"]

    outputs = sorted(
        lfn for job in [*jobs[:3], retry] for lfn in job["outFiles"].split(",") if lfn.endswith(".out.root")
    )
    assert len(outputs) == 4
    child_id = deployment.submit(
        input_task("user.testuser.ana.v1_out/", "user.testuser.skim.v1", 2), parent_tid=task_id
    )
    child_ids = deployment.job_ids(child_id, 2)
    child_jobs = harvester.acquire(2)
    assert sorted(job["PandaID"] for job in child_jobs) == sorted(child_ids)
    assert sorted(lfn for job in child_jobs for lfn in job["inFiles"].split(",")) == outputs
    for job in child_jobs:
        harvester.run(job)
    deployment.wait_task(child_id, "done")
