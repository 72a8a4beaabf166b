"""Harvester's communicator calls and the next pilot's v1 calls that tests/e2e does not make yet.

Neither client is on PyPI as a package this project can install (Harvester's ``pandaharvester`` is
not published; the pilot on PyPI is 3.7, older than the calls of clients.md §4.4), so each request
is rebuilt as the client sends it: Harvester's through the e2e ``Harvester`` transport (JSON POSTs,
query-string GETs, ``Accept: application/json``, ``Connection: close``, field names of clients.md
§3.2), the pilot's through ``NextPilot`` below (gzip JSON bodies with ``Content-Encoding``, snake
case keys of §4.4). Each answer is read the way the client reads it.
"""

from __future__ import annotations

import gzip
import json
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.compat.test_panda_client import acquire
from tests.e2e.conftest import BACKENDS, HARVESTER_ID, Deployment, database_for, deployed, wait_for
from tests.tasks import QUEUE, input_task

pytestmark = pytest.mark.e2e

PUBLIC_KEY = "-----BEGIN PUBLIC KEY-----\ncompat\n-----END PUBLIC KEY-----\n"
PRIVATE_KEY = "-----BEGIN PRIVATE KEY-----\ncompat\n-----END PRIVATE KEY-----\n"
OK = {"success": True, "message": "", "data": None}


@pytest.fixture(scope="module", params=BACKENDS)
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """The compat deployment with a key pair directory for creds/get_key_pair."""
    tmp = tmp_path_factory.mktemp("resource")
    keys = tmp / "keys"
    keys.mkdir()
    (keys / "compat.pub").write_text(PUBLIC_KEY)
    (keys / "compat.key").write_text(PRIVATE_KEY)
    env = {"BAMBOO_KEY_PAIR_DIR": str(keys)}
    with database_for(request.param) as url, deployed(tmp, url, "curl", env=env) as running:
        running.server.admin("user", "allow", "Harvester Robot", "--proxy", "--key-pair")
        yield running


def stamp() -> str:
    """Now, as Harvester's communicator sends a datetime."""
    return "datetime/" + datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def harvester_call(deployment: Deployment, method: str, path: str, **params: Any) -> dict[str, Any]:
    http = deployment.harvester.http
    response = http.get(path, params=params) if method == "GET" else http.post(path, json=params)
    assert response.status_code == 200, response.text
    return response.json()


