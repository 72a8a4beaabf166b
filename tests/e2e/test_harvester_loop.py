"""Harvester's whole loop against the real server process over HTTPS, with its exact calls and field
names (clients.md §3.2): heartbeat, worker ids, worker statistics, target slots, jobs fetched for
workers, worker updates with their jobs, job updates in bulk, and a sweep command acquired and
acknowledged. A worker reported failed fails the job it runs; target slots steer dispatch.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.e2e.conftest import HARVESTER_ID, Deployment, wait_for
from tests.tasks import NO_INPUT_TASK, QUEUE

pytestmark = pytest.mark.e2e


def _stamp() -> str:
    """A datetime as Harvester's communicator sends it."""
    return "datetime/" + datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _call(deployment: Deployment, method: str, path: str, **params: Any) -> dict[str, Any]:
    http = deployment.harvester.http
    response = http.get(path, params=params) if method == "GET" else http.post(path, json=params)
    assert response.status_code == 200, response.text
    return response.json()


def _fetch(deployment: Deployment, worker_id: int) -> dict[str, Any]:
    """One job for one worker, as a pilot inside a Harvester worker asks for it."""

    def probe() -> dict[str, Any]:
        return _call(
            deployment,
            "POST",
            "/pilot/acquire_jobs",
            site_name=QUEUE,
            node=f"wn{worker_id:02d}",
            prod_source_label="user",
            n_jobs=1,
            harvester_id=HARVESTER_ID,
            worker_id=worker_id,
        )

    body = wait_for(f"a job for worker {worker_id}", probe, lambda got: got["data"] is not None)
    (job,) = body["data"]["jobs"]
    return job


def _worker(worker_id: int, status: str, panda_ids: list[int], **extra: Any) -> dict[str, Any]:
    return {
        "workerID": worker_id,
        "batchID": f"batch.{worker_id}",
        "queueName": QUEUE,
        "status": status,
        "computingSite": QUEUE,
        "nCore": 1,
        "nodeID": f"wn{worker_id:02d}",
        "submitTime": _stamp(),
        "startTime": _stamp(),
        "endTime": None,
        "jobType": "user",
        "resourceType": "SCORE",
        "nativeExitCode": None,
        "nativeStatus": status,
        "diagMessage": "",
        "nJobs": len(panda_ids),
        "computingElement": "ce01.example.org",
        "syncLevel": 1,
        "submissionHost": "submit01",
        "harvesterHost": "harvester01",
        "errorCode": 0,
        "minRamCount": 2000,
        "pandaid_list": panda_ids,
        "stdOut": f"https://logs.example.org/{worker_id}.out",
        "stdErr": f"https://logs.example.org/{worker_id}.err",
        "batchLog": f"https://logs.example.org/{worker_id}.log",
        "jdl": None,
        **extra,
    }


