"""One real server per test module and database, shared by the module's tests.

The compatibility suite makes many small calls; starting ``bamboo serve`` (and migrating a
PostgreSQL database) for each would cost more than the calls. Tests of a module therefore share
one deployment (tests/e2e/conftest.py) and keep apart by naming their own tasks.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import BACKENDS, Deployment, database_for, deployed


@pytest.fixture(scope="module", params=BACKENDS)
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    with (
        database_for(request.param) as url,
        deployed(tmp_path_factory.mktemp("compat"), url, "curl") as running,
    ):
        yield running