class NextPilot:
    """The next pilot's requests to the v1 API (clients.md §4.1, §4.4)."""

    def __init__(self, deployment: Deployment) -> None:
        authorization = deployment.harvester.http.headers["Authorization"]
        # The pilot loads no CA: it does not verify the server.
        self.http = httpx.Client(
            base_url=f"{deployment.server.https}/api/v1",
            headers={
                "Authorization": authorization,
                "Origin": "bamboo.production",
                "User-Agent": "pilot/3.12.1.1 (Python 3.11.2; Linux x86_64)",
            },
            verify=False,
            timeout=30,
        )

    def post(self, function: str, data: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post(
            f"/{function}",
            content=gzip.compress(json.dumps(data).encode()),
            headers={
                "Content-Type": "application/json",
                "Content-Encoding": "gzip",
                "Accept": "application/json",
            },
        )
        assert response.status_code == 200, response.text
        # The pilot's parser: a text in braces is JSON.
        assert response.text.startswith("{") and response.text.endswith("}"), response.text
        return response.json()

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def pilot(deployment: Deployment) -> Iterator[NextPilot]:
    client = NextPilot(deployment)
    yield client
    client.close()


def test_harvester_liveness_metrics_dialogs_and_statistics(deployment: Deployment) -> None:
    # check_panda returns the whole reply.
    assert harvester_call(deployment, "GET", "/system/is_alive") == OK
    metrics = harvester_call(
        deployment,
        "POST",
        "/harvester/update_service_metrics",
        harvester_id=HARVESTER_ID,
        metrics=[[stamp(), "compat-host", json.dumps({"cpu": 1})]],
    )
    assert metrics["success"] is True, metrics
    dialogs = harvester_call(
        deployment,
        "POST",
        "/harvester/add_dialogs",
        harvester_id=HARVESTER_ID,
        dialogs=[
            {
                "diagID": 1,
                "moduleName": "compat",
                "identifier": None,
                "creationTime": stamp(),
                "messageLevel": "WARNING",
                "diagMessage": "compat dialog",
            }
        ],
    )
    assert dialogs["success"] is True, dialogs

    types = harvester_call(deployment, "GET", "/metaconfig/get_resource_types")["data"]
    names = {entry["resource_name"] for entry in types}
    assert {"SCORE", "MCORE"} <= names
    assert all({"mincore", "maxcore", "minrampercore", "maxrampercore"} <= entry.keys() for entry in types)

    task_id = deployment.submit(input_task_with_events(deployment, "compat.stats", events=0))
    deployment.job_ids(task_id, 1)
    stats = harvester_call(deployment, "GET", "/statistics/active_job_stats_by_site")["data"]
    assert stats[QUEUE]["activated"] >= 1, stats
    detailed = harvester_call(deployment, "GET", "/statistics/active_job_detailed_stats_by_site")["data"]
    assert QUEUE in detailed, detailed


def test_harvester_credentials_and_uploads(deployment: Deployment) -> None:
    pair = harvester_call(
        deployment, "GET", "/creds/get_key_pair", public_key_name="compat.pub", private_key_name="compat.key"
    )
    assert pair["data"] == {"public_key": PUBLIC_KEY, "private_key": PRIVATE_KEY}

    # upload_file sends the job log zlib-compressed, to the cache server's base URL.
    log_name = f"compat.{uuid.uuid4()}.log"
    payload = b"harvester log line\n" * 50
    response = deployment.harvester.http.post(
        "/file_server/upload_jedi_log", files={"file": (log_name, zlib.compress(payload))}
    )
    uploaded = response.json()
    assert uploaded["success"] is True, uploaded
    assert uploaded["data"] == f"{deployment.server.https}/cache/jedilog/{log_name}"
    served = deployment.harvester.http.get(uploaded["data"])
    assert served.status_code == 200 and served.content, served

    # HPO checkpoints: upload as <task>_<sub>, download from <sourceURL>/cache/hpo_cp_<task>_<sub>, clear.
    checkpoint = b"checkpoint bytes"
    placed = deployment.harvester.http.post(
        "/file_server/upload_hpo_checkpoint", files={"file": ("10000000_7", checkpoint)}
    ).json()
    assert placed["success"] is True and placed["message"].startswith("Successfully placed at "), placed
    fetched = deployment.harvester.http.get(f"{deployment.server.https}/cache/hpo_cp_10000000_7")
    assert (fetched.status_code, fetched.content) == (200, checkpoint)
    cleared = harvester_call(
        deployment, "POST", "/file_server/delete_hpo_checkpoint", task_id="10000000", sub_id="7"
    )
    assert cleared["success"] is True, cleared
    assert (
        deployment.harvester.http.get(f"{deployment.server.https}/cache/hpo_cp_10000000_7").status_code == 404
    )


def input_task_with_events(deployment: Deployment, name: str, events: int) -> dict[str, Any]:
    """An analysis task over a new two-file dataset; an event-service one when ``events`` per range."""
    dataset = f"user.testuser.{name}.in"
    deployment.register_dataset(dataset, [f"{name}.{i:02d}.root:{1000 + i}:4" for i in range(2)])
    params = input_task(dataset, f"user.testuser.{name}", 2)
    if events:
        params.update(eventService=1, nEventsPerWorker=events, maxAttemptES=10)
    return params


def test_harvester_event_ranges(deployment: Deployment) -> None:
    task_id = deployment.submit(input_task_with_events(deployment, "compat.es", events=2))
    (job,) = acquire(deployment, task_id, 1)
    ids = {"job_id": job["PandaID"], "jobset_id": job["jobsetID"], "task_id": task_id}
    available = harvester_call(deployment, "GET", "/event/get_available_event_range_count", **ids)
    assert available["data"] == 4, available

    acquired = harvester_call(deployment, "POST", "/event/acquire_event_ranges", **ids, n_ranges=3)
    # Harvester's event feeder reads StatusCode and eventRanges inside data.
    assert acquired["data"]["StatusCode"] == 0, acquired
    ranges = acquired["data"]["eventRanges"]
    assert len(ranges) == 3 and all(entry["eventRangeID"].startswith(f"{task_id}-") for entry in ranges)
    available = harvester_call(deployment, "GET", "/event/get_available_event_range_count", **ids)
    assert available["data"] == 1, available

    # Version 1, as Harvester sends it: the ranges grouped per zip file (none here).
    # A running range is acknowledged with null, a finished one with true.
    statuses = ["finished", "running", "running"]
    updates = [
        {"eventRangeID": entry["eventRangeID"], "eventStatus": status}
        for entry, status in zip(ranges, statuses, strict=True)
    ]
    updated = harvester_call(
        deployment,
        "POST",
        "/event/update_event_ranges",
        event_ranges=json.dumps([{"eventRanges": updates}]),
        version=1,
    )
    assert updated["data"] is not None and updated["data"]["StatusCode"] == 0, updated
    assert updated["data"]["Returns"] == [True, None, None], updated


def test_next_pilot_job_cycle(deployment: Deployment, pilot: NextPilot) -> None:
    task_id = deployment.submit(input_task_with_events(deployment, "compat.pilot", events=0))
    deployment.job_ids(task_id, 1)
    node = {"site": QUEUE, "host_name": "wn-compat"}
    assert pilot.post(
        "pilot/update_worker_node",
        {
            **node,
            "panda_queue": QUEUE,
            "cpu_model": "Compat CPU",
            "n_logical_cpus": 8,
            "n_sockets": 1,
            "cores_per_socket": 4,
            "threads_per_core": 2,
            "cpu_architecture": "x86_64",
            "cpu_architecture_level": "x86-64-v3",
            "total_memory": 16000,
            "total_local_disk": 500,
            "clock_speed": 2400.0,
        },
    )["success"]
    assert pilot.post(
        "pilot/update_worker_node_gpu",
        {
            **node,
            "vendor": "nvidia",
            "model": "T4",
            "count": 1,
            "vram": 16000,
            "architecture": "Turing",
            "framework": "cuda",
            "framework_version": "12.2",
            "driver_version": "535.104",
        },
    )["success"]

    def fetch() -> dict[str, Any]:
        return pilot.post(
            "pilot/acquire_jobs",
            {
                "site_name": QUEUE,
                "computing_element": QUEUE,
                "prod_source_label": "user",
                "disk_space": 50000,
                "memory": 2000,
                "node": "wn-compat",
                "task_id": task_id,
                "scheduler_id": "compat-pilot",
                "worker_id": 1,
            },
        )

    body = wait_for("a job for the pilot", fetch, lambda got: bool(got["success"] and got["data"]["jobs"]))
    assert body["data"]["StatusCode"] == 0
    job = body["data"]["jobs"][0]
    assert job["taskID"] == task_id

    common = {
        "job_id": job["PandaID"],
        "site_name": QUEUE,
        "node": "wn-compat",
        "attempt_nr": job["attemptNr"],
        "scheduler_id": "compat-pilot",
        "pilot_id": "compat|PR|PICARD|3.12.1.1",
        "batch_id": "1234",
    }
    start = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    for state in ("starting", "running"):
        answer = pilot.post(
            "pilot/update_job", {**common, "job_status": state, "start_time": start, "core_count": 1}
        )
        # Accepted iff success and StatusCode absent or 0; the backchannel is in data.command.
        assert answer["success"] is True and answer["data"].get("StatusCode", 0) == 0, answer
        assert answer["data"]["command"] == "NULL", answer
    outputs = {
        lfn: {"guid": str(uuid.uuid4()), "fsize": 10, "adler32": f"{zlib.adler32(lfn.encode()):08x}"}
        for lfn in job["outFiles"].split(",")
    }
    final = pilot.post(
        "pilot/update_job",
        {
            **common,
            "job_status": "finished",
            "start_time": start,
            "core_count": 1,
            "mean_core_count": 1,
            "n_events": 8,
            "cpu_consumption_time": 12,
            "cpu_consumption_unit": "s",
            "cpu_conversion_factor": 1.0,
            "cpu_architecture_level": "x86-64-v3",
            "max_rss": 1000,
            "avg_rss": 800,
            "job_metrics": "coreCount=1",
            "job_output_report": json.dumps(outputs),
            "meta_data": json.dumps({"compat": True}),
            "pilot_error_code": 0,
            "pilot_error_diag": "",
            "trans_exit_code": 0,
            "exe_error_code": 0,
            "exe_error_diag": "",
        },
    )
    assert final["success"] is True and final["data"].get("StatusCode", 0) == 0, final

    def status() -> list[dict[str, Any]]:
        response = pilot.http.get("/pilot/get_job_status", params={"job_ids": job["PandaID"]})
        return response.json()["data"]

    statuses = wait_for("the pilot's job finished", status, lambda got: got[0]["status"] != "holding")
    assert statuses == [{"job_id": job["PandaID"], "status": "finished", "attempt_number": job["attemptNr"]}]

    types = pilot.http.get("/metaconfig/get_resource_types", headers={"Accept": "application/json"}).json()
    assert {entry["resource_name"] for entry in types["data"]} >= {"SCORE", "MCORE"}


def test_next_pilot_token_refresh_and_secrets(
    deployment: Deployment, pilot: NextPilot, tmp_path: Path
) -> None:
    token_file = tmp_path / "pilot.token"
    token_file.write_text("refreshed-token-text")
    deployment.server.admin("secrets", "put-token", str(token_file), "--client", "pilot_server")
    # The pilot sends no Accept header here. Upstream then answers a Python literal; Bamboo answers
    # JSON (DESIGN §9.1), which the pilot's reply parser takes as JSON for being in braces.
    response = pilot.http.get("/creds/get_access_token", params={"client_name": "pilot_server"})
    assert response.text.startswith("{") and response.text.endswith("}"), response.text
    answer = response.json()
    data = answer["data"]
    token = data.get("access_token") or data.get("token") or data.get("user_proxy") or data.get("userProxy")
    assert (answer["success"], token) == (True, "refreshed-token-text")

    secrets = pilot.http.get("/creds/get_user_secrets", headers={"Accept": "application/json"}).json()
    assert secrets["success"] is True, secrets
    assert json.loads(secrets["data"]) == {}
