"""The legacy methods besides getJob/updateJob, each called as its real client calls it (pilot
3.11's request2 and curl fallback, panda-client's _HttpClient), with its answer read as that
client reads it; plus, for every method, the refusal of an anonymous caller and of a bad parameter."""

from __future__ import annotations

import ast
import gzip
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from bamboo.logic import secrets
from tests.api.conftest import ApiServer
from tests.api.test_creds import JANE, allow, key_dir, store, token_keys
from tests.api.test_event_endpoints import TASK, es
from tests.api.test_file_server import submit_task
from tests.api.test_idds_relay import OWNER, fake_idds, relay_api
from tests.api.test_legacy_pilot import curl_form, read_as_pilot, request2, robot
from tests.api.test_pilot_endpoints import row, two_jobs
from tests.api.test_task_flow import world

__all__ = ["es", "fake_idds", "key_dir", "relay_api", "token_keys", "world"]

SECURE = "SSL secure connection is required"


async def panda_client_post(
    api: ApiServer, method: str, data: dict[str, Any], headers: dict[str, str] | None, **options: bool
) -> httpx.Response:
    """panda-client's _HttpClient.post: a form body, or with compress_body a gzip JSON body
    (Content-Type JSON, no Content-Encoding); Accept JSON with is_json."""
    all_headers = dict(headers or {})
    if options.get("compress_body"):
        all_headers["Content-Type"] = "application/json"
        body = gzip.compress(json.dumps(data).encode())
    else:
        all_headers["Content-Type"] = "application/x-www-form-urlencoded"
        body = urlencode(data).encode()
    if options.get("is_json"):
        all_headers["Accept"] = "application/json"
    async with api.client() as client:
        return await client.post(f"/server/panda/{method}", content=body, headers=all_headers)


# --- every method: anonymous callers and bad parameters -----------------------------------------------

FLAT_REFUSAL = {"StatusCode": 60, "errorDialog": SECURE}
REFUSED_ANONYMOUS = {
    "getJob": FLAT_REFUSAL,
    "updateJob": FLAT_REFUSAL,
    "getStatus": FLAT_REFUSAL,
    "updateWorkerPilotStatus": FLAT_REFUSAL,
    "setDebugMode": FLAT_REFUSAL,
    "getResourceTypes": FLAT_REFUSAL,
    "getProxy": FLAT_REFUSAL,
    "get_access_token": {"StatusCode": 60, "ErrorDialog": SECURE},
    "getKeyPair": FLAT_REFUSAL,
    "getEventRanges": FLAT_REFUSAL,
    "updateEventRanges": FLAT_REFUSAL,
    "get_user_secrets": [False, SECURE],
    "relay_idds_command": [False, SECURE],
    "execute_idds_workflow_command": [False, SECURE],
    "put_file_recovery_request": [False, SECURE],
    "put_workflow_request": [False, SECURE],
    "putEventPickingRequest": f"ERROR : {SECURE}",
    "put_checkpoint": {"status": False, "message": SECURE},
    "delete_checkpoint": {"status": False, "message": SECURE},
}


@pytest.mark.parametrize("method", sorted(REFUSED_ANONYMOUS))
async def test_anonymous_callers_are_refused_in_the_methods_shape(api: ApiServer, method: str) -> None:
    async with api.client(headers={"Accept": "application/json"}) as client:
        response = await client.post(f"/server/panda/{method}", data={})
    assert response.status_code == 200 and response.json() == REFUSED_ANONYMOUS[method]


def is_argument_error(answer: Any) -> bool:
    if isinstance(answer, dict):
        reason = answer.get("errorDialog", answer.get("ErrorDialog", answer.get("message")))
        status_ok = answer.get("StatusCode", 50) == 50 and answer.get("status") in (None, False)
        return status_ok and reason.startswith("Argument error")
    if isinstance(answer, list):
        return answer[0] is False and answer[1].startswith("Argument error")
    return answer.startswith("ERROR : Argument error")


@pytest.mark.parametrize("method", sorted(REFUSED_ANONYMOUS))
async def test_unknown_parameters_are_refused_as_v1_refuses_them(api: ApiServer, method: str) -> None:
    headers = {**robot(api), "Accept": "application/json"}
    async with api.client(headers=headers) as client:
        response = await client.post(f"/server/panda/{method}", data={"no_such_parameter": "1"})
    assert response.status_code == 200 and is_argument_error(response.json()), response.text


# --- pilot methods ----------------------------------------------------------------------------------


