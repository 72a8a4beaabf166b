"""One `bamboo serve` on SQLite, killed with SIGKILL and restarted on the same home under load."""

from __future__ import annotations

import pytest

from tests.fault.conftest import MakeDeployment
from tests.fault.harness import LoadSize, kills_at, load_size, run_load

pytestmark = pytest.mark.fault

SIZE = load_size(
    LoadSize(clients=20, jobs=1_000, tasks=4, deadline_seconds=600),
    LoadSize(clients=100, jobs=10_000, tasks=10, deadline_seconds=3_600),
)


async def test_server_killed_twice_on_sqlite(make_deployment: MakeDeployment) -> None:
    # Jobs claimed by answers the kill swallowed come back through the sent watchdog (102).
    deployment = await make_deployment(
        "sqlite", BAMBOO_JOB_SENT_TIMEOUT_MINUTES="0.5", BAMBOO_JOB_WATCHDOG_PERIOD_SECONDS="5"
    )
    server = deployment.server()
    await server.start()
    disruption = kills_at((0.25, 0.6), SIZE, lambda: [server])
    result = await run_load(deployment, "SQLite, 1 server, killed twice", SIZE, disruption=disruption)
    result.check(deployment)
    assert server.starts == 3, "the server was not killed twice"
    assert result.dispatched >= SIZE.jobs
