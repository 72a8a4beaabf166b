"""Task commands from the real panda-client 2.2.0 and pbook against the real server process.

Each command's effect is read back through the API (task and job statuses, task records) while the
commando agent executes it; a Harvester-like resource side runs the jobs. The user's panda-client
owns the tasks; the commands only a production manager may send go through a second panda-client
holding a production token. Both databases, as in test_real_clients.py.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from tests.e2e.conftest import CALL_SECONDS, Deployment, wait_for
from tests.tasks import NO_INPUT_TASK, QUEUE, input_task

pytestmark = pytest.mark.e2e

INPUT = "user.testuser.input.v1"
# The statuses of a task making or running jobs (scouting until its first jobs succeed).
ACTIVE = {"ready", "scouting", "running"}
REGISTERED = "command={} is registered for task ID {}. will be executed in a few minutes"
# An accepted command through panda-client's "extended" output: (0, (success, data = code 0)).
ACCEPTED = [0, [True, 0]]
PRODUCTION_REQUIRED = [0, [False, "production or pilot role required"]]


def named(params: dict[str, Any], name: str) -> dict[str, Any]:
    """The same task under another name, so that one deployment can run several."""
    return {**params, "taskName": f"user.testuser.{name}/"}


def register_input(deployment: Deployment) -> list[str]:
    """Four files in INPUT; their LFNs."""
    lfns = [f"data.{i:02d}.root" for i in range(4)]
    deployment.register_dataset(INPUT, [f"{lfn}:{1000 + i}:100" for i, lfn in enumerate(lfns)])
    return lfns


def rejected(command: str, status: str) -> str:
    # Upstream's message, trailing space included.
    return f"Command rejected: the {command} command is not accepted if the task is in {status} status "


def reactivation(task_id: int, status: str) -> str:
    """The answer to a retry with new parameters (code 3)."""
    return (
        f"reactivation accepted. jediTaskID={task_id} (currently in {status} state) "
        "will be re-executed with old and/or new input"
    )


def job_statuses(deployment: Deployment, job_ids: list[int]) -> list[str]:
    return [record["status"] for record in deployment.harvester.check_jobs(job_ids)]


def wait_jobs(deployment: Deployment, job_ids: list[int], statuses: list[str]) -> None:
    wait_for(
        f"jobs {job_ids} {statuses}",
        lambda: job_statuses(deployment, job_ids),
        lambda got: got == statuses,
    )


def heartbeat(deployment: Deployment, job: dict[str, Any]) -> dict[str, Any]:
    """A running job's update, as the pilot sends it through Harvester; returns the server's reply."""
    (reply,) = deployment.harvester.update_jobs(
        [
            {
                "job_id": job["PandaID"],
                "site_name": QUEUE,
                "attempt_nr": job["attemptNr"],
                "job_status": "running",
                "job_sub_status": "running",
                "node": "wn01",
            }
        ]
    )
    return reply


def task_record(deployment: Deployment, task_id: int) -> dict[str, Any]:
    status, records = deployment.user("get_tasks_detailed_info_since", filters={"jediTaskID": str(task_id)})
    assert status == 0, records
    (record,) = records
    return record


def input_files(jobs: list[dict[str, Any]]) -> list[list[str]]:
    return sorted(job["inFiles"].split(",") for job in jobs)


def test_kill_soft_finish_and_hard_finish(deployment: Deployment) -> None:
    user, harvester = deployment.user, deployment.harvester
    killed_id = deployment.submit(named(NO_INPUT_TASK, "killed"))
    killed_jobs = sorted(deployment.job_ids(killed_id, 2))
    (running,) = harvester.acquire(1)
    assert heartbeat(deployment, running) == {"StatusCode": 0, "command": "NULL"}
    assert user("killTask", killed_id) == ACCEPTED
    deployment.wait_task(killed_id, "aborted")
    assert job_statuses(deployment, killed_jobs) == ["cancelled", "cancelled"]
    # The pilot still running a job of the task is told to stop it; nothing is left to dispatch.
    assert heartbeat(deployment, running)["command"] == "tobekilled"
    assert harvester.get_jobs(2) == []
    status, (accepted, message) = user("killTask", killed_id)
    assert (status, accepted, message) == (0, False, rejected("kill", "aborted"))

    soft_id = deployment.submit(named(NO_INPUT_TASK, "soft"))
    soft_jobs = sorted(deployment.job_ids(soft_id, 2))
    (running,) = harvester.acquire(1)
    assert heartbeat(deployment, running) == {"StatusCode": 0, "command": "NULL"}
    queued = next(job_id for job_id in soft_jobs if job_id != running["PandaID"])
    assert user("finishTask", soft_id, soft=True) == ACCEPTED
    # Only the queued job is cancelled; the task waits for the running one, which may go on.
    wait_jobs(deployment, [queued], ["cancelled"])
    assert deployment.task_status(soft_id) == "finishing"
    assert heartbeat(deployment, running) == {"StatusCode": 0, "command": "NULL"}
    harvester.run(running)
    deployment.wait_task(soft_id, "finished")
    record = task_record(deployment, soft_id)
    assert (record["nFilesFinished"], record["nFilesFailed"]) == (1, 1)

    hard_id = deployment.submit(named(NO_INPUT_TASK, "hard"))
    deployment.job_ids(hard_id, 2)
    done, running = harvester.acquire(2)
    harvester.run(done)
    assert heartbeat(deployment, running) == {"StatusCode": 0, "command": "NULL"}
    assert user("finishTask", hard_id) == ACCEPTED
    # A hard finish does not wait: the running job is killed.
    deployment.wait_task(hard_id, "finished")
    assert job_statuses(deployment, [done["PandaID"], running["PandaID"]]) == ["finished", "cancelled"]
    assert heartbeat(deployment, running)["command"] == "tobekilled"
    status, (accepted, message) = user("finishTask", hard_id)
    assert (status, accepted, message) == (0, False, rejected("finish", "finished"))


def test_pause_resume_priority_retry_with_new_parameters_and_reactivate(deployment: Deployment) -> None:
    user, operator, harvester = deployment.user, deployment.operator, deployment.harvester
    lfns = register_input(deployment)
    params = input_task(INPUT, "user.testuser.ana.v1", 2)
    task_id = deployment.submit(params)
    job_ids = sorted(deployment.job_ids(task_id, 2))

    status, stored = user("getTaskParamsMap", task_id)
    assert status == 0
    assert {key: stored[key] for key in params} == params
    assert stored["userName"] == "Test User"
    status, datasets = user("get_files_in_datasets", task_id)
    assert status == 0
    assert [(entry["dataset"]["name"], [file["lfn"] for file in entry["files"]]) for entry in datasets] == [
        (INPUT, lfns)
    ]
    status, outputs = user("get_files_in_datasets", task_id, "output,log")
    assert status == 0
    assert sorted(entry["dataset"]["name"] for entry in outputs) == [
        "user.testuser.ana.v1.log/",
        "user.testuser.ana.v1_out/",
    ]

    # Pausing and resuming need the production role, which the task's owner does not have.
    assert user("pauseTask", task_id) == PRODUCTION_REQUIRED
    before = deployment.task_status(task_id)
    assert operator("pauseTask", task_id) == ACCEPTED
    deployment.wait_task(task_id, "paused")
    wait_jobs(deployment, job_ids, ["throttled", "throttled"])
    assert harvester.get_jobs(2) == []
    # panda-client 2.2.0 has no call for task/change_priority; a production manager posts it.
    response = harvester.http.post("/task/change_priority", json={"task_id": task_id, "priority": 2000})
    assert response.json() == {"success": True, "message": "1 tasks changed", "data": None}
    assert task_record(deployment, task_id)["currentPriority"] == 2000
    status, jobs = user("getJobStatus", job_ids)
    assert (status, [job["currentPriority"] for job in jobs]) == (0, [2000, 2000])
    assert operator("resumeTask", task_id) == ACCEPTED
    deployment.wait_task(task_id, before)
    done, cancelled = sorted(harvester.acquire(2), key=lambda job: job["PandaID"])
    assert [done["PandaID"], cancelled["PandaID"]] == job_ids
    assert {done["currentPriority"], cancelled["currentPriority"]} == {2000}
    assert input_files([done, cancelled]) == [lfns[:2], lfns[2:]]

    harvester.run(done)
    assert user("finishTask", task_id) == ACCEPTED
    deployment.wait_task(task_id, "finished")
    status, (code, message) = user("retryTask", task_id, newParams={"nFilesPerJob": 1})
    assert (status, code, message) == (0, 3, reactivation(task_id, "finished"))
    status, stored = user("getTaskParamsMap", task_id)
    assert (status, stored["nFilesPerJob"]) == (0, 1)
    # The inputs of the cancelled job are processed again, one file per job now.
    retried = harvester.acquire(2)
    assert input_files(retried) == [[lfns[2]], [lfns[3]]]
    assert deployment.task_status(task_id) in ACTIVE
    for job in retried:
        harvester.run(job)
    deployment.wait_task(task_id, "done")
    assert sorted(deployment.job_ids(task_id, 4)) == sorted([*job_ids, *(job["PandaID"] for job in retried)])

    # Reactivating needs the production role too; then every input is processed again from scratch.
    assert user("reactivateTask", task_id) == PRODUCTION_REQUIRED
    assert operator("reactivateTask", task_id) == ACCEPTED
    again = harvester.acquire(4)
    assert input_files(again) == [[lfn] for lfn in lfns]
    assert {job["attemptNr"] for job in again} == {1}
    assert deployment.task_status(task_id) in ACTIVE


def pbook(deployment: Deployment, *args: str) -> str:
    """Run pbook in batch mode as its user would, with panda-client's environment; its output."""
    result = subprocess.run(
        [sys.executable, "-c", "import pandaclient.PBookScript as pbook; pbook.main()", *args],
        env=deployment.user.env,
        capture_output=True,
        text=True,
        timeout=CALL_SECONDS,
        check=False,
    )
    # pbook's batch mode exits 0 whether or not the command worked: its log lines tell.
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result.stdout