async def test_get_status_is_url_encoded_unless_json_is_accepted(world) -> None:
    api, (first, second) = await two_jobs(world)
    ids = {"ids": f"{first},{second + 1000}"}
    plain = await request2(api, "getStatus", ids, robot(api))
    assert plain.text == "status=activated%2Cnot+found&attemptNr={}%2C0&StatusCode=0".format(
        (await row(api, first))["attemptNr"]
    )
    assert read_as_pilot(plain)["status"] == "activated,not found"
    as_json = read_as_pilot(await curl_form(api, "getStatus", ids, robot(api)))
    assert as_json["status"] == "activated,not found" and as_json["StatusCode"] == 0
    bad = await request2(api, "getStatus", {"ids": "1,x"}, robot(api))
    assert bad.text.startswith("StatusCode=50&errorDialog=Type+error")


async def test_update_worker_pilot_status(world) -> None:
    api, _ = world
    report = {"workerID": 7, "harvesterID": "h1", "status": "started", "site": "TEST_PQ", "node_id": "wn1"}
    for send in (request2, curl_form):
        assert read_as_pilot(await send(api, "updateWorkerPilotStatus", report, robot(api))) == {
            "StatusCode": 0
        }
    wrong = read_as_pilot(
        await request2(api, "updateWorkerPilotStatus", {**report, "status": "lost"}, robot(api))
    )
    assert wrong["StatusCode"] == 30 and wrong["errorDialog"].startswith("Invalid worker state")
    user = read_as_pilot(await request2(api, "updateWorkerPilotStatus", report, api.token_headers("u")))
    assert user == {"StatusCode": 60, "errorDialog": "production or pilot role required"}


async def test_set_debug_mode_then_update_job_carries_debug(world) -> None:
    api, (first, _) = await two_jobs(world)
    on = read_as_pilot(await request2(api, "setDebugMode", {"pandaID": first, "modeOn": True}, robot(api)))
    assert on == {"StatusCode": 0}
    assert "debug" in (await row(api, first))["specialHandling"].split(",")
    off = read_as_pilot(await curl_form(api, "setDebugMode", {"pandaID": first, "modeOn": False}, robot(api)))
    assert off == {"StatusCode": 0}
    assert "debug" not in ((await row(api, first))["specialHandling"] or "").split(",")
    bad = read_as_pilot(await request2(api, "setDebugMode", {"pandaID": first, "modeOn": "x"}, robot(api)))
    assert bad == {"StatusCode": 0}  # "x" is false to PanDA's boolean cast: debug stays off


async def test_get_resource_types_as_the_pilot_parses_them(api: ApiServer) -> None:
    answer = read_as_pilot(await request2(api, "getResourceTypes", {}, robot(api)))
    assert answer["StatusCode"] == 0 and isinstance(answer["ResourceTypes"], str)
    # pilot/util/https.py get_resource_types: quotes and None made JSON, then parsed.
    parsed = json.loads(answer["ResourceTypes"].replace("None", "null").replace("'", '"'))
    assert {"SCORE", "MCORE"} <= {entry["resource_name"] for entry in parsed}
    assert set(parsed[0]) == {"resource_name", "mincore", "maxcore", "minrampercore", "maxrampercore"}


async def test_get_access_token_as_the_pilot_refreshes(api_factory, token_keys: Path) -> None:
    api = api_factory(token_keys_file=token_keys)
    headers = api.token_headers(JANE)
    url = "/server/panda/get_access_token?client_name=pilot_server&token_key=new-key"
    async with api.client(headers=headers) as client:
        denied = ast.literal_eval((await client.get(url)).text)
        await allow(api, JANE, "p")
        await store(api, secrets.TOKEN, "pilot_server", "", "eyJ.token")
        granted = ast.literal_eval((await client.get(url)).text)
        wrong_key = ast.literal_eval((await client.get(url.replace("new-key", "wrong"))).text)
    assert denied["StatusCode"] == 90 and "not in authorized users" in denied["ErrorDialog"]
    assert granted == {"StatusCode": 0, "userProxy": "eyJ.token"}
    assert wrong_key == {
        "StatusCode": 90,
        "ErrorDialog": "failed since token key is invalid for pilot_server",
    }


async def test_get_proxy(api: ApiServer) -> None:
    dn = "/DC=org/DC=example/OU=Users/CN=jdoe/CN=Jane Doe"
    headers = api.cert_headers(dn)
    await allow(api, JANE, "p")
    missing = read_as_pilot(await request2(api, "getProxy", {"role": "production"}, headers))
    await store(api, secrets.PROXY, dn, "production", "PEM production")
    found = read_as_pilot(await curl_form(api, "getProxy", {"role": "production"}, headers))
    assert missing == {"StatusCode": 90, "errorDialog": f"'proxy' not found for {dn}"}
    assert found == {"StatusCode": 0, "userProxy": "PEM production"}


