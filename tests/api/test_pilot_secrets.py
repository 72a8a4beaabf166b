"""Secrets a pilot receives (domain.md §9.2): a useSecrets task's jobs carry the owner's secrets as
``secrets``; with a pilot-secrets owner configured every job carries ``pilotSecrets``, and so do
update_job answers; with get_proxy_key, jobs whose owner has a stored proxy carry credname/myproxy.
Only production callers get them."""

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


# --- proxy keys (get_proxy_key) -------------------------------------------------------------------

JANE_DN = "/DC=org/DC=example/OU=Users/CN=jdoe/CN=Jane Doe"
ROBOT = ("Harvester Robot", "production")


async def proxy_world(api: ApiServer) -> dict[str, str]:
    """Two activated jobs: Jane's (submitted with an RFC 3820 proxy; her proxy is stored) and
    another user's (only a production-role proxy stored). Returns each job's prodUserID by owner."""
    runner = await world(api)
    jane = api.cert_headers(JANE_DN, proxy=True)
    async with api.client(headers=jane) as client:
        body = envelope(
            await client.post(
                "/api/v1/task/submit", json={"task_parameters": task("jane", False), "parent_tid": None}
            )
        )
    assert body["success"] is True, body
    await submit(api, task("other", False))
    await runner.drain()
    async with api.state.db.transaction() as conn:
        owners = dict((await conn.execute(sa.select(jobs.c.prodUserName, jobs.c.prodUserID))).all())
        keyring = api.state.keyring.keyring()
        await secrets.store_credential(conn, FixedClock(), keyring, secrets.PROXY, JANE_DN, "", "JANE PEM")
        other = owners["Test User"]
        await secrets.store_credential(conn, FixedClock(), keyring, secrets.PROXY, other, "production", "X")
        await secrets.change_allowances(conn, FixedClock(), ROBOT[0], secrets.ALLOW_PROXY, allow=True)
    assert owners["Jane Doe"].startswith(JANE_DN + "/CN=")
    return owners


async def acquire_with_key(api: ApiServer, headers: dict[str, str], get_proxy_key: str | None) -> list[dict]:
    params = {"site_name": "TEST_PQ", "prod_source_label": "user", "n_jobs": 5}
    if get_proxy_key is not None:
        params["get_proxy_key"] = get_proxy_key
    async with api.client(headers=headers) as client:
        body = envelope(await client.post("/api/v1/pilot/acquire_jobs", json=params))
    assert body["success"] is True, body
    return body["data"]["jobs"]


@pytest.mark.parametrize("configured", [None, "https://bamboo.example.org:8443/"])
async def test_proxy_keys_name_where_the_owners_proxy_is_fetched(api_factory, configured) -> None:
    api = api_factory(public_https_url=configured)
    owners = await proxy_world(api)
    robot = api.token_headers(*ROBOT)
    dispatched = {job["prodUserID"]: job for job in await acquire_with_key(api, robot, "True")}
    jane, other = dispatched[owners["Jane Doe"]], dispatched[owners["Test User"]]
    expected_base = "https://bamboo.example.org:8443" if configured else "https://testserver"
    assert (jane["credname"], jane["myproxy"]) == (JANE_DN, expected_base)
    # No proxy without role stored for the other owner: no key at all.
    assert "credname" not in other and "myproxy" not in other
    # The key is what creds/get_proxy needs to answer the owner's proxy.
    async with api.client(headers=robot) as client:
        answer = envelope(await client.get("/api/v1/creds/get_proxy", params={"dn": jane["credname"]}))
    assert answer == {"success": True, "message": "", "data": {"user_proxy": "JANE PEM"}}


@pytest.mark.parametrize(
    ("caller", "get_proxy_key"),
    [("robot", None), ("robot", "False"), ("robot", ""), ("owner", "True")],
)
async def test_no_proxy_key_unless_asked_by_a_production_caller(api_factory, caller, get_proxy_key) -> None:
    api = api_factory()
    await proxy_world(api)
    headers = api.token_headers(*ROBOT) if caller == "robot" else api.cert_headers(JANE_DN, proxy=True)
    jobs_taken = await acquire_with_key(api, headers, get_proxy_key)
    assert jobs_taken
    for job in jobs_taken:
        assert "credname" not in job and "myproxy" not in job
