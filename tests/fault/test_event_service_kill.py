"""An event-service task drained by concurrent consumer clients while the server is killed.

Consumers take ranges over HTTP, report them (some failed, some pilots die with ranges in hand)
and end their jobs; ES merge jobs are run as they come. The server (SQLite), or the server running
agents and the agents process (PostgreSQL, beside a second server), is killed with SIGKILL and
restarted twice during the load. Answers lost with a killed server leave ranges `sent` to a
consumer that never heard of them until it ends, consumer or merge jobs `sent` until the sent
watchdog fails them, and reports that may or may not have been written: the audit allows exactly
that, and checks that no range was in two consumers' hands at once, no range accepted finished was
lost or handed out again, every range and input file settled, no job stuck, the dataset counters
equal a recount, and the task done.
"""

from __future__ import annotations

import pytest

from tests.fault.conftest import MakeDeployment
from tests.fault.harness import EsSize, es_kills_at, load_size, run_es_load

pytestmark = pytest.mark.fault

SIZE = load_size(
    EsSize(
        clients=10,
        files=8,
        events_per_file=250,
        files_per_jobset=2,
        consumers_per_jobset=3,
        deadline_seconds=600,
    ),
    EsSize(
        clients=100,
        files=40,
        events_per_file=1_000,
        files_per_jobset=2,
        consumers_per_jobset=5,
        deadline_seconds=3_600,
    ),
)
# The second kill comes while the first jobsets are being merged.
KILLS = (0.25, 0.9)
# A consumer or merge job whose acquire_jobs answer died with the server stays `sent` until the
# job watchdog fails it (jobDispatcherErrorCode 102); a new consumer or merge job takes over.
SENT_TIMEOUT = {"BAMBOO_JOB_SENT_TIMEOUT_MINUTES": "0.25", "BAMBOO_JOB_WATCHDOG_PERIOD_SECONDS": "2"}
POOL = {"BAMBOO_DB_POOL_SIZE": "10"}


async def test_event_service_server_killed_twice_on_sqlite(make_deployment: MakeDeployment) -> None:
    deployment = await make_deployment("sqlite", **SENT_TIMEOUT)
    server = deployment.server()
    await server.start()
    disruption = es_kills_at(KILLS, SIZE, lambda: [server])
    result = await run_es_load(deployment, "ES, SQLite, 1 server, killed twice", SIZE, disruption=disruption)
    result.check(deployment)
    assert server.starts == 3, "the server was not killed twice"


async def test_event_service_server_and_agents_killed_twice(make_deployment: MakeDeployment) -> None:
    deployment = await make_deployment("postgresql", **POOL, **SENT_TIMEOUT)
    await deployment.server().start()
    await deployment.server("--no-agents").start()
    await deployment.agent_process().start()
    with_agents, agents = deployment.servers[0], deployment.agents[0]
    disruption = es_kills_at(KILLS, SIZE, lambda: [with_agents, agents])
    result = await run_es_load(
        deployment, "ES, PostgreSQL, 2 servers + agents, killed twice", SIZE, disruption=disruption
    )
    result.check(deployment)
    assert (with_agents.starts, agents.starts) == (3, 3), "the processes were not killed twice"
