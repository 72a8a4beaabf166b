"""panda-client 2.2.0's ``Client`` functions that tests/e2e does not call yet, against one real server.

Each call goes through the real package in a child process (tests/e2e/panda_client_steps.py), so the
request is the one panda-client builds and the assertion is on what panda-client hands its caller
after parsing the answer. coverage.py lists which test covers each function.
"""

from __future__ import annotations

import json
import uuid
import zlib
from datetime import datetime
from typing import Any

import pytest

from tests.e2e.conftest import Deployment, wait_for
from tests.tasks import NO_INPUT_TASK, QUEUE

pytestmark = pytest.mark.e2e

# The statuses of a task while it makes or runs jobs.
ACTIVE = {"ready", "scouting", "running"}
# panda-client's answer when the server answers anything but a success envelope ("basic" mode).
FAILED = [255, None]


def submit(deployment: Deployment, name: str, parent_tid: int | None = None) -> int:
    """A two-job no-input task of the user's named ``user.testuser.<name>/``."""
    params = {**NO_INPUT_TASK, "taskName": f"user.testuser.{name}/"}
    log = f"user.testuser.{name}.log/"
    params["log"] = {**params["log"], "dataset": log, "container": log}
    return deployment.submit(params, parent_tid=parent_tid)


def acquire(deployment: Deployment, task_id: int, count: int) -> list[dict[str, Any]]:
    """``count`` jobs of one task, fetched as Harvester fetches them (tests share the queue)."""
    jobs: list[dict[str, Any]] = []

    def probe() -> int:
        body = deployment.harvester.http.post(
            "/pilot/acquire_jobs",
            json={
                "site_name": QUEUE,
                "node": "wn01",
                "prod_source_label": "user",
                "computing_element": "wn01",
                "n_jobs": count - len(jobs),
                "task_id": task_id,
                "scheduler_id": "harvester-compat",
            },
        ).json()
        if body["data"] is not None:
            jobs.extend(body["data"]["jobs"])
        return len(jobs)

    wait_for(f"{count} jobs of task {task_id}", probe, lambda got: got >= count)
    return jobs


def finish_job(deployment: Deployment, job: dict[str, Any], metadata: dict[str, Any]) -> None:
    """Run an acquired job to finished through Harvester, reporting the payload's user metadata."""
    common = {"job_id": job["PandaID"], "site_name": QUEUE, "attempt_nr": job["attemptNr"], "node": "wn01"}
    deployment.harvester.update_jobs([{**common, "job_status": "running"}])
    outputs = {
        lfn: {"guid": str(uuid.uuid4()), "fsize": 10, "adler32": f"{zlib.adler32(lfn.encode()):08x}"}
        for lfn in job["outFiles"].split(",")
    }
    report = {
        **common,
        "job_status": "finished",
        "meta_data": json.dumps(metadata),
        "job_output_report": json.dumps(outputs),
    }
    assert deployment.harvester.update_jobs([report]) == [{"StatusCode": 0, "command": "NULL"}]
    wait_for(
        f"job {job['PandaID']} finished",
        lambda: deployment.harvester.check_jobs([job["PandaID"]])[0]["status"],
        lambda status: status == "finished",
    )


def test_task_reads(deployment: Deployment) -> None:
    user = deployment.user
    task_id = submit(deployment, "compat.reads")
    job_ids = sorted(deployment.job_ids(task_id, 2))
    # Both jobs go to Harvester; the first one finishes, the second stays "sent".
    job = next(job for job in acquire(deployment, task_id, 2) if job["PandaID"] == job_ids[0])
    finish_job(deployment, job, {"events": 2, "note": "compat"})

    # get_cert_attributes keeps the GRST_CRED* variables only: a token carries none.
    assert user("get_cert_attributes") == [0, {}]

    status, details = user("getJediTaskDetails", {"jediTaskID": task_id, "mine": 1}, True, True)
    assert status == 0
    # panda-client merges the server's dict into the one it was given.
    assert details["mine"] == 1 and details["jediTaskID"] == task_id
    assert sorted(details["PandaID"]) == job_ids
    assert details["status"] in ACTIVE

    # Tasks with a greater jediTaskID than minTaskID, keyed by their reqID.
    status, modified = user("getJobIDsJediTasksInTimeRange", "2020-01-01 00:00:00", minTaskID=task_id - 1)
    assert status == 0
    (entry,) = modified.values()
    assert list(modified) == [str(entry["reqID"])]
    assert (entry["jediTaskID"], entry["taskName"]) == (task_id, "user.testuser.compat.reads/")
    assert sorted(entry["PandaID"]) == job_ids
    assert datetime.fromisoformat(entry["modificationTime"])

    status, descriptions = user("get_job_descriptions", task_id)
    assert status == 0
    assert sorted(record["PandaID"] for record in descriptions) == job_ids
    assert {record["jediTaskID"] for record in descriptions} == {task_id}
    assert user("get_job_descriptions", task_id, unsuccessful_only=True) == [0, []]

    status, (ok, detailed) = user("get_task_details_json", task_id)
    assert (status, ok, detailed["jediTaskID"], detailed["userName"]) == (0, True, task_id, "Test User")

    status, records = user("getFullJobStatus", job_ids)
    assert status == 0
    assert [(record["PandaID"], record["jobStatus"]) for record in records] == [
        (job_ids[0], "finished"),
        (job_ids[1], "sent"),
    ]

    assert user("getUserJobMetadata", task_id) == [0, {str(job_ids[0]): {"events": 2, "note": "compat"}}]

    # panda-client's docstring names the keys task_id and panda_id; the list is sent as repeated keys.
    status, events = user("get_events_status", [{"task_id": task_id, "panda_id": job_ids[0]}])
    assert (status, events) == (0, {str(job_ids[0]): {}})

    child_id = submit(deployment, "compat.child", parent_tid=task_id)
    status, parent = user("get_parent_detailed_info", child_id)
    assert (status, parent["jediTaskID"], parent["taskName"]) == (0, task_id, "user.testuser.compat.reads/")
    # A task without a parent: success false, which panda-client's basic mode turns into a failure.
    assert user("get_parent_detailed_info", task_id) == FAILED


