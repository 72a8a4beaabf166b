"""Global shares through the API on both databases: a task's share at submission,
task/reassign_global_share, and the order pilots receive jobs in (domain.md §5.7, §6.4)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import sqlalchemy as sa

from bamboo.db.engine import Database
from bamboo.db.schema import jobs
from bamboo.logic import dispatch, shares
from bamboo.logic.dispatch import AcquireRequest, QueueStatusCache
from tests.api.conftest import ApiServer
from tests.api.test_task_admin import OWNER, PRODUCTION_REQUIRED, assert_type_error, post, task_row
from tests.api.test_task_flow import acquire, report, submit, world
from tests.tasks import NO_INPUT_TASK

__all__ = ["world"]

TREE: dict[str, Any] = {
    "default": "Analysis",
    "shares": [
        {
            "name": "Production",
            "value": 60,
            "children": [{"name": "MC", "value": 100, "prodsourcelabel": "managed$"}],
        },
        {"name": "Analysis", "value": 30, "prodsourcelabel": "user"},
        {"name": "Express", "value": 10, "processingtype": "express"},
    ],
}


async def load_tree(api: ApiServer, document: dict[str, Any] = TREE) -> None:
    async with api.state.db.transaction() as conn:
        await shares.load(conn, copy.deepcopy(document))


async def job_shares(api: ApiServer, task_id: int) -> dict[str, set[str | None]]:
    async with api.state.db.transaction() as conn:
        query = sa.select(jobs.c.jobStatus, jobs.c.gshare).where(jobs.c.jediTaskID == task_id)
        found: dict[str, set[str | None]] = {}
        for row in await conn.execute(query):
            found.setdefault(row[0], set()).add(row[1])
        return found


def fresh_share_order(api: ApiServer) -> None:
    """Forget the cached share order, as if its few seconds had passed."""
    api.state.queue_statuses = QueueStatusCache()


async def generated(world, *params: dict[str, Any]) -> list[int]:
    api, runner = world
    task_ids = [await submit(api, task, user=OWNER) for task in params]
    await runner.drain()
    return task_ids


def task(**changes: Any) -> dict[str, Any]:
    return {**NO_INPUT_TASK, **changes}


async def reassign(api: ApiServer, **params: Any) -> dict:
    return await post(api, "reassign_global_share", **params)


async def test_submission_assigns_a_leaf_and_jobs_inherit_it(world) -> None:
    api, _ = world
    await load_tree(api)
    by_rule, express, explicit, not_a_leaf = await generated(
        world,
        task(),
        task(processingType="express"),
        task(gshare="Express"),
        task(gshare="Production"),
    )
    assert (await task_row(api, by_rule))["gshare"] == "Analysis"
    # Analysis comes first in file order, so its label selector wins over the processingType one.
    assert (await task_row(api, express))["gshare"] == "Analysis"
    assert (await task_row(api, explicit))["gshare"] == "Express"
    assert (await task_row(api, not_a_leaf))["gshare"] == "Analysis"
    assert await job_shares(api, explicit) == {"activated": {"Express"}}


async def test_without_a_tree_the_gshare_parameter_is_kept(world) -> None:
    api, _ = world
    plain, named = await generated(world, task(), task(gshare="Anything"))
    assert (await task_row(api, plain))["gshare"] is None
    assert (await task_row(api, named))["gshare"] == "Anything"


async def test_reassign_moves_tasks_and_waiting_jobs(world) -> None:
    api, _ = world
    await load_tree(api)
    first, second, untouched = await generated(world, task(), task(), task())
    (running,) = await acquire(api)
    assert running["taskID"] == first
    await report(
        api, [{"job_id": running["PandaID"], "job_status": "running", "attempt_nr": running["attemptNr"]}]
    )
    body = await reassign(api, task_id_list=[first, second], share="MC", reassign_running_jobs=False)
    assert body == {"success": True, "message": None, "data": 0}
    assert (await task_row(api, first))["gshare"] == "MC"
    assert (await task_row(api, second))["gshare"] == "MC"
    assert (await task_row(api, untouched))["gshare"] == "Analysis"
    assert await job_shares(api, first) == {"running": {"Analysis"}, "activated": {"MC"}}
    assert await job_shares(api, second) == {"activated": {"MC"}}
    assert await job_shares(api, untouched) == {"activated": {"Analysis"}}
    body = await reassign(api, task_id_list=[first], share="Express", reassign_running_jobs=True)
    assert body == {"success": True, "message": None, "data": 0}
    assert await job_shares(api, first) == {"running": {"Express"}, "activated": {"Express"}}


async def test_reassign_refuses_a_share_that_is_not_a_leaf(world) -> None:
    api, _ = world
    (task_id,) = await generated(world, task())
    # No tree loaded: no share is a leaf.
    assert await reassign(api, task_id_list=[task_id], share="MC", reassign_running_jobs=False) == {
        "success": False,
        "message": "Share MC is not a leave share ",
        "data": 1,
    }
    await load_tree(api)
    for share in ("Production", "Nope", ""):
        body = await reassign(api, task_id_list=[task_id], share=share, reassign_running_jobs=False)
        assert body == {"success": False, "message": f"Share {share} is not a leave share ", "data": 1}
    body = await reassign(api, task_id_list=[task_id], share="x" * 5000, reassign_running_jobs=False)
    assert body == {"success": False, "message": f"Share {'x' * 64} is not a leave share ", "data": 1}
    assert (await task_row(api, task_id))["gshare"] is None


async def test_reassign_passes_over_unknown_tasks(world) -> None:
    api, _ = world
    await load_tree(api)
    (task_id,) = await generated(world, task())
    body = await reassign(api, task_id_list=[123, task_id, 123], share="MC", reassign_running_jobs=False)
    assert body == {"success": True, "message": None, "data": 0}
    assert (await task_row(api, task_id))["gshare"] == "MC"
    assert await reassign(api, task_id_list=[], share="MC", reassign_running_jobs=False) == body


async def test_reassign_refuses_bad_parameters(world) -> None:
    api, _ = world
    await load_tree(api)
    (task_id,) = await generated(world, task())
    assert_type_error(await reassign(api, task_id_list=[task_id], share="MC"), "reassign_running_jobs")
    assert_type_error(
        await reassign(api, task_id_list="abc", share="MC", reassign_running_jobs=False), "task_id_list"
    )
    assert_type_error(
        await reassign(api, task_id_list=[task_id], share=5, reassign_running_jobs=False), "share"
    )
    assert_type_error(
        await reassign(api, task_id_list=[task_id], share="MC", reassign_running_jobs="maybe"),
        "reassign_running_jobs",
    )
    too_many = list(range(shares.MAX_REASSIGNED_TASKS + 1))
    assert await reassign(api, task_id_list=too_many, share="MC", reassign_running_jobs=False) == {
        "success": False,
        "message": f"at most {shares.MAX_REASSIGNED_TASKS} task ids per call, got {len(too_many)}",
        "data": None,
    }
    body = await post(
        api,
        "reassign_global_share",
        production=False,
        task_id_list=[task_id],
        share="MC",
        reassign_running_jobs=False,
    )
    assert body == PRODUCTION_REQUIRED
    assert (await task_row(api, task_id))["gshare"] == "Analysis"


async def test_pilots_get_the_reassigned_share_first(world) -> None:
    api, _ = world
    await load_tree(api)
    favoured, reassigned = await generated(world, task(), task())
    for task_id, priority in ((favoured, 2000), (reassigned, 1)):
        assert (await post(api, "change_priority", task_id=task_id, priority=priority))["success"] is True
    # Same share: priority decides.
    fresh_share_order(api)
    assert [job["taskID"] for job in await acquire(api)] == [favoured]
    await reassign(api, task_id_list=[reassigned], share="MC", reassign_running_jobs=False)
    # MC (60 %) runs nothing and Analysis (30 %) runs one job: MC's low-priority jobs go first.
    fresh_share_order(api)
    assert [job["taskID"] for job in await acquire(api, n_jobs=3)] == [reassigned, reassigned, favoured]


async def test_pilots_get_the_under_used_share_first(world) -> None:
    api, _ = world
    await load_tree(api, {"default": "A", "shares": [{"name": "A", "value": 50}, {"name": "B", "value": 50}]})
    in_a, in_b = await generated(world, task(gshare="A"), task(gshare="B"))
    await post(api, "change_priority", task_id=in_a, priority=2000)
    await post(api, "change_priority", task_id=in_b, priority=1)
    order = []
    for _ in range(4):
        fresh_share_order(api)
        order.extend(job["taskID"] for job in await acquire(api))
    # Equal targets: A (first in the file) while both run as many jobs, else the one running fewer.
    assert order == [in_a, in_b, in_a, in_b]


async def test_the_share_order_is_cached_for_a_few_seconds(world) -> None:
    api, _ = world
    await load_tree(api, {"default": "A", "shares": [{"name": "A", "value": 50}, {"name": "B", "value": 50}]})
    in_a, in_b = await generated(world, task(gshare="A"), task(gshare="B"))
    await post(api, "change_priority", task_id=in_a, priority=1)
    await post(api, "change_priority", task_id=in_b, priority=2000)
    api.state.queue_statuses = QueueStatusCache(ttl_seconds=3600)
    first = await acquire(api)
    second = await acquire(api)
    # The order computed for the first call (A first, nothing running) still holds.
    assert [job["taskID"] for job in first + second] == [in_a, in_a]
    fresh_share_order(api)
    assert [job["taskID"] for job in await acquire(api)] == [in_b]


async def test_change_priority_reorders_waiting_jobs(world) -> None:
    api, _ = world
    await load_tree(api)
    older, newer = await generated(world, task(), task())
    await post(api, "change_priority", task_id=older, priority=1000)
    await post(api, "change_priority", task_id=newer, priority=1001)
    assert [job["taskID"] for job in await acquire(api)] == [newer]
    await post(api, "change_priority", task_id=older, priority=5000)
    assert [job["taskID"] for job in await acquire(api, n_jobs=3)] == [older, older, newer]


async def test_jobs_of_shares_outside_the_tree_come_last(world) -> None:
    api, _ = world
    # Submitted before any tree exists: its jobs have no share.
    (unshared,) = await generated(world, task())
    await load_tree(api)
    (shared,) = await generated(world, task())
    await post(api, "change_priority", task_id=unshared, priority=5000)
    await post(api, "change_priority", task_id=shared, priority=1)
    fresh_share_order(api)
    assert [job["taskID"] for job in await acquire(api, n_jobs=3)] == [shared, shared, unshared]
    # Left alone at the queue, they go by priority as without shares.
    fresh_share_order(api)
    assert [job["taskID"] for job in await acquire(api, n_jobs=3)] == [unshared]


async def test_concurrent_acquirers_with_shares_get_every_job_once(db: Database, clock) -> None:
    """Dispatch by share reads several shares per call; jobs still go to exactly one caller."""
    async with db.transaction() as conn:
        await shares.load(
            conn,
            {
                "default": "A",
                "shares": [
                    {"name": "A", "value": 50},
                    {"name": "B", "value": 30},
                    {"name": "C", "value": 20},
                ],
            },
        )
        await conn.execute(
            sa.insert(jobs),
            [
                {
                    "PandaID": 700_000 + i,
                    "jobStatus": "activated",
                    "computingSite": "CONC_PQ",
                    "prodSourceLabel": "user",
                    "currentPriority": i % 5,
                    "attemptNr": 1,
                    "jobName": f"job{i}",
                    "gshare": ("A", "B", "C", None)[i % 4],
                    "modificationTime": clock.now(),
                }
                for i in range(600)
            ],
        )
    # A short cache period so the order changes while the queue drains.
    statuses = QueueStatusCache(ttl_seconds=0.01)
    received: list[int] = []

    async def acquirer(batch: int) -> None:
        while True:
            async with db.transaction() as conn:
                request = AcquireRequest(site_name="CONC_PQ", prod_source_label="user", n_jobs=batch)
                got = await dispatch.acquire(conn, clock, request, statuses)
            if not got:
                return
            received.extend(job["PandaID"] for job in got)

    await asyncio.gather(*(acquirer(1 + i % 7) for i in range(12)))
    assert sorted(received) == list(range(700_000, 700_600))


async def test_a_gshare_that_is_not_a_string_names_no_share(world) -> None:
    api, _ = world
    (task_id,) = await generated(world, task(gshare=5))
    assert (await task_row(api, task_id))["gshare"] is None
