"""Harvester commands and target slots through the API, on both databases: acquire/acknowledge,
sweeps, target slots and how they steer pilot/acquire_jobs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import sqlalchemy as sa

from bamboo.db import harvester_commands as commands_db
from bamboo.db.schema import harvester_slots, harvester_worker_stats, harvester_workers, jobs, tasks
from bamboo.logic import harvester_commands, queues
from tests.api.conftest import ApiServer
from tests.api.test_pilot_endpoints import PRODUCTION_REQUIRED, set_job, take, taken, two_jobs
from tests.api.test_task_flow import envelope, submit, world
from tests.conftest import FixedClock
from tests.tasks import NO_INPUT_TASK

__all__ = ["world"]

ROBOT = ("Harvester Robot", "production")
T0 = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
OK = {"success": True, "message": "", "data": None}


async def call(
    api: ApiServer, name: str, as_user: str | None = ROBOT[0], role: str | None = ROBOT[1], **params
):
    headers = api.token_headers(as_user, role=role) if as_user else None
    async with api.client(headers=headers) as client:
        return envelope(await client.post(f"/api/v1/harvester/{name}", json=params))


async def add_queue(api: ApiServer, name: str, **spec) -> None:
    async with api.state.db.transaction() as conn:
        await queues.put(conn, api.state.clock, {"name": name, "type": "unified", **spec})


async def all_commands(api: ApiServer) -> list[dict]:
    async with api.state.db.transaction(write=False) as conn:
        return await commands_db.commands_of(conn)


async def add_worker(api: ApiServer, harvester_id: str, worker_id: int, site: str, when: datetime) -> None:
    async with api.state.db.transaction() as conn:
        await conn.execute(
            sa.insert(harvester_workers).values(
                harvesterID=harvester_id,
                workerID=worker_id,
                computingSite=site,
                status="running",
                lastUpdate=when,
            )
        )


SWEEP = {"status_list": ["submitted", "idle"], "ce_list": [], "submission_host_list": ["sh1"]}


# --- commands ---------------------------------------------------------------------------------------


async def test_sweep_then_acquire_then_acknowledge(world) -> None:
    api, _ = world
    api.state.clock = FixedClock(T0)
    await add_queue(
        api, "PQ_A", harvester="harv-1", queues=[{"ce_endpoint": "ce1:9619"}, {"ce_endpoint": "ce2"}]
    )
    assert await call(api, "add_sweep_command", panda_queue="PQ_A", **SWEEP) == OK
    api.state.clock.set(T0 + timedelta(seconds=1))
    sweep = {**SWEEP, "ce_list": ["ce2", "other-ce"]}
    assert await call(api, "add_sweep_command", panda_queue="PQ_A", **sweep) == OK
    assert await call(api, "acquire_commands", harvester_id="harv-2", n_commands=10) == {**OK, "data": []}
    first = await call(api, "acquire_commands", harvester_id="harv-1", n_commands=1)
    assert first["success"] is True
    (command,) = first["data"]
    assert command == {
        "command_id": command["command_id"],
        "command": "KILL_WORKERS",
        "params": {
            "status": ["submitted", "idle"],
            "computingSite": ["PQ_A"],
            "computingElement": "ALL",
            "submissionHost": ["sh1"],
        },
        "ack_requested": 0,
        "creation_date": "2026-11-30T12:00:00",
    }
    (second,) = (await call(api, "acquire_commands", harvester_id="harv-1", n_commands=10))["data"]
    assert second["params"]["computingElement"] == ["ce2"]
    assert second["creation_date"] == "2026-11-30T12:00:01"
    assert (await call(api, "acquire_commands", harvester_id="harv-1", n_commands=10))["data"] == []
    assert [row["status"] for row in await all_commands(api)] == ["retrieved", "retrieved"]
    ids = [command["command_id"], second["command_id"], 999_999]
    assert await call(api, "acknowledge_commands", command_ids=ids) == OK
    assert [row["status"] for row in await all_commands(api)] == ["acknowledged", "acknowledged"]


async def test_identical_waiting_sweep_is_not_queued_twice_but_a_different_one_is(world) -> None:
    api, _ = world
    await add_queue(api, "PQ_A", harvester="harv-1")
    assert await call(api, "add_sweep_command", panda_queue="PQ_A", **SWEEP) == OK
    assert await call(api, "add_sweep_command", panda_queue="PQ_A", **SWEEP) == OK
    assert len(await all_commands(api)) == 1
    assert (
        await call(api, "add_sweep_command", panda_queue="PQ_A", **{**SWEEP, "status_list": ["running"]})
        == OK
    )
    assert len(await all_commands(api)) == 2
    # Once fetched, the same sweep asked again is a new command.
    await call(api, "acquire_commands", harvester_id="harv-1", n_commands=5)
    assert await call(api, "add_sweep_command", panda_queue="PQ_A", **SWEEP) == OK
    assert [row["status"] for row in await all_commands(api)] == ["retrieved", "retrieved", "new"]


async def test_a_new_target_replaces_an_unfetched_one(world) -> None:
    api, _ = world
    async with api.state.db.transaction() as conn:
        await harvester_commands.set_n_workers(
            conn, api.state.clock, "harv-1", "PQ_A", {"managed": {"SCORE": 3}}
        )
        await harvester_commands.set_n_workers(
            conn, api.state.clock, "harv-1", "PQ_A", {"managed": {"SCORE": 5}}
        )
    (only,) = await all_commands(api)
    assert (only["command"], orjson.loads(only["params"])) == (
        "SET_N_WORKERS_JOBTYPE:PQ_A",
        {"managed": {"SCORE": 5}},
    )


async def test_the_serving_harvester_falls_back_to_the_last_reporter(world) -> None:
    api, _ = world
    await add_queue(api, "PQ_B")
    assert await call(api, "add_sweep_command", panda_queue="PQ_B", **SWEEP) == {
        "success": False,
        "message": "Queue not served by any harvester ID",
        "data": None,
    }
    await add_worker(api, "harv-old", 1, "PQ_B", T0)
    await add_worker(api, "harv-new", 7, "PQ_B", T0 + timedelta(minutes=5))
    await add_worker(api, "harv-other", 3, "PQ_C", T0 + timedelta(hours=1))
    assert await call(api, "add_sweep_command", panda_queue="PQ_B", **SWEEP) == OK
    assert [row["harvester_ID"] for row in await all_commands(api)] == ["harv-new"]


async def test_sweep_failures(world) -> None:
    api, _ = world
    await add_queue(api, "PQ_A", harvester="harv-1", queues=[{"ce_endpoint": "ce1"}])
    assert await call(api, "add_sweep_command", panda_queue="NO_SUCH", **SWEEP) == {
        "success": False,
        "message": "Error retrieving queue configuration from DB",
        "data": None,
    }
    bad = {
        "status_list": (["dancing"], "unknown worker status 'dancing'"),
        "ce_list": (["elsewhere"], "none of the CEs in ce_list serves queue PQ_A"),
        "submission_host_list": (["x" * 129], "submission_host_list entries must be non-empty strings"),
    }
    for key, (value, message) in bad.items():
        body = await call(api, "add_sweep_command", panda_queue="PQ_A", **{**SWEEP, key: value})
        assert body["success"] is False and body["message"].startswith(message), body
    empty = await call(api, "add_sweep_command", panda_queue="PQ_A", **{**SWEEP, "status_list": []})
    assert empty["message"] == "status_list must name at least one worker status"
    wrong_type = await call(api, "add_sweep_command", panda_queue="PQ_A", **{**SWEEP, "ce_list": "ce1"})
    assert wrong_type["success"] is False and "'ce_list'" in wrong_type["message"]
    assert await all_commands(api) == []


async def test_acquire_and_acknowledge_refusals(world) -> None:
    api, _ = world
    for name, params in (
        ("acquire_commands", {"harvester_id": "h", "n_commands": 1}),
        ("acknowledge_commands", {"command_ids": [1]}),
        ("add_sweep_command", {"panda_queue": "PQ_A", **SWEEP}),
        ("add_target_slots", {"panda_queue": "TEST_PQ", "slots": 0}),
    ):
        assert await call(api, name, as_user="Jane Doe", role=None, **params) == PRODUCTION_REQUIRED
    zero = await call(api, "acquire_commands", harvester_id="h", n_commands=0)
    assert zero == {"success": False, "message": "n_commands must be at least 1", "data": None}
    long_id = await call(api, "acquire_commands", harvester_id="h" * 51, n_commands=1)
    assert long_id["message"] == "harvester_id must be 1 to 50 characters"
    missing = await call(api, "acquire_commands", harvester_id="h")
    assert missing["message"] == "Argument error: missing a required argument: 'n_commands'"
    not_ints = await call(api, "acknowledge_commands", command_ids=["1"])
    assert not_ints == {
        "success": False,
        "message": "command_ids must be positive integers, got '1'",
        "data": None,
    }
    too_many = await call(api, "acknowledge_commands", command_ids=list(range(1, 1002)))
    assert too_many["message"] == "command_ids may list at most 1000 ids"


async def test_concurrent_acquires_never_hand_out_a_command_twice(world) -> None:
    api, _ = world
    async with api.state.db.transaction() as conn:
        for number in range(60):
            await commands_db.insert_command(
                conn,
                "harv-1",
                "KILL_WORKERS",
                f'{{"n": {number}}}',
                T0 + timedelta(seconds=number),
                supersede=False,
            )
    answers = await asyncio.gather(
        *(call(api, "acquire_commands", harvester_id="harv-1", n_commands=7) for _ in range(12))
    )
    handed = [command["command_id"] for body in answers for command in body["data"]]
    assert len(handed) == len(set(handed)) == 60
    for body in answers:
        stamps = [command["creation_date"] for command in body["data"]]
        assert stamps == sorted(stamps)


# --- target slots -----------------------------------------------------------------------------------


async def slot_rows(api: ApiServer) -> list[tuple]:
    async with api.state.db.transaction(write=False) as conn:
        rows = (await conn.execute(sa.select(harvester_slots).order_by(harvester_slots.c.gshare))).all()
    return [(r.pandaQueueName, r.gshare, r.resourceType, r.numSlots, r.expirationTime) for r in rows]


async def test_add_target_slots_upserts_expires_in_days_and_deletes(world) -> None:
    api, _ = world
    api.state.clock = FixedClock(T0)
    body = await call(api, "add_target_slots", panda_queue="TEST_PQ", slots=10, expiration_date="3")
    assert body == {
        "success": True,
        "message": "set numSlots=10 for PQ=TEST_PQ gshare=None resource=None",
        "data": None,
    }
    assert await slot_rows(api) == [("TEST_PQ", "", "", 10, T0 + timedelta(days=3))]
    body = await call(
        api, "add_target_slots", panda_queue="TEST_PQ", slots=0, global_share="Express", resource_type="MCORE"
    )
    assert body["message"] == "set numSlots=0 for PQ=TEST_PQ gshare=Express resource=MCORE"
    await call(api, "add_target_slots", panda_queue="TEST_PQ", slots=4)
    assert await slot_rows(api) == [("TEST_PQ", "", "", 4, None), ("TEST_PQ", "Express", "MCORE", 0, None)]
    body = await call(api, "add_target_slots", panda_queue="TEST_PQ", slots=-1)
    assert body["message"] == "set numSlots=-1 for PQ=TEST_PQ gshare=None resource=None"
    assert await slot_rows(api) == [("TEST_PQ", "Express", "MCORE", 0, None)]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"panda_queue": "NO_SUCH", "slots": 1}, "unknown queue 'NO_SUCH'"),
        ({"panda_queue": "TEST_PQ", "slots": -2}, "slots must be -1 (delete), 0 or a positive number"),
        (
            {"panda_queue": "TEST_PQ", "slots": 1, "expiration_date": "soon"},
            "expiration_date must be a whole number",
        ),
        (
            {"panda_queue": "TEST_PQ", "slots": 1, "expiration_date": "0"},
            "expiration_date must be between 1 and",
        ),
        ({"panda_queue": "TEST_PQ", "slots": 1, "global_share": "g" * 33}, "global_share must be at most 32"),
        ({"panda_queue": "TEST_PQ", "slots": "many"}, "Type error: 'slots'"),
        ({"slots": 1}, "Argument error: missing a required argument: 'panda_queue'"),
    ],
)
async def test_add_target_slots_refuses_bad_input(world, params: dict, message: str) -> None:
    api, _ = world
    body = await call(api, "add_target_slots", **params)
    assert body["success"] is False and body["message"].startswith(message), body
    assert await slot_rows(api) == []


async def test_zero_slots_stop_dispatch_and_expired_or_deleted_ones_do_not(world) -> None:
    api, (first, second) = await two_jobs(world)
    api.state.clock = FixedClock(datetime.now(UTC))
    await call(api, "add_target_slots", panda_queue="TEST_PQ", slots=0, expiration_date="1")
    assert taken(await take(api, n_jobs=5)) == []
    api.state.clock.set(api.state.clock.now() + timedelta(days=1, seconds=1))
    assert taken(await take(api)) == [first]
    await call(api, "add_target_slots", panda_queue="TEST_PQ", slots=0)
    assert taken(await take(api)) == []
    await call(api, "add_target_slots", panda_queue="TEST_PQ", slots=-1)
    assert taken(await take(api)) == [second]


async def test_slots_of_one_kind_block_only_that_kind(world) -> None:
    api, (first, second) = await two_jobs(world)
    await set_job(api, first, gshare="Express", resource_type="MCORE")
    await set_job(api, second, gshare=None, resource_type="SCORE")
    await call(api, "add_target_slots", panda_queue="TEST_PQ", slots=0, global_share="Express")
    assert taken(await take(api, n_jobs=5)) == [second]
    await set_job(api, second, jobStatus="activated")
    await call(api, "add_target_slots", panda_queue="TEST_PQ", slots=0, resource_type="SCORE")
    assert taken(await take(api, n_jobs=5)) == []


async def test_positive_slots_cap_jobs_holding_a_slot(world) -> None:
    api, (first, second) = await two_jobs(world)
    await call(api, "add_target_slots", panda_queue="TEST_PQ", slots=1)
    assert taken(await take(api, n_jobs=5)) == [first]  # the cap, not n_jobs, bounds the call
    assert taken(await take(api, n_jobs=5)) == []  # first is sent: the slot is held
    await set_job(api, first, jobStatus="holding")  # ended: the slot is free again
    assert taken(await take(api, n_jobs=5)) == [second]


# --- brokerage --------------------------------------------------------------------------------------


async def sites_of_new_jobs(api: ApiServer, runner, n_tasks: int) -> set[str]:
    task_ids = [
        await submit(api, {**NO_INPUT_TASK, "site": "TEST_PQ,OTHER_PQ", "taskName": f"user.t.{n}/"})
        for n in range(n_tasks)
    ]
    await runner.drain()
    async with api.state.db.transaction(write=False) as conn:
        query = sa.select(jobs.c.computingSite).where(jobs.c.jediTaskID.in_(task_ids))
        return set((await conn.execute(query)).scalars())


async def test_brokerage_avoids_a_queue_with_zero_slots(world) -> None:
    api, runner = world
    await add_queue(api, "OTHER_PQ")
    await call(api, "add_target_slots", panda_queue="TEST_PQ", slots=0)
    assert await sites_of_new_jobs(api, runner, 4) == {"OTHER_PQ"}
    await call(api, "add_target_slots", panda_queue="OTHER_PQ", slots=0, resource_type="SCORE")
    task_id = await submit(api, {**NO_INPUT_TASK, "site": "TEST_PQ,OTHER_PQ", "taskName": "user.t.closed/"})
    await runner.drain()
    async with api.state.db.transaction(write=False) as conn:
        task = (
            await conn.execute(
                sa.select(tasks.c.status, tasks.c.errorDialog).where(tasks.c.jediTaskID == task_id)
            )
        ).one()
    assert task.status == "pending"
    assert "OTHER_PQ has 0 target slots for" in task.errorDialog and "SCORE jobs" in task.errorDialog


async def test_brokerage_prefers_queues_with_workers_waiting(world) -> None:
    api, runner = world
    await add_queue(api, "OTHER_PQ")
    now = datetime.now(UTC)
    async with api.state.db.transaction() as conn:
        for site, status, when in (
            ("OTHER_PQ", "idle", now),
            ("TEST_PQ", "submitted", now - timedelta(hours=5)),  # too old to count
            ("TEST_PQ", "running", now),  # busy, not waiting
        ):
            await conn.execute(
                sa.insert(harvester_worker_stats).values(
                    harvester_ID="harv-1",
                    computingSite=site,
                    jobType="user",
                    resourceType="SCORE",
                    status=status,
                    n_workers=100,
                    lastUpdate=when,
                )
            )
    assert await sites_of_new_jobs(api, runner, 6) == {"OTHER_PQ"}


# --- pilot streaming --------------------------------------------------------------------------------


async def test_pilot_streaming_sends_worker_targets_once_per_period(world) -> None:
    api, runner = world
    clock = FixedClock(datetime.now(UTC).replace(microsecond=0))
    api.state.clock = runner.context.clock = clock
    await add_queue(api, "STREAM_PQ", harvester="harv-s", pilot_streaming=True)
    await add_queue(api, "QUIET_PQ", harvester="harv-s")  # does not ask for it
    await submit(api, {**NO_INPUT_TASK, "site": "STREAM_PQ"})
    await submit(api, {**NO_INPUT_TASK, "site": "QUIET_PQ", "taskName": "user.t.quiet/"})
    async with api.state.db.transaction() as conn:
        await conn.execute(
            sa.insert(harvester_worker_stats).values(
                harvester_ID="harv-s",
                computingSite="STREAM_PQ",
                jobType="user",
                resourceType="SCORE",
                status="submitted",
                n_workers=1,
                lastUpdate=clock.now(),
            )
        )
    await runner.drain()
    (command,) = await all_commands(api)
    # Two activated user SCORE jobs: T = max(min(75, 2), 5) = 5 cores, all for them, 1 worker queued.
    assert (command["harvester_ID"], command["command"], orjson.loads(command["params"])) == (
        "harv-s",
        "SET_N_WORKERS_JOBTYPE:STREAM_PQ",
        {"user": {"SCORE": 4}, "managed": {"SCORE": 1}},
    )
    assert await runner.run_once("pilot_streaming") == 0  # not due again yet
    clock.set(clock.now() + timedelta(seconds=api.state.settings.pilot_streaming_period_seconds))
    await take(api, site_name="STREAM_PQ", n_jobs=5)
    assert await runner.run_once("pilot_streaming") == 1
    (command,) = await all_commands(api)  # the unfetched target was replaced
    assert orjson.loads(command["params"]) == {"managed": {"SCORE": 5}}
    fetched = await call(api, "acquire_commands", harvester_id="harv-s", n_commands=5)
    assert fetched["data"][0]["params"] == {"managed": {"SCORE": 5}}
