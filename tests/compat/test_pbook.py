"""pbook 2.2.0 commands that tests/e2e does not run yet, in batch mode against one real server.

pbook prints its results and logs (its exit code is 0 whatever happened), so each test reads what
pbook wrote: the rows of its tables, its INFO and ERROR lines, or the file it was asked to write.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.compat.test_panda_client import acquire, finish_job, submit
from tests.e2e.conftest import CALL_SECONDS, Deployment, PandaClient
from tests.e2e.test_task_commands_clients import shown

pytestmark = pytest.mark.e2e


def pbook(client: PandaClient, *args: str) -> str:
    """pbook run as ``client``'s user would run it; everything it wrote."""
    result = subprocess.run(
        [sys.executable, "-c", "import pandaclient.PBookScript as pbook; pbook.main()", *args],
        # Wide enough that rich prints each table row on one line.
        env={**client.env, "COLUMNS": "400"},
        capture_output=True,
        text=True,
        timeout=CALL_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def run_task(deployment: Deployment, name: str, metadata: dict[str, int]) -> tuple[int, list[int]]:
    """A task whose two jobs finish (it ends ``done``); its ID and its job IDs."""
    task_id = submit(deployment, name)
    job_ids = sorted(deployment.job_ids(task_id, 2))
    for job in acquire(deployment, task_id, 2):
        finish_job(deployment, job, metadata)
    deployment.wait_task(task_id, "done")
    return task_id, job_ids


def test_show_variants(deployment: Deployment) -> None:
    user = deployment.user
    done_id, _ = run_task(deployment, "pbook.done", {"n": 1})
    active_id = submit(deployment, "pbook.active")
    deployment.job_ids(active_id, 2)

    # Other tests of the module may have tasks too: each view must show one task and not the other.
    running = shown(pbook(user, "show", "run"))
    assert running[active_id] == (deployment.task_status(active_id), "user.testuser.pbook.active/")
    assert done_id not in running
    finished = shown(pbook(user, "show", "fin"))
    assert finished[done_id] == ("done", "user.testuser.pbook.done/") and active_id not in finished
    for done_filter in ("--status=done", "status=done"):  # the second is pbook's legacy k=v form
        rows = shown(pbook(user, "show", done_filter))
        assert done_id in rows and active_id not in rows
    assert set(shown(pbook(user, "show", "--taskname=user.testuser.pbook.active/"))) == {active_id}

    # The long format adds dates, the reqID, progress and the file counts to each row.
    (row,) = [
        line.split()
        for line in pbook(user, "showl", str(done_id)).splitlines()
        if line.split()[:1] == [str(done_id)]
    ]
    assert (row[1], row[-3], row[-2]) == ("done", "2|0|2", "user.testuser.pbook.done/"), row
    # The plain format is one "attribute value" row per attribute.
    lines = pbook(user, "show", str(done_id), "--format=plain").splitlines()
    plain = dict(line.split() for line in lines if len(line.split()) == 2)
    assert (plain["jeditaskid"], plain["status"], plain["taskname"]) == (
        str(done_id),
        "done",
        "user.testuser.pbook.done/",
    )


def test_job_metadata_reload_input_and_recovery(deployment: Deployment, tmp_path: Path) -> None:
    user = deployment.user
    task_id, job_ids = run_task(deployment, "pbook.meta", {"events": 7})

    target = tmp_path / "metadata.json"
    output = pbook(user, "get_user_job_metadata", str(task_id), str(target))
    assert f"dumped to {target}" in output
    assert json.loads(target.read_text()) == {str(job_id): {"events": 7} for job_id in job_ids}

    output = pbook(user, "recover_lost_files", str(task_id), "--test_mode")
    assert "Sending recovery request ..." in output and "ERROR" not in output, output

    output = pbook(user, "reload_input", str(task_id))
    assert f"command is registered for task {task_id} and will be executed in a few minutes" in output, output


def test_kill_all_and_soft_finish(deployment: Deployment) -> None:
    user = deployment.user
    first = submit(deployment, "pbook.all.1")
    second = submit(deployment, "pbook.all.2")
    deployment.job_ids(second, 2)
    output = pbook(user, "kill", "all")
    for task_id in (first, second):
        assert f"Done, jediTaskID={task_id} will be killed within the next 30 min" in output, output
        deployment.wait_task(task_id, "aborted")

    # One job finished, one queued: a soft finish cancels the queued one and the task is finished.
    soft = submit(deployment, "pbook.soft")
    deployment.job_ids(soft, 2)
    (job,) = acquire(deployment, soft, 1)
    finish_job(deployment, job, {})
    output = pbook(user, "finish", str(soft), "--soft")
    assert f"Done, jediTaskID={soft} will be finished soon" in output, output
    deployment.wait_task(soft, "finished")


def test_debug_needs_the_production_role(deployment: Deployment) -> None:
    task_id = submit(deployment, "pbook.debug")
    panda_id = deployment.job_ids(task_id, 2)[0]
    refused = pbook(deployment.user, "debug", str(panda_id), "True")
    assert f"Failed to set debug mode for {panda_id}" in refused, refused
    accepted = pbook(deployment.operator, "debug", str(panda_id), "True")
    assert "ERROR" not in accepted, accepted
    status, (record,) = deployment.user("getJobStatus", [panda_id])
    assert (status, "debug" in record["specialHandling"].split(",")) == (0, True)


# pbook's iDDS workflow commands go to the legacy execute_idds_workflow_command, which relays to
# an iDDS Bamboo has none of; show_native_workflow asks workflow/get_workflow_details, which Bamboo
# does not serve (coverage.py). pbook must say the command failed.
@pytest.mark.parametrize(
    ("args", "failure"),
    [
        (["show_native_workflow", "1"], "Failed to get workflow_id=1"),
        (["show_workflow", "1"], "Failed to execute get_status"),
        (["kill_workflow", "1"], "Failed to execute abort"),
        (["retry_workflow", "1"], "Failed to execute retry"),
        (["finish_workflow", "1"], "Failed to execute finish"),
        (["pause_workflow", "1"], "Failed to execute suspend"),
        (["resume_workflow", "1"], "Failed to execute resume"),
    ],
)
def test_workflow_commands_fail_visibly(deployment: Deployment, args: list[str], failure: str) -> None:
    output = pbook(deployment.user, *args)
    assert failure in output, output
    if args[0] != "show_native_workflow":
        assert "iDDS is not configured" in output, output