def test_harvester_loop(deployment: Deployment) -> None:
    heartbeat = _call(
        deployment,
        "POST",
        "/harvester/heartbeat",
        harvester_id=HARVESTER_ID,
        data={"startTime": _stamp(), "sw_version": "0.5.12", "commit_stamp": "e2e"},
    )
    assert heartbeat["success"] is True, heartbeat
    assert _call(deployment, "GET", "/harvester/get_current_worker_id", harvester_id=HARVESTER_ID) == {
        "success": True,
        "message": "",
        "data": 0,
    }
    statistics = {"user": {"SCORE": {"submitted": 2, "running": 0}}}
    reported = _call(
        deployment,
        "POST",
        "/harvester/report_worker_statistics",
        harvester_id=HARVESTER_ID,
        panda_queue=QUEUE,
        statistics=json.dumps(statistics),
    )
    assert (reported["success"], reported["message"]) == (True, "OK"), reported
    shown = _call(deployment, "GET", "/harvester/get_worker_statistics")["data"]
    assert shown[QUEUE][HARVESTER_ID] == statistics

    task_id = deployment.submit(NO_INPUT_TASK)
    deployment.job_ids(task_id, 2)
    # No slots at the queue: its jobs wait however often Harvester asks.
    closed = _call(deployment, "POST", "/harvester/add_target_slots", panda_queue=QUEUE, slots=0)
    assert closed["success"] is True, closed
    assert closed["message"] == f"set numSlots=0 for PQ={QUEUE} gshare=None resource=None"
    for _ in range(3):
        assert deployment.harvester.get_jobs(2) == []
    reopened = _call(deployment, "POST", "/harvester/add_target_slots", panda_queue=QUEUE, slots=-1)
    assert reopened["success"] is True, reopened

    first, second = _fetch(deployment, 1), _fetch(deployment, 2)
    assert {first["taskID"], second["taskID"]} == {task_id}
    updated = _call(
        deployment,
        "POST",
        "/harvester/update_workers",
        harvester_id=HARVESTER_ID,
        workers=[_worker(1, "running", [first["PandaID"]]), _worker(2, "running", [second["PandaID"]])],
    )
    assert updated == {"success": True, "message": "", "data": [True, True]}
    assert (
        _call(deployment, "GET", "/harvester/get_current_worker_id", harvester_id=HARVESTER_ID)["data"] == 2
    )

    # The first worker's job runs to the end through update_jobs_bulk.
    deployment.harvester.run(first)

    # The second worker dies under its running job: the job fails at once, with code 300.
    common = {
        "job_id": second["PandaID"],
        "site_name": QUEUE,
        "attempt_nr": second["attemptNr"],
        "node": "wn02",
    }
    running = deployment.harvester.update_jobs([{**common, "job_status": "running", "core_count": 1}])
    assert running == [{"StatusCode": 0, "command": "NULL"}]
    died = _worker(
        2, "failed", [second["PandaID"]], diagMessage="killed by the batch system", nativeExitCode=137
    )
    updated = _call(
        deployment, "POST", "/harvester/update_workers", harvester_id=HARVESTER_ID, workers=[died]
    )
    assert updated["data"] == [True], updated
    statuses = wait_for(
        f"job {second['PandaID']} failing with its worker",
        lambda: deployment.harvester.check_jobs([second["PandaID"]]),
        lambda got: got[0]["status"] not in ("running", "holding"),
    )
    # A pilot still alive somewhere in the dead worker is told to stop.
    assert statuses == [{"status": "failed", "command": "tobekilled"}]
    status, (record,) = deployment.user("getJobStatus", [second["PandaID"]])
    assert status == 0
    assert record["taskBufferErrorCode"] == 300, record
    assert record["taskBufferErrorDiag"].startswith("The worker was failed while the job was running"), record

    # A sweep for the queue reaches this instance, the one that reported its workers.
    swept = _call(
        deployment,
        "POST",
        "/harvester/add_sweep_command",
        panda_queue=QUEUE,
        status_list=["submitted", "running"],
        ce_list=[],
        submission_host_list=["submit01"],
    )
    assert swept == {"success": True, "message": "", "data": None}, swept
    commands = _call(
        deployment, "POST", "/harvester/acquire_commands", harvester_id=HARVESTER_ID, n_commands=10
    )
    (command,) = commands["data"]
    assert command["command"] == "KILL_WORKERS"
    assert command["params"]["computingSite"] == [QUEUE]
    assert command["params"]["status"] == ["submitted", "running"]
    assert command["params"]["submissionHost"] == ["submit01"]
    acknowledged = _call(
        deployment, "POST", "/harvester/acknowledge_commands", command_ids=[command["command_id"]]
    )
    assert acknowledged == {"success": True, "message": "", "data": None}
    again = _call(deployment, "POST", "/harvester/acquire_commands", harvester_id=HARVESTER_ID, n_commands=10)
    assert again == {"success": True, "message": "", "data": []}
