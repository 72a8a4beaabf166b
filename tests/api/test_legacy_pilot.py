"""The legacy getJob and updateJob, called as pilot 3.11 calls them (clients.md §4.1-4.2): a gzip
JSON body without Content-Encoding and no Accept header (request2), or the curl fallback's form
body with Accept: application/json; answers read as the pilot reads them."""

from __future__ import annotations

import gzip
import json
from typing import Any
from urllib.parse import parse_qs, urlencode

import httpx
import pytest

from bamboo.db import jobs as jobs_db
from tests.api.conftest import ApiServer
from tests.api.test_pilot_endpoints import ROBOT, row, set_job, two_jobs
from tests.api.test_task_flow import world

__all__ = ["world"]

PILOT_AGENT = "pilot/3.11.5.1 (Python 3.11.9; Linux x86_64)"


def read_as_pilot(response: httpx.Response) -> Any:
    """request2's reading of an answer: JSON when it looks like an object, else parse_qs."""
    assert response.status_code == 200, response.text
    text = response.text
    if text == "Succeeded":
        return {"StatusCode": "0"}
    if text.startswith("{") and text.endswith("}"):
        return json.loads(text)
    return {key: values[0] if len(values) == 1 else values for key, values in parse_qs(text).items()}


async def request2(
    api: ApiServer, method: str, data: dict[str, Any], headers: dict[str, str] | None
) -> httpx.Response:
    """The pilot's urllib call: gzip of the JSON, Content-Type JSON, no Content-Encoding, no Accept."""
    all_headers = {"Content-Type": "application/json", "User-Agent": PILOT_AGENT, **(headers or {})}
    async with api.client() as client:
        return await client.post(
            f"/server/panda/{method}", content=gzip.compress(json.dumps(data).encode()), headers=all_headers
        )


async def curl_form(
    api: ApiServer, method: str, data: dict[str, Any], headers: dict[str, str] | None
) -> httpx.Response:
    """The pilot's curl fallback: form fields (each value as Python's str), Accept JSON."""
    all_headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Accept": "application/json",
        **(headers or {}),
    }
    async with api.client() as client:
        return await client.post(f"/server/panda/{method}", content=urlencode(data), headers=all_headers)


def robot(api: ApiServer) -> dict[str, str]:
    return api.token_headers(ROBOT[0], role=ROBOT[1])


TRANSPORTS = pytest.mark.parametrize("send", [request2, curl_form], ids=["gzip-json", "curl-form"])


def get_job_params(**extra: Any) -> dict[str, Any]:
    return {
        "siteName": "TEST_PQ",
        "computingElement": "TEST_PQ",
        "prodSourceLabel": "user",
        "diskSpace": 150000,
        "workingGroup": "",
        "cpu": 2400.0,
        "mem": 15866.7,
        "node": "wn01.example.org",
        **extra,
    }


# --- getJob -------------------------------------------------------------------------------------


@TRANSPORTS
async def test_get_job_answers_the_job_flat(world, send) -> None:
    api, (first, _) = await two_jobs(world)
    answer = read_as_pilot(await send(api, "getJob", get_job_params(), robot(api)))
    assert int(answer["StatusCode"]) == 0
    assert answer["PandaID"] == first
    assert answer["prodSourceLabel"] == "user" and "jobPars" in answer and "jobs" not in answer
    stored = await row(api, first)
    assert stored["jobStatus"] == "sent" and stored["modificationHost"] == "wn01.example.org"


async def test_get_job_with_n_jobs_lists_them(world) -> None:
    api, ids = await two_jobs(world)
    answer = read_as_pilot(await request2(api, "getJob", get_job_params(nJobs=5), robot(api)))
    assert answer["StatusCode"] == 0 and sorted(job["PandaID"] for job in answer["jobs"]) == sorted(ids)


async def test_get_job_without_jobs_is_status_20(world) -> None:
    api, _ = world
    answer = read_as_pilot(await request2(api, "getJob", get_job_params(), robot(api)))
    assert answer == {"StatusCode": 20, "errorDialog": "No jobs in PanDA"}


async def test_get_job_roles(world) -> None:
    api, _ = await two_jobs(world)
    user = api.token_headers("test user")
    managed = read_as_pilot(await request2(api, "getJob", get_job_params(prodSourceLabel="managed"), user))
    anonymous = read_as_pilot(await request2(api, "getJob", get_job_params(), None))
    assert managed["StatusCode"] == 60 and anonymous["StatusCode"] == 60
    assert anonymous["errorDialog"] == "SSL secure connection is required"


async def test_get_job_bad_parameters(world) -> None:
    api, _ = world
    unknown = read_as_pilot(await request2(api, "getJob", get_job_params(flavour="x"), robot(api)))
    bad_memory = read_as_pilot(await curl_form(api, "getJob", get_job_params(mem="lots"), robot(api)))
    missing = read_as_pilot(await request2(api, "getJob", {"prodSourceLabel": "user"}, robot(api)))
    assert unknown == {
        "StatusCode": 50,
        "errorDialog": "Argument error: got an unexpected keyword argument 'flavour'",
    }
    assert bad_memory["StatusCode"] == 50 and "'memory'" in bad_memory["errorDialog"]
    assert missing["StatusCode"] == 50 and "'site_name'" in missing["errorDialog"]


