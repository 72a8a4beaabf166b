"""The real PanDA pilot from PyPI runs Bamboo's jobs: one without input, one reading a file from
Bamboo's local storage and writing its output there.

The pilot is ``panda-pilot`` as pinned in the test extras. Its wheel installs the ``pilot`` package
but not the launcher ``pilot.py`` that a pilot wrapper runs; that file is in the source
distribution of the same version, which the ``pilot_launcher`` fixture fetches once with pip.

The settings the pilot gets are the ones docs/architecture.md ("Running the PanDA pilot") gives a
user: a production token by file name, the queue and storage documents from Bamboo's
``/cache/schedconfig/``, the storage directory for inputs and outputs, the server's CA.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import ssl
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from bamboo.auth.local_issuer import LocalIssuer
from bamboo.logic.catalog import scope_of
from bamboo.storage.layout import deterministic_path
from tests.e2e.conftest import RunningServer, wait_for
from tests.tasks import QUEUE

pytestmark = pytest.mark.e2e

PILOT_VERSION = importlib.metadata.version("panda-pilot")
# The generic pilot runs a transformation only from these base URLs; with HARVESTER_WORKDIR set
# it copies the script of the same name from that directory instead of downloading it.
TRANSFORMATION_BASE = "http://pandaserver-doma.cern.ch:25080/trf/user"
PAYLOAD = "bamboo-e2e-payload"
PAYLOAD_SCRIPT = """#!/bin/sh
set -e
for arg in "$@"; do
  case "$arg" in
    --input=*) input="${arg#--input=}" ;;
    --output=*) output="${arg#--output=}" ;;
  esac
done
if [ -n "$output" ]; then tr a-z A-Z < "$input" > "$output"; fi
echo "payload done: $*"
"""
PILOT_SECONDS = 300
INPUT_DATASET = "user.testuser.pilot.input/"
INPUT_LFN = "words.txt"
INPUT_TEXT = b"hello from the local storage\n"


@pytest.fixture(scope="session")
def pilot_launcher() -> Path:
    """pilot.py of the installed panda-pilot version, from its source distribution (kept between runs)."""
    root = Path(tempfile.gettempdir()) / f"bamboo-tests-panda-pilot-{PILOT_VERSION}"
    launcher = root / "sdist" / f"panda-pilot-{PILOT_VERSION}" / "pilot.py"
    if launcher.exists():
        return launcher
    root.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as scratch:
        subprocess.run(
            [
                *(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"),
                *("--dest", scratch, f"panda-pilot=={PILOT_VERSION}"),
            ],
            check=True,
            timeout=300,
        )
        (archive,) = Path(scratch).glob("panda*pilot-*.tar.gz")
        with tarfile.open(archive) as sdist:
            sdist.extractall(Path(scratch) / "sdist", filter="data")
        try:
            (Path(scratch) / "sdist").rename(root / "sdist")
        except OSError:
            # A session running at the same time put its copy there first; both are the same.
            if not launcher.exists():
                raise
    assert launcher.exists(), f"no pilot.py in the sdist of panda-pilot {PILOT_VERSION}"
    return launcher


def token_issuer(server: RunningServer) -> LocalIssuer:
    """The server's token issuer in this process: tokens without a CLI start-up each."""
    issuer_url = httpx.get(f"{server.http}/.well-known/openid-configuration", timeout=10).json()["issuer"]
    return LocalIssuer.load_or_create(server.home, issuer_url)


