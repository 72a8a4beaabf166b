"""Shared fixtures: a migrated database per backend (SQLite and PostgreSQL) for the whole session.

PostgreSQL is taken from BAMBOO_TEST_POSTGRES_URL (default: the local server on 127.0.0.1:5432 as
user postgres). A fresh database is created for the session and dropped at the end. When the
server cannot be reached the PostgreSQL variants are skipped with the reason, except where
BAMBOO_REQUIRE_POSTGRES=1 (CI), where that is an error.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from bamboo.db import migrate
from bamboo.db.engine import Database
from bamboo.db.schema import metadata

POSTGRES_ADMIN_URL = os.environ.get(
    "BAMBOO_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_POSTGRES = os.environ.get("BAMBOO_REQUIRE_POSTGRES") == "1"
# pytest-xdist's workers inherit COLUMNS=80 and LINES=24, and the CLI's rich consoles, made at
# import, would keep that width for good; CLI tests set the width they need when they invoke.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)
# The fault tests' audits reach the terminal summary through this test-report property.
AUDIT_PROPERTY = "fault audit"
# Tables whose rows come from migrations and stay between tests.
SEEDED_TABLES = {"resource_types", "alembic_version", "id_sequences"}


class FixedClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.now(UTC).replace(microsecond=0)

    def now(self) -> datetime:
        return self._now

    def set(self, moment: datetime) -> None:
        self._now = moment


def _asyncpg_dsn(url: sa.URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def create_postgres_database() -> str | None:
    """Create a fresh database; return its SQLAlchemy URL, or None if PostgreSQL is unreachable."""
    admin = make_url(POSTGRES_ADMIN_URL)
    try:
        connection = await asyncpg.connect(_asyncpg_dsn(admin), timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        if REQUIRE_POSTGRES:
            raise RuntimeError(f"PostgreSQL required but unreachable at {admin!r}: {exc}") from exc
        return None
    name = f"bamboo_test_{uuid.uuid4().hex[:12]}"
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return admin.set(database=name).render_as_string(hide_password=False)


async def drop_postgres_database(url: str) -> None:
    admin = make_url(POSTGRES_ADMIN_URL)
    connection = await asyncpg.connect(_asyncpg_dsn(admin), timeout=5)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    finally:
        await connection.close()


# Session fixtures are synchronous and run their async work in a private event loop, so that
# parametrised fixtures can request them; each engine is disposed in the loop that made it.


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    url = asyncio.run(create_postgres_database())
    if url is None:
        pytest.skip(
            f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL} (set BAMBOO_REQUIRE_POSTGRES=1 to fail)"
        )
    yield url
    asyncio.run(drop_postgres_database(url))


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite') / 'bamboo.db'}"


async def _migrate(url: str) -> None:
    db = Database(url)
    try:
        await migrate.upgrade(db)
    finally:
        await db.dispose()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The URL of a migrated database of each backend, shared by the session."""
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    asyncio.run(_migrate(url))
    return url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A migrated database of each backend, emptied of everything but seed data after the test."""
    database = Database(database_url)
    yield database
    async with database.transaction() as conn:
        for table in reversed(metadata.sorted_tables):
            if table.name not in SEEDED_TABLES:
                await conn.execute(table.delete())
    await database.dispose()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


_audit_lines: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":
        _audit_lines.extend(line for name, line in report.user_properties if name == AUDIT_PROPERTY)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The audit of every fault-test load of the session, so CI output shows the counts."""
    if not _audit_lines:
        return
    size = "full size (BAMBOO_FAULT_FULL=1)" if os.environ.get("BAMBOO_FAULT_FULL") == "1" else "CI size"
    terminalreporter.section(f"fault audits, {size}")
    for line in _audit_lines:
        terminalreporter.write_line(line)
