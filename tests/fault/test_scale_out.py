"""Two `bamboo serve` processes and one `bamboo agents` process on one PostgreSQL database.

Pilots spread over both servers drain no-input tasks; every job must be handed out once, every
acknowledged report kept and every task end, also while the server running agents and the agents
process are killed with SIGKILL and restarted twice during the load.
"""

from __future__ import annotations

import pytest

from tests.fault.conftest import MakeDeployment
from tests.fault.harness import Deployment, LoadSize, kills_at, load_size, run_load

pytestmark = pytest.mark.fault

SIZE = load_size(
    LoadSize(clients=20, jobs=1_000, tasks=4, deadline_seconds=600),
    LoadSize(clients=100, jobs=10_000, tasks=10, deadline_seconds=3_600),
)
# A job whose acquire_jobs answer died with a killed server stays `sent`: the watchdog fails it
# (jobDispatcherErrorCode 102) after this long, and its task makes a new job.
SENT_TIMEOUT = {"BAMBOO_JOB_SENT_TIMEOUT_MINUTES": "0.5", "BAMBOO_JOB_WATCHDOG_PERIOD_SECONDS": "5"}
# Each process holds at most this many connections: the database server is shared (requests
# beyond wait for a pooled connection).
POOL = {"BAMBOO_DB_POOL_SIZE": "10"}


async def start_scale_out(make_deployment: MakeDeployment, **env: str) -> Deployment:
    deployment = await make_deployment("postgresql", **POOL, **env)
    await deployment.server().start()
    await deployment.server("--no-agents").start()
    await deployment.agent_process().start()
    return deployment


async def test_two_servers_and_an_agents_process(make_deployment: MakeDeployment) -> None:
    deployment = await start_scale_out(make_deployment)
    result = await run_load(deployment, "PostgreSQL, 2 servers + agents", SIZE)
    result.check(deployment)
    assert result.dispatched >= SIZE.jobs


async def test_server_and_agents_killed_twice(make_deployment: MakeDeployment) -> None:
    deployment = await start_scale_out(make_deployment, **SENT_TIMEOUT)
    with_agents, agents = deployment.servers[0], deployment.agents[0]
    disruption = kills_at((0.25, 0.6), SIZE, lambda: [with_agents, agents])
    result = await run_load(
        deployment, "PostgreSQL, 2 servers + agents, killed twice", SIZE, disruption=disruption
    )
    result.check(deployment)
    assert (with_agents.starts, agents.starts) == (3, 3), "the processes were not killed twice"
    assert result.dispatched >= SIZE.jobs