async def test_get_key_pair(api_factory, key_dir: Path) -> None:
    api = api_factory(key_pair_dir=key_dir)
    names = {"publicKeyName": "pub.pem", "privateKeyName": "priv.pem"}
    denied = read_as_pilot(await curl_form(api, "getKeyPair", names, api.token_headers(JANE)))
    await allow(api, JANE, "k")
    granted = read_as_pilot(await curl_form(api, "getKeyPair", names, api.token_headers(JANE)))
    assert denied["StatusCode"] == 30 and "not authorized with 'k'" in denied["errorDialog"]
    assert granted == {"StatusCode": 0, "publicKey": "PUBLIC KEY", "privateKey": "PRIVATE KEY"}


async def test_get_user_secrets_as_the_pilot_reads_them(api: ApiServer) -> None:
    async with api.client(headers=api.token_headers(JANE)) as client:
        for key, value in (("MB_USERNAME", "mq"), ("MB_PASSWORD", "s3cret"), ("OTHER", "x")):
            answer = await client.post("/api/v1/creds/set_user_secrets", json={"key": key, "value": value})
            assert answer.json()["success"] is True
    wanted = {"get_json": True, "keys": "MB_USERNAME,MB_PASSWORD"}
    # The pilot asks through curl and json.loads the answer.
    headers = api.token_headers(JANE)
    as_object = (await curl_form(api, "get_user_secrets", wanted, headers)).json()
    as_text = (await curl_form(api, "get_user_secrets", {"keys": "OTHER"}, headers)).json()
    assert as_object == [True, {"MB_USERNAME": "mq", "MB_PASSWORD": "s3cret"}]
    assert as_text[0] is True and json.loads(as_text[1]) == {"OTHER": "x"}


async def test_event_ranges_as_the_pilot_event_service_asks(es) -> None:
    api, jobset = es
    consumer = jobset.consumers[0]
    # As the pilot's event-service communicator asks (pandacommunicator.get_events).
    asked = {"pandaID": consumer, "jobsetID": jobset.jobset_id, "taskID": TASK, "nRanges": 2}
    got = read_as_pilot(await curl_form(api, "getEventRanges", asked, robot(api)))
    assert got["StatusCode"] == 0
    ranges = json.loads(got["eventRanges"])
    assert len(ranges) == 2 and ranges[0]["eventRangeID"].startswith(f"{TASK}-{consumer}-")
    report = json.dumps(
        [{"eventRangeID": item["eventRangeID"], "eventStatus": "finished"} for item in ranges]
    )
    updated = read_as_pilot(await curl_form(api, "updateEventRanges", {"eventRanges": report}, robot(api)))
    assert updated == {"StatusCode": 0, "Returns": [True, True], "Commands": {}}
    user = read_as_pilot(await request2(api, "getEventRanges", asked, api.token_headers("u")))
    assert user == {"StatusCode": 60, "errorDialog": "production or pilot role required"}
    bad = read_as_pilot(await request2(api, "getEventRanges", {**asked, "nRanges": "many"}, robot(api)))
    assert bad["StatusCode"] == 50 and "'n_ranges'" in bad["errorDialog"]


# --- panda-client's legacy calls -------------------------------------------------------------------


async def test_put_event_picking_request_as_panda_client_sends_it(api: ApiServer) -> None:
    data = {
        "runEventList": "358031 1230\n358031 1231\n",
        "eventPickDataType": "AOD",
        "eventPickStreamName": "physics_Main",
        "eventPickDS": "data18_13TeV.00358031.physics_Main.merge.AOD.f961_m2015",
        "eventPickAmiTag": "",
        "userDatasetName": "user.jdoe.evp.1234/",
        "lockedBy": "pathena",
        "giveGUID": False,
        "params": "",
        "inputFileList": "",
    }
    accepted = await panda_client_post(api, "putEventPickingRequest", data, api.token_headers(JANE))
    assert accepted.json() is True
    bad = await panda_client_post(
        api, "putEventPickingRequest", {**data, "giveGUID": "maybe", "eventPickNumSites": "x"}, None
    )
    assert bad.json() == f"ERROR : {SECURE}"


