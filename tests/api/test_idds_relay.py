"""The idds/* relay (api-v1.md §2.12) through the real idds-client package.

iDDS is a service outside Bamboo, so the test starts a small fake iDDS: a real HTTP server on a
free port answering the REST calls idds-client makes (its paths, its JSON encoding of enums, its
OIDC headers). Everything on Bamboo's side, the client library included, is the real code.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from idds.common.constants import RequestStatus
from idds.common.utils import json_dumps

from tests.api.conftest import ApiServer
from tests.api.test_task_flow import envelope

USER = "test user"
OWNER = "Test User"
SECURE_REQUIRED = {"success": False, "message": "SSL secure connection is required", "data": None}


def _request(request_id: int, username: str) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "workload_id": 1000 + request_id,
        "scope": "workflow",
        "name": f"request.{request_id}",
        "status": RequestStatus.Transforming,
        "errors": None,
        "username": username,
    }


@dataclass
class FakeIdds:
    """What the fake iDDS holds and saw."""

    url: str
    requests: dict[int, dict[str, Any]]
    seen: list[dict[str, Any]] = field(default_factory=list)


def _handler(fake: FakeIdds) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # the test output stays quiet
            pass

        def _answer(self, status: int, body: Any) -> None:
            payload = json_dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _route(self, method: str) -> None:
            path, _, query = self.path.partition("?")
            parts = path.removeprefix("/idds/").split("/")
            fake.seen.append(
                {
                    "method": method,
                    "path": path,
                    "query": query,
                    "user": self.headers.get("X-IDDS-Auth-Username-Original"),
                    "token": self.headers.get("X-IDDS-Auth-Token"),
                    "vo": self.headers.get("X-IDDS-Auth-VO"),
                }
            )
            if method == "GET" and parts[0] == "request" and len(parts) == 7:
                found = fake.requests.get(int(parts[1])) if parts[1].isdigit() else None
                return self._answer(200, [found] if found else [])
            if method == "PUT" and parts[0] == "request" and parts[1] in ("abort", "retry"):
                return self._answer(200, {"status": 0, "message": f"{parts[1]} registered for {parts[2]}"})
            if method == "GET" and parts[0] == "catalog":
                return self._answer(200, [{"content_id": 1, "path": path}])
            if method == "GET" and parts == ["ping"]:
                return self._answer(200, {"Status": "OK"})
            return self._answer(500, {"message": "fake iDDS has no such call"})

        def do_GET(self) -> None:
            self._route("GET")

        def do_PUT(self) -> None:
            self._route("PUT")

    return Handler


@pytest.fixture
def fake_idds() -> Iterator[FakeIdds]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(FakeIdds("", {})))
    fake = FakeIdds(
        url=f"http://127.0.0.1:{server.server_address[1]}/idds",
        requests={12: _request(12, OWNER), 13: _request(13, "Someone Else")},
    )
    server.RequestHandlerClass = _handler(fake)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    thread.join()


def _token_file(tmp_path: Path) -> Path:
    payload = base64.urlsafe_b64encode(json.dumps({"exp": 4_102_444_800}).encode()).decode().rstrip("=")
    path = tmp_path / "idds-token.json"
    path.write_text(json.dumps({"id_token": f"e30.{payload}.c2ln"}))
    return path


@pytest.fixture
def relay_api(api_factory, fake_idds: FakeIdds, tmp_path: Path) -> ApiServer:
    return api_factory(
        idds_url=fake_idds.url,
        idds_auth_type="oidc",
        idds_oidc_token_file=_token_file(tmp_path),
        idds_vo="bamboo",
        idds_timeout_seconds=10,
    )


async def call(
    api: ApiServer, function: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> dict:
    async with api.client(headers=headers if headers is not None else api.token_headers(USER)) as client:
        return envelope(await client.post(f"/api/v1/idds/{function}", json=body))


# --- relay_idds_command ------------------------------------------------------------------------------


async def test_relay_calls_idds_as_the_caller(relay_api: ApiServer, fake_idds: FakeIdds) -> None:
    body = await call(
        relay_api, "relay_idds_command", {"command_name": "get_requests", "kwargs": '{"request_id": 12}'}
    )
    assert body["success"] is True and body["message"] == ""
    (request,) = body["data"]
    assert request["request_id"] == 12 and request["username"] == OWNER
    # iDDS's enums come back as iDDS encodes them.
    assert request["status"]["attributes"]["_name_"] == "Transforming"
    (seen,) = fake_idds.seen
    assert seen["path"] == "/idds/request/12/null/False/False/False/False"
    assert (seen["method"], seen["user"], seen["vo"]) == ("GET", OWNER, "bamboo")
    assert seen["token"].startswith("e30.")


async def test_relay_with_the_manager_constants_and_json_outputs(
    relay_api: ApiServer, fake_idds: FakeIdds
) -> None:
    kwargs = {"request_id": 12, "relation_type": {"__idds_const__": "CollectionRelationType.Output"}}
    body = await call(
        relay_api,
        "relay_idds_command",
        {
            "command_name": f"get_contents+{fake_idds.url}",
            "kwargs": orjson.dumps(kwargs).decode(),
            "manager": True,
            "json_outputs": True,
        },
    )
    assert body["success"] is True, body
    path = "/idds/catalog/contents/12/null/null/null/null/1/null"
    assert body["data"] == [{"content_id": 1, "path": path}]
    assert fake_idds.seen[-1]["path"] == path and fake_idds.seen[-1]["query"] == "json_outputs=true"
    positional = await call(relay_api, "relay_idds_command", {"command_name": "get_requests", "args": "[13]"})
    assert positional["data"][0]["request_id"] == 13


async def test_relay_refusals(relay_api: ApiServer, fake_idds: FakeIdds) -> None:
    async def relay(**body: Any) -> dict:
        return await call(relay_api, "relay_idds_command", body)

    assert await relay(command_name="rm_everything") == {
        "success": False,
        "message": "rm_everything is not a command of iDDS Client",
        "data": None,
    }
    # Helpers that touch this server's files, credentials or identity are not commands.
    for helper in ("upload", "get_request_response", "set_original_user", "_abc"):
        assert (await relay(command_name=helper))["message"] == f"{helper} is not a command of iDDS Client"
    assert (await relay(command_name="upload_to_cacher", manager=True))["message"] == (
        "upload_to_cacher is not a command of iDDS ClientManager"
    )
    assert (await relay(command_name="ping+http://elsewhere.example/idds"))["message"] == (
        "failed to execute command with iDDS host http://elsewhere.example/idds is not the configured iDDS"
    )
    bad_args = await relay(command_name="get_requests", args='{"a": 1}')
    assert bad_args == {
        "success": False,
        "message": "failed to execute command with args must be a JSON list",
        "data": None,
    }
    bad_const = await relay(command_name="get_contents", kwargs='{"status": {"__idds_const__": "os.system"}}')
    assert bad_const["message"] == "failed to execute command with 'os.system' is not an iDDS constant"
    failing = await relay(command_name="get_transforms", kwargs='{"request_id": 12}')
    assert failing["success"] is False
    assert failing["message"].startswith("failed to execute command with ")
    assert "fake iDDS has no such call" in failing["message"]
    assert all(seen["path"] != "/idds/ping" for seen in fake_idds.seen)
    anonymous = await call(relay_api, "relay_idds_command", {"command_name": "ping"}, headers={})
    assert anonymous == SECURE_REQUIRED
    missing = await relay()
    assert missing["message"] == "Argument error: missing a required argument: 'command_name'"


async def test_without_idds_url_the_relay_says_so(api: ApiServer) -> None:
    for function, body in (
        ("relay_idds_command", {"command_name": "ping"}),
        ("execute_idds_workflow_command", {"command_name": "get_status"}),
    ):
        assert await call(api, function, body) == {
            "success": False,
            "message": "iDDS is not configured",
            "data": None,
        }


async def test_decode_idds_enum_is_not_routed(api: ApiServer) -> None:
    async with api.client(headers=api.token_headers(USER)) as client:
        response = await client.post("/api/v1/idds/decode_idds_enum", json={})
    assert response.status_code == 403
    assert response.text == "ERROR : method decode_idds_enum is forbidden"


# --- execute_idds_workflow_command ---------------------------------------------------------------------


async def test_workflow_commands_on_own_requests(relay_api: ApiServer, fake_idds: FakeIdds) -> None:
    aborted = await call(
        relay_api, "execute_idds_workflow_command", {"command_name": "abort", "kwargs": '{"request_id": 12}'}
    )
    assert aborted == {"success": True, "message": "abort registered for 12", "data": 0}
    assert [seen["path"] for seen in fake_idds.seen[-2:]] == [
        "/idds/request/12/null/False/False/False/False",
        "/idds/request/abort/12/null",
    ]
    assert fake_idds.seen[-1]["user"] == OWNER
    status = await call(
        relay_api,
        "execute_idds_workflow_command",
        {"command_name": "get_status", "kwargs": '{"request_id": 13}'},
    )
    assert status["success"] is True and status["message"] == ""
    assert "request.13" in status["data"] and "Transforming" in status["data"]


async def test_workflow_command_refusals(relay_api: ApiServer, fake_idds: FakeIdds) -> None:
    async def execute(name: str, kwargs: str | None = None) -> dict:
        body: dict[str, Any] = {"command_name": name}
        if kwargs is not None:
            body["kwargs"] = kwargs
        return await call(relay_api, "execute_idds_workflow_command", body)

    assert await execute("delete") == {"success": False, "message": "delete is unsupported", "data": None}
    assert (await execute("abort"))["message"] == "request_id is missing"
    assert (await execute("retry", '{"request_id": 99}'))["message"] == "request 99 is not found"
    assert (await execute("abort", '{"request_id": 13}'))["message"] == "request 13 is not owned by Test User"
    assert (await execute("abort", '{"request_id": "12/../../x"}'))["message"] == (
        "server failed with request_id must be an integer"
    )
    assert (await execute("abort", "[1]"))["message"] == "server failed with kwargs must be a JSON object"
    assert (await execute("suspend", '{"request_id": 12}'))["message"] == (
        "server failed with the installed iDDS client has no suspend command"
    )
    assert not any("abort/13" in seen["path"] for seen in fake_idds.seen)
    anonymous = await call(
        relay_api, "execute_idds_workflow_command", {"command_name": "get_status"}, headers={}
    )
    assert anonymous == SECURE_REQUIRED
    async with relay_api.client(headers=relay_api.token_headers(USER)) as client:
        get = envelope(
            await client.get(
                "/api/v1/idds/execute_idds_workflow_command", params={"command_name": "get_status"}
            )
        )
    assert get == {"success": False, "message": "expecting POST, received GET", "data": None}