class User:
    """The v1 calls a user makes, with a user token over HTTPS."""

    def __init__(self, server: RunningServer, token: str) -> None:
        self.http = httpx.Client(
            base_url=f"{server.https}/api/v1",
            # No idle connection left open: the server waits for those when it stops.
            headers={"Authorization": f"Bearer {token}", "Origin": "bamboo", "Connection": "close"},
            verify=ssl.create_default_context(cafile=server.ca),
            timeout=30,
        )

    def call(self, method: str, path: str, **params: Any) -> Any:
        if method == "GET":
            response = self.http.get(path, params=params)
        else:
            response = self.http.post(path, json=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["success"] is True, body
        return body["data"]

    def submit(self, params: dict[str, Any]) -> int:
        return self.call("POST", "/task/submit", task_parameters=params)

    def activated_jobs(self, task_id: int) -> list[dict[str, Any]]:
        def probe() -> list[dict[str, Any]]:
            job_ids = self.call("GET", "/task/get_job_ids", task_id=task_id)
            return self.call("POST", "/job/get_description", job_ids=job_ids) if job_ids else []

        return wait_for(
            f"activated jobs of task {task_id}",
            probe,
            lambda jobs: bool(jobs) and all(job["jobStatus"] == "activated" for job in jobs),
        )


def _task(name: str, job_parameters: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "taskName": f"user.testuser.{name}/",
        "vo": "bamboo",
        "prodSourceLabel": "user",
        "site": QUEUE,
        "architecture": "",
        "transUses": "",
        "transHome": None,
        "transPath": f"{TRANSFORMATION_BASE}/{PAYLOAD}",
        "processingType": "panda-client-2.2.0-jedi-run",
        "skipScout": True,
        "jobParameters": job_parameters,
        "log": {
            "type": "template",
            "param_type": "log",
            "dataset": f"user.testuser.{name}.log/",
            "value": f"user.testuser.{name}.log.$JEDITASKID.${{SN}}.log.tgz",
        },
        **extra,
    }


NO_INPUT = _task(
    "pilot.noinput",
    [{"type": "constant", "value": "--greeting=hello"}],
    noInput=True,
    nEvents=1,
    nEventsPerJob=1,
)
WITH_INPUT = _task(
    "pilot.input",
    [
        {"type": "template", "param_type": "input", "value": "--input=${IN}", "dataset": INPUT_DATASET},
        {
            "type": "template",
            "param_type": "output",
            "dataset": "user.testuser.pilot.input_out/",
            "value": "--output=user.testuser.pilot.$JEDITASKID._${SN/P}.txt",
        },
    ],
    nFilesPerJob=1,
)


def run_pilot(
    server: RunningServer, launcher: Path, work: Path, token_text: str
) -> subprocess.CompletedProcess[str]:
    """The pilot as a user on this machine starts it (docs/architecture.md), until it finds no job."""
    work.mkdir()
    # As `bamboo token issue --out` writes it: no newline, which would end up in curl's command line.
    token = work / "pilot-token"
    token.write_text(token_text)
    transformations = work / "transformations"
    transformations.mkdir()
    (transformations / PAYLOAD).write_text(PAYLOAD_SCRIPT)
    queuedata = f"{server.https}/cache/schedconfig/{{pandaqueue}}.all.json"
    storage = server.home / "storage"
    storage.mkdir(exist_ok=True)
    # The pilot's curl and Python both verify the server by X509_CERT_DIR: CAs under their hash names.
    certificates = work / "certificates"
    certificates.mkdir()
    (certificates / "bamboo-ca.pem").write_text(Path(server.ca).read_text())
    subprocess.run(["openssl", "rehash", str(certificates)], check=True, capture_output=True)
    steering = ("PANDA", "OIDC_", "X509_", "HARVESTER_", "PILOT_", "QUEUEDATA_", "STORAGEDATA_")
    inherited = {key: value for key, value in os.environ.items() if not key.startswith(steering)}
    env = {
        **inherited,
        "PANDA_AUTH_TOKEN": token.name,
        "PANDA_AUTH_DIR": f"{work}/",
        "PANDA_AUTH_ORIGIN": "bamboo.production",
        # The full-schedconfig source; unset, the pilot tries CRIC on the internet first.
        "LOCAL_AGIS_SCHEDCONF": queuedata.format(pandaqueue=QUEUE),
        "HARVESTER_WORKDIR": str(transformations),
        # Without it the pilot kills every process of this user whose parent is init.
        "PILOT_NOKILL": "1",
        "X509_CERT_DIR": str(certificates),
    }
    command = [
        *(sys.executable, str(launcher), "--pilot-user", "generic", "-q", QUEUE, "-j", "user", "-t"),
        *("--url", "https://127.0.0.1", "-p", str(server.https_port)),
        *("--queuedata-url", queuedata),
        *("--storagedata-url", f"{server.https}/cache/schedconfig/ddmendpoints.json"),
        *("--input-destination-dir", str(storage), "--output-dir", str(storage)),
        *("--use-rucio-traces", "false", "--getjobrequests", "2", "--getjobfailures", "1"),
        # A pilot otherwise asks only for more jobs of the task of its first one.
        *("--allow-same-user", "false"),
        # Keep the pilot's directory: its pilotlog.txt tells what went wrong.
        *("--workdir", str(work), "--cleanup", "false"),
    ]
    return subprocess.run(
        command, cwd=work, env=env, capture_output=True, text=True, timeout=PILOT_SECONDS, check=False
    )


def test_real_pilot_runs_a_job_without_and_a_job_with_input(
    server: RunningServer, pilot_launcher: Path, tmp_path: Path
) -> None:
    # Pilots take a job as long as they are younger than the queue's timefloor (minutes).
    server.admin("queue", "add", QUEUE, "--type", "unified", "--attr", "timefloor=10")
    scope = scope_of(INPUT_DATASET)
    stored_input = server.home / "storage" / deterministic_path(scope, INPUT_LFN)
    stored_input.parent.mkdir(parents=True)
    stored_input.write_bytes(INPUT_TEXT)
    server.admin("data", "register", INPUT_DATASET, "--file", f"{INPUT_LFN}:{len(INPUT_TEXT)}")
    issuer = token_issuer(server)
    user = User(server, issuer.issue_token(user="Test User"))
    no_input_task, input_task = user.submit(NO_INPUT), user.submit(WITH_INPUT)
    (no_input_job,) = user.activated_jobs(no_input_task)
    (input_job,) = user.activated_jobs(input_task)

    started = time.monotonic()
    pilot_token = issuer.issue_token(user="Pilot Robot", role="production")
    pilot = run_pilot(server, pilot_launcher, tmp_path / "pilot", pilot_token)
    elapsed = time.monotonic() - started
    pilot_log = "\n".join(p.read_text() for p in (tmp_path / "pilot").rglob("pilotlog.txt"))
    print(f"pilot ran {elapsed:.1f} s, exit code {pilot.returncode}")
    jobs = user.call("POST", "/job/get_description", job_ids=[no_input_job["PandaID"], input_job["PandaID"]])
    assert [job["jobStatus"] for job in jobs] == ["finished", "finished"] and pilot.returncode == 0, (
        f"{json.dumps(jobs, indent=1, default=str)}\n{pilot.stdout[-5000:]}\n{pilot_log[-20000:]}"
    )
    for job in jobs:
        assert job["pilotID"].endswith(f"|{PILOT_VERSION}"), job["pilotID"]
        assert job["pilotTiming"] and job["cpuConsumptionUnit"], job
        assert job["transExitCode"] == "0" and job["pilotErrorCode"] == 0, job

    (output,) = [f for f in jobs[1]["Files"] if f["type"] == "output"]
    stored_output = server.home / "storage" / deterministic_path(output["scope"], output["lfn"])
    assert stored_output.read_bytes() == INPUT_TEXT.upper()
    for job in jobs:
        (log,) = [f for f in job["Files"] if f["type"] == "log"]
        assert (server.home / "storage" / deterministic_path(log["scope"], log["lfn"])).is_file()