async def test_idds_relays_as_panda_client_calls_them(relay_api: ApiServer, fake_idds) -> None:
    headers = relay_api.token_headers("test user")
    relayed = await panda_client_post(
        relay_api,
        "relay_idds_command",
        {"command_name": "get_requests", "kwargs": json.dumps({"request_id": 12})},
        headers,
        compress_body=True,
    )
    status, (request,) = relayed.json()
    assert status is True and request["request_id"] == 12 and request["username"] == OWNER
    aborted = await panda_client_post(
        relay_api,
        "execute_idds_workflow_command",
        {"command_name": "abort", "kwargs": json.dumps({"request_id": 12})},
        headers,
    )
    assert aborted.json() == [True, {"status": 0, "message": "abort registered for 12"}]
    refused = await panda_client_post(
        relay_api,
        "execute_idds_workflow_command",
        {"command_name": "abort", "kwargs": json.dumps({"request_id": 13})},
        headers,
    )
    assert refused.json()[0] is False and "not owned by" in refused.json()[1]


WORKFLOW = {
    "workflow_name": "legacy-wf",
    "steps": [
        {
            "name": "first",
            "task_params": {
                "taskName": "user.testuser.legacywf.first/",
                "vo": "bamboo",
                "prodSourceLabel": "user",
                "site": "TEST_PQ",
                "noInput": True,
                "nEvents": 1,
                "nEventsPerJob": 1,
                "transPath": "runGen-00-00-02",
                "jobParameters": [{"type": "constant", "value": "-p 'echo hi'"}],
                "log": {
                    "type": "template",
                    "param_type": "log",
                    "dataset": "user.testuser.legacywf.log/",
                    "value": "user.testuser.legacywf.log.$JEDITASKID.${SN}.log.tgz",
                },
            },
        }
    ],
}


async def test_put_workflow_request_as_pchain_reads_it(world) -> None:
    api, _ = world
    headers = api.token_headers("test user")
    check = await panda_client_post(
        api,
        "put_workflow_request",
        {"data": json.dumps(WORKFLOW), "check": True},
        headers,
        compress_body=True,
        is_json=True,
    )
    ok, checked = check.json()
    assert ok is True and checked["status"] is True and checked["log"] == "steps: first"
    submit = await panda_client_post(
        api,
        "put_workflow_request",
        {"data": json.dumps(WORKFLOW), "sync": True},
        headers,
        compress_body=True,
        is_json=True,
    )
    ok, submitted = submit.json()
    assert ok is True and submitted["status"] is True and submitted["request_id"] == submitted["workflow_id"]
    broken = await panda_client_post(
        api, "put_workflow_request", {"data": "[1]"}, headers, compress_body=True, is_json=True
    )
    assert broken.json()[0] is False and "must be a JSON object" in broken.json()[1]


async def test_put_file_recovery_request(api: ApiServer) -> None:
    task_id = await submit_task(api, JANE)
    asked = {"jediTaskID": task_id, "dryRun": True}
    accepted = await panda_client_post(api, "put_file_recovery_request", asked, api.token_headers(JANE))
    not_owner = await panda_client_post(api, "put_file_recovery_request", asked, api.token_headers("John"))
    assert accepted.json()[0] is True and accepted.json()[1]
    assert not_owner.json() == [False, "not the task owner or no production role"]


async def test_checkpoints(api: ApiServer) -> None:
    task_id = await submit_task(api, JANE)
    headers = api.token_headers(JANE)
    async with api.client(headers=headers) as client:
        put = await client.post(
            "/server/panda/put_checkpoint",
            files={"file": (f"{task_id}_3", b"state", "application/octet-stream")},
        )
        fetched = await client.get(f"/cache/hpo_cp_{task_id}_3")
        deleted = await client.post(
            "/server/panda/delete_checkpoint", data={"task_id": task_id, "sub_id": "3"}
        )
        again = await client.post(
            "/server/panda/delete_checkpoint",
            content=gzip.compress(json.dumps({"task_id": str(task_id), "sub_id": "3"}).encode()),
            headers={"Content-Type": "application/json"},
        )
    assert put.json() == {"status": True, "message": f"Successfully placed at /cache/hpo_cp_{task_id}_3"}
    assert fetched.content == b"state"
    assert deleted.json() == {"status": True, "message": ""}
    assert again.json()["status"] is False and "no such checkpoint" in again.json()["message"]


# --- /auth/<vo>[.<role>]_auth_config.json -----------------------------------------------------------


async def test_auth_config_for_the_origin_with_a_role(api: ApiServer) -> None:
    async with api.client(https=False) as client:
        bare = (await client.get("/auth/bamboo_auth_config.json")).json()
        production = await client.get("/auth/bamboo.production_auth_config.json")
        pilot = await client.get("/auth/bamboo:pilot_auth_config.json")
        unknown_role = await client.get("/auth/bamboo.admin_auth_config.json")
    assert production.json() == bare and pilot.json() == bare
    assert unknown_role.status_code == 404
