"""Secrets a pilot receives (domain.md §9.2): a useSecrets task's jobs carry the owner's secrets as
``secrets``; with a pilot-secrets owner configured every job carries ``pilotSecrets``, and so do
update_job answers. Only production callers get them."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from bamboo.agents.runner import AgentContext, AgentRunner
from bamboo.db.schema import jobs, tasks
from bamboo.logic import queues, secrets
from tests.api.conftest import ApiServer
from tests.api.test_task_flow import acquire, envelope, report, submit
from tests.conftest import FixedClock
from tests.tasks import NO_INPUT_TASK

OWNER_SECRETS = {"MB_PASSWORD": "owner-pass"}
PILOT_SECRETS = {"pilot_key": "pilot-value"}
LIMITS = secrets.SecretLimits(max_value_bytes=1000, max_user_bytes=10000, max_keys=10)


async def world(api: ApiServer) -> AgentRunner:
    async with api.state.db.transaction() as conn:
        await queues.put(conn, api.state.clock, {"name": "TEST_PQ", "type": "unified", "corecount": 1})
        keyring = api.state.keyring.keyring()
        for owner, values in (("Test User", OWNER_SECRETS), ("Pilot Owner", PILOT_SECRETS)):
            for key, value in values.items():
                await secrets.set_user_secret(conn, FixedClock(), keyring, LIMITS, owner, key, value)
    return AgentRunner(AgentContext(api.state.db, api.state.clock, api.state.dm))


def task(name: str, use_secrets: bool) -> dict:
    params = {**NO_INPUT_TASK, "taskName": f"user.testuser.{name}/", "nEvents": 2}
    if use_secrets:
        params["useSecrets"] = True
    return params


async def test_jobs_carry_secrets(api_factory) -> None:
    api = api_factory(pilot_secrets_owner="Pilot Owner")
    runner = await world(api)
    with_secrets = await submit(api, task("with", True))
    without = await submit(api, task("without", False))
    await runner.drain()
    async with api.state.db.transaction(write=False) as conn:
        rules = dict((await conn.execute(sa.select(tasks.c.jediTaskID, tasks.c.splitRule))).all())
        handling = dict((await conn.execute(sa.select(jobs.c.jediTaskID, jobs.c.specialHandling))).all())
    assert "ST=1" in rules[with_secrets].split(",") and "ST" not in (rules[without] or "")
    assert handling == {with_secrets: "us", without: None}
    dispatched = {job["taskID"]: job for job in await acquire(api, n_jobs=5)}
    assert json.loads(dispatched[with_secrets]["secrets"]) == OWNER_SECRETS
    assert "secrets" not in dispatched[without]
    for job in dispatched.values():
        assert isinstance(job["pilotSecrets"], str)
        assert json.loads(job["pilotSecrets"]) == PILOT_SECRETS
    job = dispatched[with_secrets]
    update = {"job_id": job["PandaID"], "job_status": "running", "attempt_nr": 1, "site_name": "TEST_PQ"}
    (answer,) = await report(api, [update])
    assert answer["data"]["StatusCode"] == 0
    assert json.loads(answer["data"]["pilotSecrets"]) == PILOT_SECRETS


async def test_without_pilot_owner_or_production_role_no_secrets_travel(api_factory) -> None:
    api = api_factory()
    runner = await world(api)
    await submit(api, task("with", True))
    await submit(api, task("again", True))
    await runner.drain()
    (production,) = await acquire(api)
    assert json.loads(production["secrets"]) == OWNER_SECRETS and "pilotSecrets" not in production
    # The owner's own pilot (no production role) takes its job without any secret in it.
    async with api.client(headers=api.token_headers("test user")) as client:
        body = envelope(
            await client.post(
                "/api/v1/pilot/acquire_jobs", json={"site_name": "TEST_PQ", "prod_source_label": "user"}
            )
        )
    (own,) = body["data"]["jobs"]
    assert "secrets" not in own and "pilotSecrets" not in own
    update = {"job_id": production["PandaID"], "job_status": "running", "attempt_nr": 1}
    (answer,) = await report(api, [update])
    assert answer["data"] == {"StatusCode": 0, "command": "NULL"}


@pytest.mark.parametrize("broken", ["keyring", "row"])
async def test_unreadable_secrets(api_factory, broken: str) -> None:
    api = api_factory(pilot_secrets_owner="Pilot Owner")
    runner = await world(api)
    await submit(api, task("with", True))
    await runner.drain()
    if broken == "keyring":
        # No keyring: nothing is handed out, so no job leaves without its secrets.
        api.state.keyring.path.unlink()
        async with api.client(headers=api.token_headers("Harvester Robot", role="production")) as client:
            body = envelope(
                await client.post(
                    "/api/v1/pilot/acquire_jobs", json={"site_name": "TEST_PQ", "prod_source_label": "user"}
                )
            )
        assert body == {"success": False, "message": "secrets are unavailable on this server", "data": None}
        return
    # One owner's row that does not open costs that owner's secrets only.
    async with api.state.db.transaction() as conn:
        await conn.execute(sa.text("UPDATE user_secrets SET owner = 'Elsewhere' WHERE owner = 'Test User'"))
        await conn.execute(sa.text("UPDATE user_secrets SET owner = 'Test User' WHERE owner = 'Pilot Owner'"))
    (job,) = await acquire(api)
    assert job["secrets"] == "{}"
