"""Fixtures of the fault tests: deployments of real processes, and the audits in the summary.

Every deployment gets its own home under the test's temporary directory and, on PostgreSQL, its
own database on the machine's server (created here, dropped at the end; the server itself is
never stopped or reconfigured).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import AUDIT_PROPERTY, create_postgres_database, drop_postgres_database
from tests.fault.harness import AUDITS, Deployment

MakeDeployment = Callable[..., Awaitable[Deployment]]


@pytest.fixture
async def make_deployment(tmp_path: Path) -> AsyncIterator[MakeDeployment]:
    """``await make_deployment(backend, **env)``: a prepared deployment with no process running yet.

    ``backend`` is ``"sqlite"`` or ``"postgresql"``; ``env`` are BAMBOO_* settings for every process.
    """
    made: list[Deployment] = []

    async def make(backend: str, **env: str) -> Deployment:
        database_url = None
        if backend == "postgresql":
            database_url = await create_postgres_database()
            if database_url is None:
                pytest.skip("PostgreSQL not reachable (set BAMBOO_REQUIRE_POSTGRES=1 to fail)")
        deployment = Deployment(
            f"{backend}-{len(made)}", tmp_path / f"deployment{len(made)}", database_url, env
        )
        made.append(deployment)
        deployment.prepare()
        return deployment

    yield make
    for deployment in made:
        await deployment.close()
        if deployment.database_url is not None:
            await drop_postgres_database(deployment.database_url)


@pytest.fixture(autouse=True)
def _audits_in_the_report(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each audit a test made travels in its report, so the summary has it under pytest-xdist too
    (the tests run in worker processes; the summary is written by the controlling one)."""
    made_before = len(AUDITS)
    yield
    for result in AUDITS[made_before:]:
        request.node.user_properties.append((AUDIT_PROPERTY, result.line()))