async def test_undecodable_bodies_and_unknown_methods(world) -> None:
    api, _ = world
    async with api.client(headers=robot(api)) as client:
        broken = await client.post(
            "/server/panda/getJob",
            content=gzip.compress(b"{not json"),
            headers={"Content-Type": "application/json"},
        )
        bomb = await client.post(
            "/server/panda/getJob",
            content=gzip.compress(b" " * (api.state.settings.max_body_bytes + 1)),
            headers={"Content-Type": "application/json"},
        )
        unknown = await client.post("/server/panda/getJobs", data={})
    assert broken.status_code == 400 and broken.text.startswith("ERROR : received invalid JSON")
    assert bomb.status_code == 413
    assert unknown.status_code == 403 and unknown.text == "ERROR : method getJobs is forbidden"


# --- updateJob ----------------------------------------------------------------------------------


def heartbeat(job: dict[str, Any], state: str, **extra: Any) -> dict[str, Any]:
    """An update as the pilot builds it (get_data_structure), for the job as it is stored."""
    return {
        "jobId": job["PandaID"],
        "state": state,
        "timestamp": "2026-12-08T02:00:00+00:00",
        "siteName": "TEST_PQ",
        "node": "wn01.example.org",
        "attemptNr": job["attemptNr"],
        "schedulerID": "pilot-test",
        "pilotID": "pilot-test|SLURM|PR|3.11.5.1",
        "batchID": "12345",
        "startTime": 1_796_000_000,
        "coreCount": 1,
        "meanCoreCount": 1.4,
        "cpuConsumptionUnit": "s+Intel(R) Xeon(R)",
        "cpu_architecture_level": "x86-64-v3",
        "maxRSS": 2048,
        "totRBYTES": 4096,
        **extra,
    }


@TRANSPORTS
async def test_update_job_running_then_finished(world, send) -> None:
    api, (first, _) = await two_jobs(world)
    await set_job(api, first, jobStatus="starting")
    job = await row(api, first)
    running = read_as_pilot(await send(api, "updateJob", heartbeat(job, "running"), robot(api)))
    assert running == {"StatusCode": 0, "command": "NULL"}
    stored = await row(api, first)
    assert stored["jobStatus"] == "running" and stored["schedulerID"] == "pilot-test"
    assert stored["startTime"].strftime("%Y-%m-%d %H:%M:%S") == "2026-11-30 00:53:20"
    assert stored["meanCoreCount"] == 1 and stored["maxRSS"] == 2048 and stored["totRBYTES"] == 4
    final = heartbeat(
        job,
        "finished",
        endTime=1_796_000_060.25,
        transExitCode=0,
        pilotErrorCode=0,
        pilotErrorDiag="",
        exeErrorCode=0,
        exeErrorDiag="",
        pilotTiming="1|2|3|4|5|6",
        pilotLog="",
        metaData='{"k": 1}',
        xml="{}",
        jobMetrics="coreCount=1",
    )
    finished = read_as_pilot(await send(api, "updateJob", final, robot(api)))
    assert finished["StatusCode"] == 0 and finished["command"] == "NULL"
    stored = await row(api, first)
    assert stored["jobStatus"] in ("holding", "finished") and stored["pilotTiming"] == "1|2|3|4|5|6"
    assert stored["endTime"].strftime("%H:%M:%S") == "00:54:20"


async def test_update_job_returns_the_backchannel_command(world) -> None:
    api, (first, _) = await two_jobs(world)
    await set_job(api, first, jobStatus="running", commandToPilot="tobekilled")
    job = await row(api, first)
    answer = read_as_pilot(await request2(api, "updateJob", heartbeat(job, "running"), robot(api)))
    assert answer["StatusCode"] == 0 and answer["command"] == "tobekilled"


async def test_update_job_roles(world) -> None:
    api, (first, _) = await two_jobs(world)
    job = await row(api, first)
    user = read_as_pilot(
        await request2(api, "updateJob", heartbeat(job, "running"), api.token_headers("test user"))
    )
    anonymous = read_as_pilot(await curl_form(api, "updateJob", heartbeat(job, "running"), None))
    assert user == {"StatusCode": 60, "errorDialog": "production or pilot role required"}
    assert anonymous == {"StatusCode": 60, "errorDialog": "SSL secure connection is required"}
    assert (await row(api, first))["jobStatus"] == "activated"


async def test_update_job_bad_parameters(world) -> None:
    api, (first, _) = await two_jobs(world)
    job = await row(api, first)
    invalid_state = read_as_pilot(await request2(api, "updateJob", heartbeat(job, "sleeping"), robot(api)))
    bad_id = read_as_pilot(
        await curl_form(api, "updateJob", heartbeat({**job, "PandaID": "x"}, "running"), robot(api))
    )
    bad_time = read_as_pilot(
        await request2(api, "updateJob", heartbeat(job, "running", startTime=-5), robot(api))
    )
    assert invalid_state == {"StatusCode": 50, "errorDialog": "Invalid job status: sleeping"}
    assert bad_id["StatusCode"] == 50 and "'job_id'" in bad_id["errorDialog"]
    assert bad_time["StatusCode"] == 50 and "epoch seconds" in bad_time["errorDialog"]
    async with api.state.db.transaction(write=False) as conn:
        assert (await jobs_db.get_many(conn, [first]))[first]["jobStatus"] == "activated"
