"""The async_process endpoints of api-v1.md §2.14 through the API, on both databases, with the agent
that runs the requests in every process: machines, grep over a log directory (plain and gzip,
bounded), sleep_echo claimed once, results and who may read them, and the recovery of requests
whose machine died.

Each "process" is an agent context with a machine of its own, driven step by step; time comes
from a FixedClock shared with the server.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bamboo.agents.runner import PROCESS_AGENTS, AgentContext, AgentRunner
from bamboo.db import async_requests as requests_db
from bamboo.db.schema import async_request_results, async_requests, machines
from bamboo.logic import async_requests as logic
from bamboo.logic.catalog import LocalCatalog
from bamboo.logic.machines import AGENTS_SERVICE, SERVER_SERVICE, Machine
from tests.api.conftest import ApiServer
from tests.api.test_task_flow import envelope
from tests.conftest import FixedClock

T0 = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
USER = "Jane Doe"  # the user name of a token issued to "Jane Doe", allowed to grep
OTHER = "John Smith"
PRODUCTION_REQUIRED = {"success": False, "message": "production or pilot role required", "data": None}
LOG_LINES = [
    "2026-12-07 10:00:00 INFO job 41 started",
    "2026-12-07 10:00:01 ERROR job 42 failed: no space left",
    "2026-12-07 10:00:02 INFO job 43 started",
    "2026-12-07 10:00:03 ERROR job 44 failed: lost heartbeat",
    "2026-12-07 10:00:04 ERROR job 45 failed: killed",
]


@dataclass
class World:
    api: ApiServer
    clock: FixedClock
    log_dir: Path

    def process(self, name: str, service: str = SERVER_SERVICE, **settings: Any) -> AgentRunner:
        machine = Machine(name=name, service=service, host=name.partition(":")[0], pid=1)
        values = self.api.state.settings.model_copy(update=settings)
        context = AgentContext(
            self.api.state.db, self.clock, LocalCatalog(), settings=values, machine=machine
        )
        return AgentRunner(context, agents=PROCESS_AGENTS)

    async def call(self, name: str, headers: dict[str, str] | None = None, **params: Any) -> dict[str, Any]:
        headers = self.api.token_headers() if headers is None else headers
        async with self.api.client(headers=headers) as client:
            if name == "get_result":
                return envelope(await client.get(f"/api/v1/async_process/{name}", params=params))
            return envelope(await client.post(f"/api/v1/async_process/{name}", json=params))

    async def result(self, request_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        answer = await self.call("get_result", headers, request_id=request_id)
        assert answer["success"], answer
        return answer["data"]


@pytest.fixture
def world(api_factory: Callable[..., ApiServer], tmp_path: Path) -> World:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    (log_dir / "panda-server.log").write_text("\n".join(LOG_LINES) + "\n")
    with gzip.open(log_dir / "panda-server.log.1.gz", "wt") as stream:
        stream.write("2026-12-06 09:00:00 ERROR job 7 failed: from yesterday\n")
        stream.write("2026-12-06 09:00:01 INFO job 8 started\n")
    api = api_factory(allow_async_request=[USER], log_dir=log_dir)
    clock = FixedClock(T0)
    api.state.clock = clock
    return World(api, clock, log_dir)


def production(world: World, user: str = "Prod Operator") -> dict[str, str]:
    return world.api.token_headers(user=user, role="production")


async def beat(*processes: AgentRunner) -> None:
    for process in processes:
        await process.run_once("machine_heartbeat")


async def submit_grep(world: World, **params: Any) -> str:
    answer = await world.call("submit_grep_request", **params)
    assert answer["success"], answer
    return answer["data"]["request_id"]


async def submit_sleep_echo(world: World, **params: Any) -> str:
    answer = await world.call("submit_sleep_echo_request", production(world), **params)
    assert answer["success"], answer
    return answer["data"]["request_id"]


# --- machines -----------------------------------------------------------------------------------


async def test_heartbeat_registers_renews_and_forgets(world: World) -> None:
    a, b = world.process("host-a:1:aaaa"), world.process("host-b:2:bbbb", AGENTS_SERVICE)
    await beat(a, b)
    world.clock.set(T0 + timedelta(hours=25))
    await beat(a)
    async with world.api.state.db.transaction(write=False) as conn:
        rows = (await conn.execute(sa.select(machines).order_by(machines.c.machine_name))).mappings().all()
    # b was silent longer than machine_forget_hours (24) and is forgotten; a was renewed.
    assert [
        (row["machine_name"], row["service_name"], row["started_at"], row["heartbeat_at"]) for row in rows
    ] == [("host-a:1:aaaa", SERVER_SERVICE, T0, T0 + timedelta(hours=25))]


async def test_old_requests_are_deleted_with_their_results(world: World) -> None:
    a = world.process("host-a:1:aaaa")
    await beat(a)
    request_id = await submit_grep(
        world, pattern="ERROR", log_filename="panda-server.log", service_name=SERVER_SERVICE
    )
    world.clock.set(T0 + timedelta(days=8))
    await beat(a)
    async with world.api.state.db.transaction(write=False) as conn:
        assert await requests_db.get_request(conn, request_id) is None
        assert await requests_db.results_of(conn, request_id) == []


# --- grep -----------------------------------------------------------------------------------------


async def test_grep_runs_on_every_alive_machine_of_the_service(world: World) -> None:
    a, b = world.process("host-a:1:aaaa"), world.process("host-b:2:bbbb")
    dead, other = world.process("host-c:3:cccc"), world.process("host-d:4:dddd", AGENTS_SERVICE)
    await beat(dead)
    world.clock.set(T0 + timedelta(seconds=61))
    await beat(a, b, other)
    request_id = await submit_grep(
        world, pattern=r"ERROR job 4\d", log_filename="panda-server.log", service_name=SERVER_SERVICE
    )
    data = await world.result(request_id)
    assert data["overall_status"] == "pending"
    assert data["expected_machines"] == ["host-a:1:aaaa", "host-b:2:bbbb"]
    assert [(row["machine_name"], row["status"], row["attempts"]) for row in data["results"]] == [
        ("host-a:1:aaaa", "pending", 0),
        ("host-b:2:bbbb", "pending", 0),
    ]
    assert await a.run_once(logic.AGENT) == 1
    assert await a.run_once(logic.AGENT) == 0
    assert (await world.result(request_id))["overall_status"] == "pending"
    assert await b.run_once(logic.AGENT) == 1
    data = await world.result(request_id)
    assert data["overall_status"] == "complete"
    expected_lines = "\n".join(LOG_LINES[i] for i in (1, 3, 4))
    started = str((T0 + timedelta(seconds=61)).replace(tzinfo=None))
    assert data["results"][0] == {
        "machine_name": "host-a:1:aaaa",
        "status": "done",
        "result": expected_lines,
        "truncated": False,
        "error_msg": None,
        "attempts": 1,
        "started_at": started,
        "finished_at": started,
        "stderr": "",
        "return_code": 0,
    }
    assert data["results"][1]["machine_name"] == "host-b:2:bbbb"
    assert data["results"][1]["result"] == expected_lines


async def test_grep_on_one_machine_reads_a_gz_file(world: World) -> None:
    a, b = world.process("host-a:1:aaaa"), world.process("host-b:2:bbbb")
    await beat(a, b)
    request_id = await submit_grep(
        world, pattern="ERROR", log_filename="panda-server.log.1.gz", machine_name="host-b:2:bbbb"
    )
    assert await a.run_once(logic.AGENT) == 0
    assert await b.run_once(logic.AGENT) == 1
    data = await world.result(request_id)
    assert data["overall_status"] == "complete"
    assert data["expected_machines"] == ["host-b:2:bbbb"]
    (row,) = data["results"]
    assert (row["status"], row["result"], row["return_code"]) == (
        "done",
        "2026-12-06 09:00:00 ERROR job 7 failed: from yesterday",
        0,
    )


@pytest.mark.parametrize(
    ("limits", "kept"),
    [
        ({"async_grep_max_lines": 2}, 2),
        # Each matching line is 50-ish bytes: 1100 bytes hold about 20 of the 30 matches.
        ({"async_grep_max_bytes": 1100}, None),
    ],
)
async def test_grep_output_is_bounded_and_marked_truncated(
    world: World, limits: dict[str, int], kept: int | None
) -> None:
    lines = [f"2026-12-07 11:00:{i:02d} ERROR job {100 + i} failed somewhere far" for i in range(30)]
    (world.log_dir / "panda-big.log").write_text("\n".join(lines) + "\n")
    a = world.process("host-a:1:aaaa", **limits)
    await beat(a)
    request_id = await submit_grep(
        world, pattern="ERROR", log_filename="panda-big.log", service_name=SERVER_SERVICE
    )
    await a.run_once(logic.AGENT)
    (row,) = (await world.result(request_id))["results"]
    found = row["result"].split("\n")
    assert row["truncated"] is True and row["status"] == "done"
    assert found == lines[: len(found)]
    if kept is not None:
        assert len(found) == kept
    else:
        assert 10 < len(found) < 30 and len(row["result"]) <= 1100


async def test_grep_stops_at_its_time_limit(world: World) -> None:
    # A limit of a nanosecond has passed before the first line is read.
    a = world.process("host-a:1:aaaa", async_grep_timeout_seconds=1e-9)
    await beat(a)
    request_id = await submit_grep(
        world, pattern="ERROR", log_filename="panda-server.log", service_name=SERVER_SERVICE
    )
    await a.run_once(logic.AGENT)
    (row,) = (await world.result(request_id))["results"]
    assert (row["status"], row["result"], row["truncated"], row["return_code"]) == ("done", "", True, 1)
    assert row["error_msg"] == "search stopped after the time limit of 1e-09 s"


async def test_grep_with_no_match_is_done_with_return_code_1(world: World) -> None:
    a = world.process("host-a:1:aaaa")
    await beat(a)
    request_id = await submit_grep(
        world, pattern="CRITICAL", log_filename="panda-server.log", service_name=SERVER_SERVICE
    )
    await a.run_once(logic.AGENT)
    (row,) = (await world.result(request_id))["results"]
    assert (row["status"], row["result"], row["truncated"], row["return_code"]) == ("done", "", False, 1)


@pytest.mark.parametrize(
    ("setup", "error"),
    [
        ("missing", "log file 'panda-none.log' not found"),
        ("escape", "log file 'panda-none.log' not found"),
        ("no_log_dir", "log_dir is not configured on this machine"),
        ("bad_gzip", "cannot read log file 'panda-none.log.gz'"),
    ],
)
async def test_grep_that_cannot_search_fails_with_the_reason(
    world: World, tmp_path: Path, setup: str, error: str
) -> None:
    name = "panda-none.log.gz" if setup == "bad_gzip" else "panda-none.log"
    settings: dict[str, Any] = {}
    if setup == "escape":
        # A link leading out of the log directory is not followed.
        (tmp_path / "secret.log").write_text("ERROR secret\n")
        (world.log_dir / name).symlink_to(tmp_path / "secret.log")
    elif setup == "no_log_dir":
        settings["log_dir"] = None
    elif setup == "bad_gzip":
        (world.log_dir / name).write_bytes(b"ERROR this is not gzip\n")
    a = world.process("host-a:1:aaaa", **settings)
    await beat(a)
    request_id = await submit_grep(world, pattern="ERROR", log_filename=name, service_name=SERVER_SERVICE)
    await a.run_once(logic.AGENT)
    data = await world.result(request_id)
    (row,) = data["results"]
    assert data["overall_status"] == "complete"
    assert (row["status"], row["result"], row["return_code"]) == ("failed", None, 2)
    assert row["error_msg"].startswith(error) and row["stderr"] == row["error_msg"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "exactly one of service_name or machine_name must be provided"),
        (
            {"service_name": SERVER_SERVICE, "machine_name": "host-a:1:aaaa"},
            "exactly one of service_name or machine_name must be provided",
        ),
        (
            {"service_name": "", "machine_name": ""},
            "exactly one of service_name or machine_name must be provided",
        ),
        (
            {"service_name": SERVER_SERVICE, "log_filename": "panda-../../etc/passwd.log"},
            "invalid log_filename: must not contain path separators",
        ),
        (
            {"service_name": SERVER_SERVICE, "log_filename": "panda-a\\b.log"},
            "invalid log_filename: must not contain path separators",
        ),
        (
            {"service_name": SERVER_SERVICE, "log_filename": "server.log"},
            "invalid log_filename: must start with 'panda-' and end with '.log' or '.gz'",
        ),
        (
            {"service_name": SERVER_SERVICE, "log_filename": "panda-server.txt"},
            "invalid log_filename: must start with 'panda-' and end with '.log' or '.gz'",
        ),
        (
            {"service_name": SERVER_SERVICE, "log_filename": "panda-" + "x" * 250 + ".log"},
            "invalid log_filename: must be at most 255 characters",
        ),
        (
            {"service_name": SERVER_SERVICE, "pattern": "x" * 1001},
            "invalid pattern: must be at most 1000 characters",
        ),
        (
            {"service_name": SERVER_SERVICE, "pattern": "(a)\\1"},
            "invalid pattern: not an RE2 regular expression (no back-references or look-arounds)",
        ),
        ({"machine_name": "m" * 321}, "invalid machine_name: must be at most 320 characters"),
        ({"service_name": "nobody"}, "no alive machines found for service 'nobody'"),
    ],
)
async def test_grep_refusals(world: World, params: dict[str, Any], message: str) -> None:
    await beat(world.process("host-a:1:aaaa"))
    answer = await world.call(
        "submit_grep_request", **{"pattern": "ERROR", "log_filename": "panda-server.log", **params}
    )
    assert answer == {"success": False, "message": message, "data": None}
    async with world.api.state.db.transaction(write=False) as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(async_requests))).scalar() == 0


async def test_grep_needs_a_caller_in_the_allow_list(world: World) -> None:
    await beat(world.process("host-a:1:aaaa"))
    params = {"pattern": "ERROR", "log_filename": "panda-server.log", "service_name": SERVER_SERVICE}
    answer = await world.call("submit_grep_request", world.api.token_headers(user=OTHER), **params)
    assert answer == {"success": False, "message": f"'{OTHER}' is not authorized", "data": None}
    # The production role is no substitute for the allow-list.
    answer = await world.call("submit_grep_request", production(world), **params)
    assert answer == {"success": False, "message": "'Prod Operator' is not authorized", "data": None}


async def test_grep_pipeline_refusals(world: World) -> None:
    params = {"pattern": "ERROR", "log_filename": "panda-server.log", "service_name": SERVER_SERVICE}
    async with world.api.client(https=False) as client:
        response = await client.post("/api/v1/async_process/submit_grep_request", json=params)
    assert envelope(response) == {
        "success": False,
        "message": "SSL secure connection is required",
        "data": None,
    }
    async with world.api.client(headers=world.api.token_headers()) as client:
        response = await client.get("/api/v1/async_process/submit_grep_request", params=params)
        assert envelope(response)["message"] == "expecting POST, received GET"
        response = await client.post(
            "/api/v1/async_process/submit_grep_request", json={"log_filename": "panda-x.log"}
        )
        assert envelope(response)["message"] == "Argument error: missing a required argument: 'pattern'"


# --- sleep_echo -----------------------------------------------------------------------------------


async def test_sleep_echo_runs_once_on_one_machine_when_two_race(world: World) -> None:
    a, b = world.process("host-a:1:aaaa"), world.process("host-b:2:bbbb")
    await beat(a, b)
    request_id = await submit_sleep_echo(world, service_name=SERVER_SERVICE, message="hello", seconds=0)
    data = await world.result(request_id, production(world))
    assert data == {"overall_status": "pending", "expected_machines": [], "results": []}
    done = await asyncio.gather(a.run_once(logic.AGENT), b.run_once(logic.AGENT))
    assert sorted(done) == [0, 1]
    winner = "host-a:1:aaaa" if done[0] else "host-b:2:bbbb"
    assert await a.run_once(logic.AGENT) == 0 and await b.run_once(logic.AGENT) == 0
    data = await world.result(request_id, production(world))
    assert data["overall_status"] == "complete"
    assert data["expected_machines"] == [winner]
    (row,) = data["results"]
    assert (row["machine_name"], row["status"], row["result"], row["attempts"], row["return_code"]) == (
        winner,
        "done",
        "hello",
        1,
        0,
    )


async def test_sleep_echo_goes_to_its_service_only(world: World) -> None:
    server, agents = world.process("host-a:1:aaaa"), world.process("host-b:2:bbbb", AGENTS_SERVICE)
    await beat(server, agents)
    request_id = await submit_sleep_echo(world, service_name=AGENTS_SERVICE, message="hi", seconds=0)
    assert await server.run_once(logic.AGENT) == 0
    assert await agents.run_once(logic.AGENT) == 1
    assert (await world.result(request_id, production(world)))["expected_machines"] == ["host-b:2:bbbb"]


async def test_a_request_held_by_a_dead_machine_is_retried_elsewhere(world: World) -> None:
    a, b = world.process("host-a:1:aaaa"), world.process("host-b:2:bbbb")
    await beat(a, b)
    request_id = await submit_sleep_echo(world, service_name=SERVER_SERVICE, message="again", seconds=0)
    # a claims the request, then its process is killed before it records anything.
    async with world.api.state.db.transaction() as conn:
        work = await logic.take_work(conn, world.clock, a.context.this_machine, _limits(a))
    assert work is not None and work.attempt == 1
    data = await world.result(request_id, production(world))
    assert data["overall_status"] == "pending"
    assert [(row["machine_name"], row["status"]) for row in data["results"]] == [("host-a:1:aaaa", "running")]
    # While a's heartbeat is fresh nothing moves.
    assert await b.run_once(logic.AGENT) == 0
    world.clock.set(T0 + timedelta(seconds=61))
    await beat(b)
    assert await b.run_once(logic.AGENT) == 1
    data = await world.result(request_id, production(world))
    assert data["overall_status"] == "complete"
    assert data["expected_machines"] == ["host-b:2:bbbb"]
    rows = {row["machine_name"]: row for row in data["results"]}
    assert (rows["host-a:1:aaaa"]["status"], rows["host-a:1:aaaa"]["error_msg"]) == (
        "failed",
        "machine 'host-a:1:aaaa' stopped heartbeating during attempt 1",
    )
    assert (
        rows["host-b:2:bbbb"]["status"],
        rows["host-b:2:bbbb"]["result"],
        rows["host-b:2:bbbb"]["attempts"],
    ) == (
        "done",
        "again",
        2,
    )
    # The process taken for dead may still report: it changes nothing.
    outcome = logic.Outcome("done", "late", False, None, "", 0)
    async with world.api.state.db.transaction() as conn:
        assert not await logic.record(conn, world.clock, a.context.this_machine, work, outcome)
    assert (await world.result(request_id, production(world)))["results"] == data["results"]


async def test_attempts_are_bounded(world: World) -> None:
    a, b = world.process("host-a:1:aaaa"), world.process("host-b:2:bbbb", async_request_max_attempts=1)
    await beat(a, b)
    request_id = await submit_sleep_echo(world, service_name=SERVER_SERVICE, message="once", seconds=0)
    async with world.api.state.db.transaction() as conn:
        assert await logic.take_work(conn, world.clock, a.context.this_machine, _limits(a)) is not None
    world.clock.set(T0 + timedelta(seconds=61))
    await beat(b)
    assert await b.run_once(logic.AGENT) == 1  # the recovery
    assert await b.run_once(logic.AGENT) == 0
    data = await world.result(request_id, production(world))
    assert data["overall_status"] == "complete"
    assert data["expected_machines"] == ["host-a:1:aaaa"]
    (row,) = data["results"]
    assert (row["status"], row["error_msg"]) == (
        "failed",
        "machine 'host-a:1:aaaa' stopped heartbeating during attempt 1; no attempt left of 1",
    )


async def test_grep_rows_of_a_dead_machine_fail(world: World) -> None:
    a = world.process("host-a:1:aaaa")
    await beat(a)
    request_id = await submit_grep(
        world, pattern="ERROR", log_filename="panda-server.log", machine_name="host-x:9:gone"
    )
    assert await a.run_once(logic.AGENT) == 1
    data = await world.result(request_id)
    assert data["overall_status"] == "complete"
    (row,) = data["results"]
    assert (row["machine_name"], row["status"], row["error_msg"], row["attempts"]) == (
        "host-x:9:gone",
        "failed",
        "machine 'host-x:9:gone' is not alive",
        0,
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"service_name": ""}, "service_name must be provided"),
        ({"message": "x" * 101}, "invalid message: must be at most 100 characters"),
        ({"seconds": 61}, "invalid seconds: must be between 0 and 60"),
        ({"seconds": -1}, "invalid seconds: must be between 0 and 60"),
        ({"service_name": "nobody"}, "no alive machines found for service 'nobody'"),
        ({"seconds": "soon"}, "Type error: 'seconds' must be of type int, got str."),
    ],
)
async def test_sleep_echo_refusals(world: World, params: dict[str, Any], message: str) -> None:
    await beat(world.process("host-a:1:aaaa"))
    answer = await world.call(
        "submit_sleep_echo_request",
        production(world),
        **{"service_name": SERVER_SERVICE, "message": "hi", "seconds": 0, **params},
    )
    assert answer == {"success": False, "message": message, "data": None}


async def test_sleep_echo_needs_the_production_role(world: World) -> None:
    await beat(world.process("host-a:1:aaaa"))
    answer = await world.call("submit_sleep_echo_request", service_name=SERVER_SERVICE, message="hi")
    assert answer == PRODUCTION_REQUIRED


async def test_sleep_echo_default_sleep_is_ten_seconds(world: World) -> None:
    await beat(world.process("host-a:1:aaaa"))
    request_id = await submit_sleep_echo(world, service_name=SERVER_SERVICE, message="hi")
    async with world.api.state.db.transaction(write=False) as conn:
        request = await requests_db.get_request(conn, request_id)
    assert request is not None
    assert (request["parameters"], request["access"], request["requester"]) == (
        {"message": "hi", "seconds": 10},
        "production",
        "Prod Operator",
    )


# --- get_result -----------------------------------------------------------------------------------


async def test_get_result_of_an_unknown_request(world: World) -> None:
    answer = await world.call("get_result", request_id="no-such-request")
    assert answer == {"success": False, "message": "request_id 'no-such-request' not found", "data": None}


async def test_grep_results_are_for_the_requester_only(world: World) -> None:
    await beat(world.process("host-a:1:aaaa"))
    request_id = await submit_grep(
        world, pattern="ERROR", log_filename="panda-server.log", service_name=SERVER_SERVICE
    )
    for headers, reader in (
        (world.api.token_headers(user=OTHER), OTHER),
        (production(world), "Prod Operator"),
    ):
        answer = await world.call("get_result", headers, request_id=request_id)
        assert answer == {
            "success": False,
            "message": f"'{reader}' is not authorized to read results (access='owner', requester='{USER}')",
            "data": None,
        }


async def test_sleep_echo_results_are_for_the_requester_and_production(world: World) -> None:
    await beat(world.process("host-a:1:aaaa"))
    request_id = await submit_sleep_echo(world, service_name=SERVER_SERVICE, message="hi", seconds=0)
    assert (await world.result(request_id, production(world, "Other Operator")))[
        "overall_status"
    ] == "pending"
    answer = await world.call("get_result", request_id=request_id)
    assert answer == {
        "success": False,
        "message": f"'{USER}' is not authorized to read results "
        "(access='production', requester='Prod Operator')",
        "data": None,
    }


async def test_results_of_access_anyone_are_for_every_caller(world: World) -> None:
    async with world.api.state.db.transaction() as conn:
        await requests_db.insert_request(
            conn,
            request_id="open-request",
            kind=logic.GREP,
            requester=OTHER,
            access=logic.ANYONE,
            parameters={"pattern": "x", "log_filename": "panda-x.log"},
            service_name=None,
            machine_name="host-a:1:aaaa",
            expected_machines=["host-a:1:aaaa"],
            now=T0,
        )
    data = await world.result("open-request")
    assert (data["overall_status"], data["expected_machines"]) == ("pending", ["host-a:1:aaaa"])


async def test_get_result_needs_an_identity_and_get(world: World) -> None:
    async with world.api.client(https=False) as client:
        response = await client.get("/api/v1/async_process/get_result", params={"request_id": "x"})
    assert envelope(response) == {
        "success": False,
        "message": "SSL secure connection is required",
        "data": None,
    }
    async with world.api.client(headers=world.api.token_headers()) as client:
        response = await client.post("/api/v1/async_process/get_result", json={"request_id": "x"})
    assert envelope(response)["message"] == "expecting GET, received POST"


async def test_submission_and_result_rows_in_the_database(world: World) -> None:
    a = world.process("host-a:1:aaaa")
    await beat(a)
    request_id = await submit_grep(
        world, pattern="ERROR", log_filename="panda-server.log", service_name=SERVER_SERVICE
    )
    async with world.api.state.db.transaction(write=False) as conn:
        request = await requests_db.get_request(conn, request_id)
        count = (await conn.execute(sa.select(sa.func.count()).select_from(async_request_results))).scalar()
    assert request is not None
    assert (request["kind"], request["requester"], request["access"], request["service_name"]) == (
        "grep",
        USER,
        "owner",
        SERVER_SERVICE,
    )
    assert request["parameters"] == {"pattern": "ERROR", "log_filename": "panda-server.log"}
    assert count == 1


def _limits(process: AgentRunner) -> logic.AgentLimits:
    return logic.AgentLimits.from_settings(process.context.settings)