def test_direct_jobs_debug_mode_and_kill(deployment: Deployment) -> None:
    user, operator = deployment.user, deployment.operator
    spec = {
        "jobName": "compat.direct.1",
        "prodSourceLabel": "user",
        "computingSite": QUEUE,
        "transformation": "https://example.org/run.sh",
        "jobParameters": "echo direct",
        "VO": "bamboo",
        "currentPriority": 900,
        "Files": [
            {
                "lfn": "user.testuser.direct.log.tgz",
                "type": "log",
                "dataset": "user.testuser.direct/",
                "destinationDBlock": "user.testuser.direct/",
            }
        ],
    }
    status, stored = user("submitJobs", job_specs=[spec])
    assert status == 0
    ((panda_id, definition_id, extra),) = stored
    assert (definition_id, extra) == (0, {"jobsetID": panda_id})

    status, (record,) = user("getJobStatus", [panda_id])
    assert status == 0
    assert (record["jobName"], record["jobStatus"], record["currentPriority"]) == (
        "compat.direct.1",
        "activated",
        900,
    )
    # panda-client reads the server's nulls back as its own "NULL" marker.
    assert record["homepackage"] == "NULL"
    assert [file["lfn"] for file in record["Files"]] == ["user.testuser.direct.log.tgz"]

    # Debug mode needs the production role; Bamboo answers success when the job is in the mode asked.
    assert user("setDebugMode", panda_id, True, False) == FAILED
    assert operator("setDebugMode", panda_id, True, False) == [0, None]
    status, (record,) = user("getJobStatus", [panda_id])
    assert "debug" in record["specialHandling"].split(",")

    # A production manager may not kill a user's job; its owner may.
    assert operator("killJobs", [panda_id]) == [0, [False]]
    assert user("killJobs", [panda_id]) == [0, [True]]
    status, (record,) = user("getFullJobStatus", [panda_id])
    assert (status, record["jobStatus"]) == (0, "cancelled")


def test_task_commands_recovery_events_and_workflows(deployment: Deployment) -> None:
    user, operator = deployment.user, deployment.operator
    task_id = submit(deployment, "compat.commands")
    deployment.job_ids(task_id, 2)
    status = deployment.task_status(task_id)
    assert status in ACTIVE

    # reload_input is for the owner; Bamboo refuses it while the task is still running its input.
    assert user("reload_input", task_id) == [
        0,
        [False, f"Command rejected: the incexec command is not accepted if the task is in {status} status "],
    ]
    assert user("increase_attempt_nr", task_id, 2) == [0, [False, "production or pilot role required"]]
    assert operator("increase_attempt_nr", task_id, 2) == [0, [True, 0]]

    status, (accepted, answer) = user("send_file_recovery_request", task_id, True)
    assert (status, accepted) == (0, True)
    assert answer["logFileURL"].startswith(f"{deployment.server.https}/cache/jedilog/lost_file_recovery.")

    # update_events sends the ranges as a JSON list (the server's own signature says a string);
    # an unknown range is answered False in panda-client's Returns.
    range_id = f"{task_id}-1-1-1-1"
    status, answer = operator("update_events", [{"eventRangeID": range_id, "eventStatus": "finished"}])
    assert (status, answer["StatusCode"], answer["Returns"]) == (0, 0, [False])
    assert user("update_events", [{"eventRangeID": range_id, "eventStatus": "finished"}]) == FAILED

    status, (accepted, first) = user("submit_workflow", {"name": "compat.workflow", "language": "cwl"})
    assert (status, accepted) == (0, True)
    # submit_workflow_tmp posts a URL-encoded form without a content type and returns the raw reply.
    status, raw = user("submit_workflow_tmp", {"name": "compat.workflow.tmp", "language": "cwl"})
    assert (status, raw["success"], raw["message"]) == (0, True, "")
    assert raw["data"]["workflow_id"] > first["workflow_id"]


# Client functions whose URL Bamboo does not serve: the server must keep refusing them until it
# serves them, or coverage.py would list a served call as not covered.
UNSERVED = [
    ("get_workflow_details", [1], FAILED),
]


@pytest.mark.parametrize(("function", "args", "answer"), UNSERVED)
def test_unserved_client_calls_fail_as_panda_client_reads_them(
    deployment: Deployment, function: str, args: list[Any], answer: Any
) -> None:
    assert deployment.user(function, *args) == answer


def test_legacy_calls_as_panda_client_makes_them(deployment: Deployment) -> None:
    user = deployment.user
    # Without an iDDS behind it the relay answers the [success, message] pair the client reads.
    no_idds = [0, [False, "iDDS is not configured"]]
    assert user("call_idds_command", "get_requests", kwargs={"request_id": 1}) == no_idds
    assert user("call_idds_user_workflow_command", "get_status", {"request_id": 1}) == no_idds
    # pchain's gzip JSON request: a check answers the verdict, a submission the refusal.
    status, (accepted, verdict) = user("send_workflow_request", {"name": "wf"}, check=True)
    assert (status, accepted, verdict["valid"]) == (0, True, False)
    assert verdict["error"].startswith("the workflow has no 'steps'")
    status, (accepted, message) = user("send_workflow_request", {"name": "wf"})
    assert (status, accepted) == (0, False)
    assert message.startswith("Cannot upload the workflow request: the workflow has no 'steps'")
