"""The built-in worker (`bamboo worker`) running real jobs against the real server.

Input files go in with `bamboo data upload`, the task runs a shell command on them, and its
outputs come back with `bamboo data get`; a worker killed with SIGKILL mid-job loses the job to the
heartbeat watchdog, which fails it, and a retry on another worker ends the task done.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import BAMBOO, Deployment, RunningServer, wait_for
from tests.tasks import QUEUE

pytestmark = pytest.mark.e2e

# The heartbeat watchdog gives up on a silent job after 3 s and looks every second.
FAST_WATCHDOG = {"BAMBOO_JOB_HEARTBEAT_TIMEOUT_MINUTES": "0.05", "BAMBOO_JOB_WATCHDOG_PERIOD_SECONDS": "1"}
WORKER_ENV = {"BAMBOO_WORKER_POLL_SECONDS": "0.2", "BAMBOO_WORKER_HEARTBEAT_SECONDS": "1"}


def start_worker(server: RunningServer, work_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        return subprocess.Popen(
            [
                *BAMBOO,
                "worker",
                "--queue",
                QUEUE,
                "--slots",
                "2",
                "--work-dir",
                str(work_dir),
                "--url",
                server.https,
                "--home",
                str(server.home),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, **WORKER_ENV},
        )


@pytest.fixture
def server_env() -> dict[str, str]:
    return FAST_WATCHDOG


@pytest.fixture
def worker_log(tmp_path: Path) -> Iterator[Path]:
    log = tmp_path / "worker.log"
    yield log


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return process.wait(timeout=30)


def shell_task(
    name: str, transformation: str, parameters: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    return {
        "taskName": name,
        "vo": "bamboo",
        "prodSourceLabel": "user",
        "site": QUEUE,
        "architecture": "",
        "transUses": "",
        "transPath": transformation,
        "processingType": "panda-client-2.2.0-jedi-run",
        "skipScout": True,
        "jobParameters": parameters,
        "log": {
            "type": "template",
            "param_type": "log",
            "dataset": f"{name}.log/",
            "value": f"{name}.log.$JEDITASKID.${{SN}}.log.tgz",
        },
        **extra,
    }


@pytest.mark.parametrize(
    "server_env", [{"BAMBOO_LOCAL_WORKER": "true", "BAMBOO_LOCAL_WORKER_QUEUE": QUEUE, **WORKER_ENV}]
)
def test_the_local_worker_runs_a_task_on_uploaded_data_and_its_outputs_come_back(
    deployment: Deployment, tmp_path: Path
) -> None:
    """`bamboo serve --local-worker` (here by its setting) runs the jobs with a `bamboo worker` child."""
    server = deployment.server
    sources = tmp_path / "sources"
    sources.mkdir()
    inputs = []
    for index in range(4):
        path = sources / f"part{index}.txt"
        path.write_text(f"line {index}\n")
        inputs.append(str(path))
    dataset = "user.testuser.worker.in"
    assert "4 files uploaded" in server.admin("data", "upload", dataset, *inputs)
    name = "user.testuser.worker.0001"
    params = shell_task(
        name,
        "/bin/sh",
        [
            {"type": "constant", "value": """-c 'cat "$@" > "$0"'"""},
            {
                "type": "template",
                "param_type": "output",
                "dataset": f"{name}_out/",
                "value": f"{name}._${{SN/P}}.txt",
            },
            {"type": "template", "param_type": "input", "dataset": dataset, "value": "${IN/S}"},
        ],
        nFilesPerJob=2,
    )
    task_id = deployment.submit(params)
    deployment.wait_task(task_id, "done")
    fetched = tmp_path / "fetched"
    assert "2 of 2 files" in server.admin("data", "get", f"{name}_out/", "--to", str(fetched))
    contents = sorted(path.read_text() for path in fetched.iterdir())
    assert contents == ["line 0\nline 1\n", "line 2\nline 3\n"]
    # The log tarballs lie in the storage under the log dataset's scope (their registration is
    # checked by tests/api/test_worker_jobs.py).
    tarballs = sorted((server.home / "storage" / "user.testuser").glob(f"{name}.log.*.log.tgz"))
    assert len(tarballs) == 2
    with tarfile.open(tarballs[0]) as archive:
        names = {Path(member).name for member in archive.getnames()}
    assert {"payload.stdout", "payload.stderr", "worker.log"} <= names
    assert not list((server.home / "work").iterdir()), "sandboxes are removed"
    # Stopping the server stops its worker first, which kills its payload and still reports the job.
    deployment.submit(
        shell_task(
            f"{name}.sleep",
            "sleep",
            [{"type": "constant", "value": "61"}],
            noInput=True,
            nEvents=1,
            nEventsPerJob=1,
        )
    )
    wait_for("the payload to run", lambda: "".join(server.output), lambda text: "running 'sleep 61'" in text)
    assert server.stop() == 0
    output = "".join(server.output)
    stopped = re.search(r"job (\d+): failed: 1201 the worker was stopped", output)
    assert stopped, output
    assert f"job {stopped.group(1)} reported failed" in output, output


def test_a_job_of_a_killed_worker_is_retried_and_the_task_ends_done(
    deployment: Deployment, tmp_path: Path, worker_log: Path
) -> None:
    server = deployment.server
    marker = tmp_path / "first-attempt"
    payload_pid = tmp_path / "payload.pid"
    # The first attempt records its pid and sleeps; a later one finds the marker and succeeds.
    script = f"if [ -e {marker} ]; then exit 0; fi; touch {marker}; echo $$ > {payload_pid}; exec sleep 60"
    params = shell_task(
        "user.testuser.worker.0002",
        "/bin/sh",
        [{"type": "constant", "value": f"-c '{script}'"}],
        noInput=True,
        nEvents=1,
        nEventsPerJob=1,
    )
    task_id = deployment.submit(params)
    first = start_worker(server, tmp_path / "work1", worker_log)
    try:
        wait_for("the first attempt's payload", payload_pid.exists, bool)
        pid = int(wait_for("its pid", payload_pid.read_text, lambda text: text.endswith("\n")))
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    wait_for("the payload to die with its worker", lambda: _alive(pid), lambda alive: not alive, 10)
    second = start_worker(server, tmp_path / "work2", worker_log)
    try:
        deployment.wait_task(task_id, "done")
    finally:
        assert stop(second) == 0, worker_log.read_text()
    status, jobs = deployment.user("getFullJobStatus", deployment.job_ids(task_id, 2))
    assert status == 0
    outcomes = sorted((job["attemptNr"], job["jobStatus"], job["jobDispatcherErrorCode"]) for job in jobs)
    assert outcomes[0][1:] == ("failed", 100), outcomes
    assert outcomes[-1][1] == "finished", outcomes


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie waiting for a parent to reap it does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
