"""The real panda-client's ``prun`` and ``pbook`` against ``bamboo serve``, with ``bamboo worker``
running the jobs: the tutorial (docs/tutorial.md) as a test.

prun packs the user's directory, uploads it to the file cache and submits the task without naming
a transformation; Bamboo points the jobs at its own runGen/buildGen (/trf/user/), the worker
downloads and runs them, and ``bamboo data get`` brings the outputs back.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import BAMBOO, Deployment, wait_for
from tests.tasks import QUEUE

pytestmark = pytest.mark.e2e

PANDA_CLIENT_SECONDS = 120
TASK_SECONDS = 120
_NEW_TASK = re.compile(r"succeeded\. new jediTaskID=(\d+)")

ANALYSIS = """import sys

total = 0
for name in sys.argv[1].split(","):
    with open(name) as numbers:
        total += sum(int(line) for line in numbers)
print(total)
"""


def panda_tool(deployment: Deployment, tool: str, *args: str, cwd: Path) -> str:
    """Run one of panda-client's commands (its bash wrapper, as a user types it)."""
    env = {**deployment.user.env, "PANDA_SYS": sys.prefix, "VIRTUAL_ENV": sys.prefix}
    result = subprocess.run(
        [str(Path(sys.prefix) / "bin" / tool), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=PANDA_CLIENT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, f"{tool} {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def prun(deployment: Deployment, code: Path, *args: str) -> int:
    output = panda_tool(deployment, "prun", *args, "--vo", "bamboo", cwd=code)
    match = _NEW_TASK.search(output)
    assert match, output
    return int(match.group(1))


@pytest.fixture
def worker(deployment: Deployment, tmp_path: Path) -> Iterator[Path]:
    """``bamboo worker`` on the deployment's queue; its payloads trust the server's CA."""
    server = deployment.server
    log = tmp_path / "worker.log"
    with log.open("ab") as output:
        process = subprocess.Popen(
            [
                *BAMBOO,
                "worker",
                "--queue",
                QUEUE,
                "--slots",
                "2",
                "--url",
                server.https,
                "--home",
                str(server.home),
                "--work-dir",
                str(tmp_path / "work"),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "SSL_CERT_FILE": server.ca, "BAMBOO_WORKER_POLL_SECONDS": "0.2"},
        )
    yield log
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0, log.read_text()


def wait_done(deployment: Deployment, task_id: int, worker_log: Path) -> None:
    status = wait_for(
        f"task {task_id} to end",
        lambda: deployment.task_status(task_id),
        lambda got: got in ("done", "finished", "failed", "broken"),
        TASK_SECONDS,
    )
    assert status == "done", worker_log.read_text()


def fetched(deployment: Deployment, dataset: str, to: Path) -> dict[str, str]:
    deployment.server.admin("data", "get", dataset, "--to", str(to))
    return {path.name: path.read_text() for path in sorted(to.iterdir())}


def test_prun_over_an_uploaded_dataset_builds_runs_and_returns_the_outputs(
    deployment: Deployment, worker: Path, tmp_path: Path
) -> None:
    server = deployment.server
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for count in (1, 2, 3):
        (inputs / f"numbers.{count}.txt").write_text("".join(f"{n}\n" for n in range(1, count + 1)))
    server.admin("data", "upload", "user.testuser.numbers.v1", *map(str, sorted(inputs.iterdir())))
    code = tmp_path / "code"
    code.mkdir()
    (code / "ana.py").write_text(ANALYSIS)

    task_id = prun(
        deployment,
        code,
        "--exec",
        "python3 ana.py %IN > sum.txt",
        "--inDS",
        "user.testuser.numbers.v1",
        "--outDS",
        "user.testuser.sum.v1/",
        "--outputs",
        "sum.txt",
        "--nFilesPerJob",
        "2",
    )
    wait_done(deployment, task_id, worker)

    shown = panda_tool(deployment, "pbook", "show", str(task_id), cwd=code)
    assert re.search(rf"{task_id}\s+{task_id}\s+done\s+100%\s+user\.testuser\.sum\.v1/", shown), shown
    status, job_ids = deployment.user("getPandaIDsWithTaskID", task_id)
    assert status == 0
    status, jobs = deployment.user("getJobStatus", job_ids)
    assert status == 0
    # One build job (label panda, buildGen) made the lib the two run jobs (runGen) unpacked.
    assert sorted((job["prodSourceLabel"], job["transformation"], job["jobStatus"]) for job in jobs) == [
        ("panda", f"{server.https}/trf/user/buildGen-00-00-01", "finished"),
        ("user", f"{server.https}/trf/user/runGen-00-00-02", "finished"),
        ("user", f"{server.https}/trf/user/runGen-00-00-02", "finished"),
    ]
    # numbers.1 + numbers.2 = 1 + (1 + 2); numbers.3 = 1 + 2 + 3
    assert fetched(deployment, "user.testuser.sum.v1_sum.txt/", tmp_path / "out") == {
        f"user.testuser.{task_id}._000001.sum.txt": "4\n",
        f"user.testuser.{task_id}._000002.sum.txt": "6\n",
    }


def test_prun_without_input_runs_n_jobs_with_sequence_numbers(
    deployment: Deployment, worker: Path, tmp_path: Path
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "greet.sh").write_text('echo "hello from job $PandaID with number $1"\n')

    task_id = prun(
        deployment,
        code,
        "--exec",
        "sh greet.sh %RNDM:10 > hello.txt",
        "--outDS",
        "user.testuser.hello.v1/",
        "--outputs",
        "hello.txt",
        "--nJobs",
        "2",
        "--noBuild",
    )
    wait_done(deployment, task_id, worker)

    status, job_ids = deployment.user("getPandaIDsWithTaskID", task_id)
    assert status == 0 and len(job_ids) == 2
    outputs = fetched(deployment, "user.testuser.hello.v1_hello.txt/", tmp_path / "out")
    assert sorted(outputs) == [f"user.testuser.{task_id}._00000{serial}.hello.txt" for serial in (1, 2)]
    said = [re.fullmatch(r"hello from job (\d+) with number (\d+)\n", text) for text in outputs.values()]
    assert all(said), outputs
    assert sorted(int(match.group(1)) for match in said) == sorted(job_ids)
    assert sorted(int(match.group(2)) for match in said) == [11, 12]
