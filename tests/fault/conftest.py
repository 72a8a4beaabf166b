"""Fixtures of the fault tests: deployments of real processes, and the audits in the summary.

Every deployment gets its own home under the test's temporary directory and, on PostgreSQL, its
own database on the machine's server (created here, dropped at the end; the server itself is
never stopped or reconfigured).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.conftest import create_postgres_database, drop_postgres_database
from tests.fault.harness import AUDITS, FULL, Deployment

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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The audit of every load of the session, so CI output shows the counts."""
    if not AUDITS:
        return
    size = "full size (BAMBOO_FAULT_FULL=1)" if FULL else "CI size"
    terminalreporter.section(f"fault audits, {size}")
    for result in AUDITS:
        terminalreporter.write_line(result.line())