def shown(output: str) -> dict[int, tuple[str, str]]:
    """jediTaskID -> (status, taskName) from the rows of pbook's standard ``show`` table."""
    rows = {}
    for line in output.splitlines():
        fields = line.split()
        if len(fields) == 5 and fields[0].isdigit():
            rows[int(fields[0])] = (fields[2], fields[4])
    return rows


def test_pbook_show_kill_finish_and_retry(deployment: Deployment) -> None:
    harvester = deployment.harvester
    killed_id = deployment.submit(named(NO_INPUT_TASK, "killed"))
    deployment.job_ids(killed_id, 2)
    lfns = register_input(deployment)
    finished_id = deployment.submit(input_task(INPUT, "user.testuser.ana.v1", 2))
    deployment.job_ids(finished_id, 2)

    output = pbook(deployment, "show")
    assert "PBook user: Test User" in output
    rows = shown(output)
    assert {task_id: name for task_id, (_, name) in rows.items()} == {
        killed_id: "user.testuser.killed/",
        finished_id: "user.testuser.ana.v1",
    }
    assert {status for status, _ in rows.values()} <= ACTIVE

    output = pbook(deployment, "kill", str(killed_id))
    assert f"INFO : Done, jediTaskID={killed_id} will be killed within the next 30 min" in output
    deployment.wait_task(killed_id, "aborted")
    assert shown(pbook(deployment, "show", str(killed_id))) == {
        killed_id: ("aborted", "user.testuser.killed/")
    }

    done, _ = sorted(harvester.acquire(2), key=lambda job: job["PandaID"])
    harvester.run(done)
    output = pbook(deployment, "finish", str(finished_id))
    assert f"INFO : Done, jediTaskID={finished_id} will be finished soon" in output
    deployment.wait_task(finished_id, "finished")

    # A retry without options must answer code 0; pbook calls any other code a failure.
    output = pbook(deployment, "retry", str(finished_id))
    assert f"INFO : {REGISTERED.format('retry', finished_id)}" in output
    (retried,) = harvester.acquire(1)
    assert input_files([retried]) == [lfns[2:]]
    assert heartbeat(deployment, retried) == {"StatusCode": 0, "command": "NULL"}
    pbook(deployment, "finish", str(finished_id))
    deployment.wait_task(finished_id, "finished")

    # With options the server must answer code 3 (new parameters accepted), or pbook reports failure.
    output = pbook(deployment, "retry", str(finished_id), "--nFilesPerJob=1")
    assert f"INFO : {reactivation(finished_id, 'finished')}" in output
    assert input_files(harvester.acquire(2)) == [[lfns[2]], [lfns[3]]]
    assert shown(pbook(deployment, "show"))[finished_id][0] in ACTIVE
