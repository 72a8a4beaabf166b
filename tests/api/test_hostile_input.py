"""Hostile input through the real app and database: every answer is clear, none is an HTTP 500."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from tests.api.conftest import ApiServer
from tests.api.test_task_admin import running_task
from tests.api.test_task_flow import world
from tests.tasks import NO_INPUT_TASK

__all__ = ["world"]

JSON = {"Accept": "application/json", "Content-Type": "application/json"}


def envelope(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def refused(response) -> str:
    """The message of a success:false envelope."""
    body = envelope(response)
    assert body["success"] is False, body
    return body["message"]


async def submit(api: ApiServer, params: dict[str, Any], **token: Any) -> dict:
    async with api.client(headers=api.token_headers(**token)) as client:
        response = await client.post(
            "/api/v1/task/submit", content=orjson.dumps({"task_parameters": params}), headers=JSON
        )
    return envelope(response)


async def since(api: ApiServer, filters: Any, user: str = "Jane Doe") -> dict:
    # json, not orjson: orjson refuses integers beyond 64 bits, which some cases send.
    text = filters if isinstance(filters, str) else json.dumps(filters)
    async with api.client(headers=api.token_headers(user)) as client:
        response = await client.get("/api/v1/task/get_tasks_detailed_info_since", params={"filters": text})
    return envelope(response)


# --- regular expressions and filters ---------------------------------------------------------------
async def test_catastrophic_pattern_runs_in_linear_time(api: ApiServer) -> None:
    # Backtracking engines take about 2**len(name) steps on this pattern.
    submitted = await submit(api, {**NO_INPUT_TASK, "taskName": "a" * 40})
    assert submitted["success"] is True, submitted
    started = time.monotonic()
    body = await since(api, {"taskName": "(.|.)*X"})
    assert time.monotonic() - started < 5
    assert body == {"success": True, "message": "", "data": []}
    assert [r["taskName"] for r in (await since(api, {"taskName": "^a+$"}))["data"]] == ["a" * 40]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (
            {"taskName": "(" * 300},
            "filters: the regular expression for taskName is longer than 256 characters",
        ),
        ({"taskName": "(a)\\1"}, "filters: the regular expression for taskName is invalid or not supported"),
        ({"taskName": "(?=a)"}, "filters: the regular expression for taskName is invalid or not supported"),
        ({"ramCount": "abc"}, "filters: the value of ramCount must be an integer"),
        ({"jediTaskID": 2**63}, "filters: the value of jediTaskID must be between"),
        # The JSON decoder reads integers beyond 64 bits as floats.
        ({"jediTaskID": 2**70}, "filters: the value of jediTaskID must be a string or an integer"),
        ({"coreCount": "9" * 5000}, "filters: the value of coreCount must be an integer"),
        ({"creationDate": "yesterday"}, "filters: the value of creationDate must be a time"),
        ({"taskName": ["a"]}, "filters: the value of taskName must be a string or an integer"),
        ({"jediTaskID": True}, "filters: the value of jediTaskID must be a string or an integer"),
        ({"taskName": "a\x00b"}, "filters: the value of taskName must not contain NUL characters"),
    ],
)
async def test_malformed_filters_are_refused(api: ApiServer, filters: dict, expected: str) -> None:
    body = await since(api, filters)
    assert body["success"] is False and body["data"] is None
    assert body["message"].startswith(expected), body


async def test_integer_filter_value_and_the_callers_tasks_only(api: ApiServer) -> None:
    submitted = await submit(api, NO_INPUT_TASK, user="Jane Doe")
    task_id = submitted["data"]
    mine = await since(api, {"jediTaskID": task_id})
    assert [record["jediTaskID"] for record in mine["data"]] == [task_id]
    assert (await since(api, {"jediTaskID": task_id}, user="John Roe"))["data"] == []
    # An explicit userName key replaces the caller's name (api-v1.md §2.1).
    other = await since(api, {"jediTaskID": str(task_id), "userName": "Jane Doe"}, user="John Roe")
    assert [record["jediTaskID"] for record in other["data"]] == [task_id]


# --- body limits ------------------------------------------------------------------------------------
async def _chunks(data: bytes, size: int = 512) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded", b"x=" + b"a" * 8192),
        (
            "multipart/form-data; boundary=BOUND",
            b'--BOUND\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\n'
            + b"a" * 8192
            + b"\r\n--BOUND--\r\n",
        ),
    ],
)
async def test_chunked_form_bodies_are_limited_while_streaming(
    api_factory, content_type: str, body: bytes
) -> None:
    api = api_factory(max_body_bytes=2048)
    async with api.client(https=False) as client:
        response = await client.post(
            "/api/v1/system/is_alive", content=_chunks(body), headers={"Content-Type": content_type}
        )
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert response.text == "ERROR : request body larger than 2048 bytes"


async def test_multipart_without_boundary_is_400_without_traceback(
    api: ApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        async with api.client(https=False) as client:
            response = await client.post(
                "/api/v1/system/is_alive", content=b"x", headers={"Content-Type": "multipart/form-data"}
            )
    assert response.status_code == 400
    assert response.text.startswith("ERROR : received invalid form data : ")
    assert not [record for record in caplog.records if record.exc_info]


@pytest.mark.parametrize("multipart", [False, True])
async def test_form_field_over_one_mib_is_refused_by_name(api: ApiServer, multipart: bool) -> None:
    value = "a" * (1024 * 1024 + 1)
    async with api.client(headers=api.token_headers()) as client:
        if multipart:
            body = (
                b'--BOUND\r\nContent-Disposition: form-data; name="task_parameters"\r\n\r\n'
                + value.encode()
                + b"\r\n--BOUND--\r\n"
            )
            response = await client.post(
                "/api/v1/task/submit",
                content=body,
                headers={"Content-Type": "multipart/form-data; boundary=BOUND"},
            )
        else:
            response = await client.post("/api/v1/task/submit", data={"task_parameters": value})
    assert refused(response) == "Value error: 'task_parameters' is larger than 1048576 bytes."


# --- parameter values -------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400", "3.7e291", str(2**64), "1" * 5000])
async def test_unrepresentable_integers_in_the_query(api: ApiServer, value: str) -> None:
    async with api.client(headers=api.token_headers()) as client:
        response = await client.get("/api/v1/task/get_job_ids", params={"task_id": value})
        listed = await client.get("/api/v1/job/get_status", params={"job_ids": ["1", value]})
    assert refused(response).startswith("Type error: 'task_id' with value ")
    assert refused(listed).startswith("Type error: 'job_ids' with value ")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"task_id": 18446744073709551615}', "Value error: 'task_id' must be a 64-bit integer."),
        (b'{"task_id": 9223372036854775808}', "Value error: 'task_id' must be a 64-bit integer."),
        (
            b'{"task_id": 123456789012345678901234567890}',
            "Type error: 'task_id' must be of type int, got float.",
        ),
        (b'{"task_id": ' + b"1" * 4400 + b"}", "Type error: 'task_id' must be of type int, got float."),
    ],
)
async def test_unrepresentable_integers_in_json(api: ApiServer, body: bytes, expected: str) -> None:
    async with api.client(headers=api.token_headers()) as client:
        response = await client.post("/api/v1/task/get_job_ids", content=body, headers=JSON)
    if response.status_code == 400:  # the decoder may refuse the number itself
        assert response.text.startswith("ERROR : received invalid JSON : ")
        return
    assert refused(response) in (expected, "expecting GET, received POST")


async def test_integers_beyond_64_bits_in_a_list(api: ApiServer) -> None:
    async with api.client(headers=api.token_headers()) as client:
        response = await client.post(
            "/api/v1/job/get_description", content=b'{"job_ids": [1, 9223372036854775808]}', headers=JSON
        )
    assert refused(response) == "Value error: elements of 'job_ids' must be 64-bit integers."


async def test_booleans_are_not_list_elements_of_int(api: ApiServer) -> None:
    async with api.client(headers=api.token_headers()) as client:
        response = await client.post(
            "/api/v1/job/get_description", content=b'{"job_ids": [false]}', headers=JSON
        )
    assert refused(response) == "Type error: All elements in 'job_ids' must be int."


async def test_nul_characters_are_refused_by_name(api: ApiServer) -> None:
    async with api.client(headers=api.token_headers()) as client:
        query = await client.get("/api/v1/task/get_tasks_detailed_info_since", params={"since": "a\x00b"})
        form = await client.post(
            "/api/v1/task/submit", data={"task_parameters": repr({**NO_INPUT_TASK, "vo": "b\x00"})}
        )
    body = await submit(api, {**NO_INPUT_TASK, "taskName": "nul\x00name"})
    assert refused(query) == "Value error: 'since' must not contain NUL characters."
    assert refused(form) == "Value error: 'task_parameters' must not contain NUL characters."
    assert body["success"] is False
    assert body["message"] == "Value error: 'task_parameters' must not contain NUL characters."


@pytest.mark.parametrize("literal", ["{1: 'a'}", "{'a': {1, 2}}", "{'a': b'x'}", "{'a': 1j}", "{'a': 1e400}"])
async def test_form_literals_json_cannot_hold(api: ApiServer, literal: str) -> None:
    async with api.client(headers=api.token_headers()) as client:
        response = await client.post("/api/v1/task/submit", data={"task_parameters": literal})
    assert refused(response).startswith("Type error: 'task_parameters' with value ")


# --- task submission --------------------------------------------------------------------------------
@pytest.mark.parametrize("label", ["managed", "prod_test"])
async def test_production_labels_need_the_production_role(api: ApiServer, label: str) -> None:
    params = {**NO_INPUT_TASK, "prodSourceLabel": label}
    body = await submit(api, params)
    assert body == {
        "success": False,
        "message": f"prodSourceLabel={label} requires the production role; use user",
        "data": 4,
    }
    production = await submit(api, {**params, "taskType": "prod"}, user="Prod Robot", role="production")
    assert production["success"] is True, production


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("vo", "v" * 17, "task parameter 'vo' must be at most 16 characters"),
        ("cloud", "c" * 11, "task parameter 'cloud' must be at most 10 characters"),
        ("workingGroup", "w" * 33, "task parameter 'workingGroup' must be at most 32 characters"),
        ("ramCountUnit", "u" * 33, "task parameter 'ramCountUnit' must be at most 32 characters"),
        ("coreCount", 2**31, "task parameter 'coreCount' must be between -2147483648 and 2147483647"),
        ("walltime", -(2**31) - 1, "task parameter 'walltime' must be between -2147483648 and 2147483647"),
        ("nEvents", 2**63, "task parameter 'nEvents' must be between"),
    ],
)
async def test_values_beyond_their_column_are_refused(
    api: ApiServer, key: str, value: Any, expected: str
) -> None:
    body = await submit(api, {**NO_INPUT_TASK, key: value})
    assert body["success"] is False and body["data"] == 4, body
    assert body["message"].startswith(expected), body


# --- found by the schemathesis run (tests/api/test_openapi_fuzz.py) --------------------------------
async def operator_post(api: ApiServer, name: str, params: dict[str, Any]) -> dict:
    async with api.client(headers=api.token_headers("Prod Robot", role="production")) as client:
        response = await client.post(f"/api/v1/task/{name}", content=orjson.dumps(params), headers=JSON)
    return envelope(response)


@pytest.mark.parametrize("method", ["DELETE", "PATCH", "OPTIONS", "TRACE"])
async def test_unsupported_http_methods_are_plain_text_405(api: ApiServer, method: str) -> None:
    async with api.client(https=False) as client:
        response = await client.request(method, "/api/v1/system/is_alive")
        unknown_path = await client.request(method, "/nowhere")
    assert response.status_code == 405
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "ERROR : Method Not Allowed"
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD", "POST", "PUT"}
    assert unknown_path.status_code == 404 and unknown_path.text == "ERROR : Not Found"


@pytest.mark.parametrize("flag", [True, False])
async def test_json_booleans_for_an_integer_reach_the_handler_as_integers(api: ApiServer, flag: bool) -> None:
    # PostgreSQL has no BIGINT = BOOLEAN: true used to fail the query instead of naming task 1.
    by_bool = await operator_post(api, "change_priority", {"task_id": flag, "priority": flag})
    by_int = await operator_post(api, "change_priority", {"task_id": int(flag), "priority": int(flag)})
    assert by_bool == by_int == {"success": False, "message": "Task not found", "data": None}


@pytest.mark.parametrize("hour_offset", [10**8, -(10**8), 2**63 - 1])
async def test_modification_time_beyond_the_calendar_is_refused(api: ApiServer, hour_offset: int) -> None:
    task_id = (await submit(api, NO_INPUT_TASK))["data"]
    body = await operator_post(
        api, "change_modification_time", {"task_id": task_id, "hour_offset": hour_offset}
    )
    assert body == {"success": False, "message": "Exception while changing the attribute", "data": None}


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("change_priority", {"priority": 2**31}, "Exception while changing the priority"),
        ("change_priority", {"priority": -(2**31) - 1}, "Exception while changing the priority"),
        (
            "change_attribute",
            {"attribute_name": "ramCount", "value": 128972216930305776},
            "Exception while changing the attribute",
        ),
    ],
)
async def test_values_beyond_an_integer_column_are_refused(
    api: ApiServer, name: str, params: dict[str, Any], message: str
) -> None:
    task_id = (await submit(api, NO_INPUT_TASK))["data"]
    body = await operator_post(api, name, {"task_id": task_id, **params})
    assert body == {"success": False, "message": message, "data": None}
    fits = await operator_post(api, "change_priority", {"task_id": task_id, "priority": 2**31 - 1})
    assert fits == {"success": True, "message": "1 tasks changed", "data": None}


@pytest.mark.parametrize(("from_offset", "to_offset"), [(15533, 974856), (2**62, -(2**62)), (-(10**9), 0)])
async def test_jumbo_windows_beyond_the_calendar_are_clamped(
    api: ApiServer, from_offset: int, to_offset: int
) -> None:
    async with api.client(headers=api.token_headers()) as client:
        response = await client.get(
            "/api/v1/task/get_jumbo_job_datasets", params={"from_offset": from_offset, "to_offset": to_offset}
        )
    assert envelope(response) == {"success": True, "message": "", "data": {}}


async def test_attempt_increase_beyond_the_column_is_refused(world) -> None:
    # A running task: only there does the increase reach the database.
    api, task_id = await running_task(world)
    body = await operator_post(api, "increase_attempts", {"task_id": task_id, "increase": 2**31})
    assert body == {
        "success": False,
        "message": "increase must be between -2147483648 and 2147483647, got 2147483648",
        "data": 2,
    }


@pytest.mark.parametrize("task_id", ["-5994061220314886438912", str(2**63)])
@pytest.mark.parametrize(
    ("name", "missing"),
    [("get_status", "Task not found"), ("get_datasets_and_files", "No data found for the task")],
)
async def test_unannotated_task_ids_beyond_64_bits_find_nothing(
    api: ApiServer, task_id: str, name: str, missing: str
) -> None:
    async with api.client(headers=api.token_headers()) as client:
        response = await client.get(f"/api/v1/task/{name}", params={"task_id": task_id})
    assert refused(response) == missing


async def test_form_without_content_type_is_bounded(api_factory) -> None:
    api = api_factory(max_body_bytes=2048)
    async with api.client(https=False) as client:
        too_long = await client.post("/api/v1/system/is_alive", content=_chunks(b"x=" + b"a" * 8192))
        too_many = await client.post("/api/v1/system/is_alive", content=b"&".join([b"k"] * 1001))
    assert too_long.status_code == 413
    assert too_long.text == "ERROR : request body larger than 2048 bytes"
    assert too_many.status_code == 400
    assert too_many.text == "ERROR : received invalid form data : Max number of fields exceeded"
