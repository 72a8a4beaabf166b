"""``statistics/*`` (api-v1.md §2.9) on both databases: shapes, filters, zero-fills, the window of
final jobs in both job tables, and the parameter checks, over populations of jobs written directly.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bamboo.agents.runner import AgentContext, AgentRunner
from bamboo.api.app import create_app
from bamboo.api.state import build_state
from bamboo.config import Settings
from bamboo.db.engine import Database
from bamboo.db.schema import job_stats_windows, jobs, jobs_archive
from bamboo.home import prepare_home
from bamboo.logic import shares
from bamboo.logic import statistics as stats
from tests.api.conftest import ApiServer
from tests.conftest import FixedClock

BASE = "/api/v1/statistics"
ALL_ENDPOINTS = (
    "job_stats_by_cloud",
    "production_job_stats_by_cloud_and_processing_type",
    "active_job_stats_by_site",
    "active_job_detailed_stats_by_site",
    "job_stats_by_site_and_resource_type",
    "job_stats_by_site_share_and_resource_type",
)
_ids = itertools.count(1)


@dataclass
class StatisticsServer(ApiServer):
    """The app, and in the "summary" variant the statistics agent, run after every write of jobs."""

    runner: AgentRunner | None = None


def _world(db: Database, tmp_path: Path, summary: bool) -> tuple[StatisticsServer, FixedClock]:
    clock = FixedClock()
    config = Settings(home=tmp_path / "home", trusted_proxies=["127.0.0.1"], ban_refresh_seconds=0)
    home = prepare_home(config)
    state = build_state(config, home, db, clock)
    runner = AgentRunner(AgentContext(db, clock, state.dm, settings=config)) if summary else None
    return StatisticsServer(state=state, home=home, app=create_app(state), tmp=tmp_path, runner=runner), clock


@pytest.fixture
def world(db: Database, tmp_path: Path) -> tuple[StatisticsServer, FixedClock]:
    """The app on a clock the test moves (the window is measured from its now)."""
    return _world(db, tmp_path, summary=False)


@pytest.fixture(params=["job tables", "summary"])
def counting(
    request: pytest.FixtureRequest, db: Database, tmp_path: Path
) -> tuple[StatisticsServer, FixedClock]:
    """As ``world``, the counts read from the job tables alone, or from the statistics agent's
    totals (refreshed after each write of jobs, on the test's clock): the answers are the same."""
    return _world(db, tmp_path, summary=request.param == "summary")


def job(
    status: str,
    *,
    label: str = "managed",
    site: str = "SITE_A",
    cloud: str | None = "CA",
    resource_type: str | None = "SCORE",
    processing_type: str | None = "simul",
    share: str | None = None,
    modified: datetime,
) -> dict[str, Any]:
    return {
        "PandaID": next(_ids),
        "jobStatus": status,
        "prodSourceLabel": label,
        "computingSite": site,
        "cloud": cloud,
        "resource_type": resource_type,
        "processingType": processing_type,
        "gshare": share,
        "modificationTime": modified,
    }


async def insert(
    api: StatisticsServer, active: list[dict[str, Any]], archived: list[dict[str, Any]] = ()
) -> None:
    async with api.state.db.transaction() as conn:
        if active:
            await conn.execute(sa.insert(jobs), active)
        if archived:
            await conn.execute(sa.insert(jobs_archive), list(archived))
    if api.runner is not None:
        assert await api.runner.run_once("statistics") == 0


async def get(api: ApiServer, name: str, **params: Any) -> dict[str, Any]:
    # Public: no credentials, plain HTTP.
    async with api.client(https=False) as client:
        response = await client.get(f"{BASE}/{name}", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["success", "message", "data"]
    return body


def ok(data: Any) -> dict[str, Any]:
    return {"success": True, "message": "", "data": data}


async def population(api: ApiServer, clock: FixedClock) -> None:
    """Active and final jobs of every kind, in both tables, inside and outside the 12 h window."""
    now = clock.now()
    recent, old = now - timedelta(hours=1), now - timedelta(hours=13)
    active = [
        job("running", modified=old),
        job("running", modified=recent),
        job("activated", label="ptest", modified=recent),
        job("assigned", resource_type="MCORE", processing_type="reprocessing", modified=recent),
        job("merging", modified=recent),
        job("running", label="user", cloud="CB", site="SITE_B", processing_type=None, modified=recent),
        job("defined", label="panda", cloud="CB", site="SITE_B", processing_type=None, modified=old),
        job("running", label="install", cloud="CC", site="SITE_C", modified=recent),
        # Final jobs the archiver has not moved yet: in the window, and out of it.
        job("finished", modified=recent),
        job("failed", label="user", cloud="CB", site="SITE_B", processing_type=None, modified=recent),
        job("cancelled", modified=old),
    ]
    archived = [
        job("finished", modified=recent),
        job("finished", label="rc_test", modified=recent),
        job("closed", resource_type="MCORE", processing_type="reprocessing", modified=recent),
        job("finished", label="user", cloud="CB", site="SITE_B", processing_type=None, modified=recent),
        job("failed", modified=old),
        job("finished", label="user", cloud="CB", site="SITE_B", processing_type=None, modified=old),
    ]
    await insert(api, active, archived)


async def test_empty_system_answers_success_with_empty_data(counting) -> None:
    api, _ = counting
    await insert(api, [])
    for name in ALL_ENDPOINTS:
        assert await get(api, name) == ok({}), name
    assert await get(api, "job_stats_by_cloud", type="analysis") == ok({})


async def test_job_stats_by_cloud(counting) -> None:
    api, clock = counting
    await population(api, clock)
    production = await get(api, "job_stats_by_cloud")
    assert production == ok(
        {"CA": {"running": 2, "activated": 1, "assigned": 1, "merging": 1, "finished": 3, "closed": 1}}
    )
    assert await get(api, "job_stats_by_cloud", type="production") == production
    assert await get(api, "job_stats_by_cloud", type="analysis") == ok(
        {"CB": {"running": 1, "defined": 1, "failed": 1, "finished": 1}}
    )


@pytest.mark.parametrize("value", ["Production", "all", "", "managed"])
async def test_job_stats_by_cloud_refuses_other_types(world, value: str) -> None:
    api, _ = world
    assert await get(api, "job_stats_by_cloud", type=value) == {
        "success": False,
        "message": 'Parameter "type" needs to be either "production" or "analysis" ',
        "data": {},
    }


async def test_production_job_stats_by_cloud_and_processing_type(counting) -> None:
    api, clock = counting
    await population(api, clock)
    assert await get(api, "production_job_stats_by_cloud_and_processing_type") == ok(
        {
            "CA": {
                "simul": {"running": 2, "activated": 1, "merging": 1, "finished": 3},
                "reprocessing": {"assigned": 1, "closed": 1},
            }
        }
    )


async def test_active_job_stats_by_site(counting) -> None:
    api, clock = counting
    await population(api, clock)
    assert await get(api, "active_job_stats_by_site") == ok(
        {
            "SITE_A": {"running": 2, "activated": 1, "assigned": 1},
            "SITE_B": {"running": 1, "defined": 1, "assigned": 0, "activated": 0},
            "SITE_C": {"running": 1, "assigned": 0, "activated": 0},
        }
    )


async def test_active_job_detailed_stats_by_site(counting) -> None:
    api, clock = counting
    await population(api, clock)
    zero = {"assigned": 0, "activated": 0, "running": 0}
    assert await get(api, "active_job_detailed_stats_by_site") == ok(
        {
            "SITE_A": {
                "SCORE": {"managed": {**zero, "running": 2}, "ptest": {**zero, "activated": 1}},
                "MCORE": {"managed": {**zero, "assigned": 1}},
            },
            "SITE_B": {"SCORE": {"user": {**zero, "running": 1}, "panda": {**zero, "defined": 1}}},
            "SITE_C": {"SCORE": {"install": {**zero, "running": 1}}},
        }
    )


WINDOW_ZERO = {"assigned": 0, "activated": 0, "running": 0, "finished": 0, "failed": 0}


async def test_job_stats_by_site_and_resource_type(counting) -> None:
    api, clock = counting
    await population(api, clock)
    twelve_hours = ok(
        {
            "SITE_A": {
                "SCORE": {**WINDOW_ZERO, "running": 2, "activated": 1, "merging": 1, "finished": 3},
                "MCORE": {**WINDOW_ZERO, "assigned": 1, "closed": 1},
            },
            "SITE_B": {"SCORE": {**WINDOW_ZERO, "running": 1, "defined": 1, "failed": 1, "finished": 1}},
            "SITE_C": {"SCORE": {**WINDOW_ZERO, "running": 1}},
        }
    )
    assert await get(api, "job_stats_by_site_and_resource_type") == twelve_hours
    assert await get(api, "job_stats_by_site_and_resource_type", time_window=720) == twelve_hours
    # A day: the final jobs of 13 hours ago count too, from either table.
    day = await get(api, "job_stats_by_site_and_resource_type", time_window=1440)
    assert day["data"]["SITE_A"]["SCORE"] == {
        **WINDOW_ZERO,
        "running": 2,
        "activated": 1,
        "merging": 1,
        "finished": 3,
        "failed": 1,
        "cancelled": 1,
    }
    assert day["data"]["SITE_B"]["SCORE"]["finished"] == 2
    # No window: active jobs only, zero-filled.
    assert await get(api, "job_stats_by_site_and_resource_type", time_window=0) == ok(
        {
            "SITE_A": {
                "SCORE": {**WINDOW_ZERO, "running": 2, "activated": 1, "merging": 1},
                "MCORE": {**WINDOW_ZERO, "assigned": 1},
            },
            "SITE_B": {"SCORE": {**WINDOW_ZERO, "running": 1, "defined": 1}},
            "SITE_C": {"SCORE": {**WINDOW_ZERO, "running": 1}},
        }
    )
    assert (await get(api, "job_stats_by_site_and_resource_type", time_window=10080))["success"] is True


async def test_the_window_reads_the_archive(counting) -> None:
    """Final jobs in the window count whichever table holds them; older ones in neither."""
    api, clock = counting
    now = clock.now()
    await insert(
        api,
        [job("finished", modified=now - timedelta(minutes=30))],
        [
            job("finished", modified=now - timedelta(minutes=20)),
            job("failed", modified=now - timedelta(hours=2)),
        ],
    )
    data = (await get(api, "job_stats_by_site_and_resource_type", time_window=60))["data"]
    assert data["SITE_A"]["SCORE"]["finished"] == 2
    assert data["SITE_A"]["SCORE"]["failed"] == 0
    cloud = (await get(api, "job_stats_by_cloud"))["data"]
    assert cloud == {"CA": {"finished": 2, "failed": 1}}
    # Twelve hours later all three are out of the window.
    clock.set(now + timedelta(hours=12))
    assert (await get(api, "job_stats_by_cloud"))["data"] == {}


BAD_WINDOW = 'Parameter "time_window" needs to be a positive integer smaller than 10080 min (7 days)'


@pytest.mark.parametrize(
    "name", ["job_stats_by_site_and_resource_type", "job_stats_by_site_share_and_resource_type"]
)
@pytest.mark.parametrize("value", ["-1", "10081", "100000000"])
async def test_time_window_out_of_range(world, name: str, value: str) -> None:
    api, _ = world
    assert await get(api, name, time_window=value) == {"success": False, "message": BAD_WINDOW, "data": {}}


@pytest.mark.parametrize(
    "name", ["job_stats_by_site_and_resource_type", "job_stats_by_site_share_and_resource_type"]
)
async def test_time_window_not_an_integer(world, name: str) -> None:
    api, _ = world
    assert await get(api, name, time_window="ten") == {
        "success": False,
        "message": (
            "Type error: 'time_window' with value 'ten' could not be casted to type int | NoneType from str."
        ),
        "data": None,
    }
    assert await get(api, name, time_window="1.5") == {
        "success": False,
        "message": "Type error: 'time_window' must be of type int | NoneType, got float.",
        "data": None,
    }
    assert (await get(api, name, time_window="None"))["success"] is True


async def test_statistics_are_get_only_and_strict_about_parameters(world) -> None:
    api, _ = world
    async with api.client(https=False) as client:
        response = await client.post(f"{BASE}/active_job_stats_by_site", json={})
        assert response.json() == {"success": False, "message": "expecting GET, received POST", "data": None}
        response = await client.get(f"{BASE}/active_job_stats_by_site", params={"site": "SITE_A"})
        assert response.json()["message"] == "Argument error: got an unexpected keyword argument 'site'"


SHARE_TREE = {
    "default": "Other",
    "shares": [
        {"name": "Production", "value": 60, "prodsourcelabel": "(managed|test)"},
        {"name": "Analysis", "value": 30, "prodsourcelabel": "^user$"},
        {"name": "Pilot tests", "value": 5, "prodsourcelabel": "ptest|rc_test"},
        {"name": "Anything", "value": 5, "prodsourcelabel": ".*"},
        {"name": "Other", "value": 0},
    ],
}


def test_share_labels() -> None:
    tree = shares.parse_tree(SHARE_TREE)
    assert stats.share_labels(tree) == {"Production": "managed", "Analysis": "user", "Pilot tests": "ptest"}
    assert stats.share_labels(None) == {}


async def test_job_stats_by_site_share_and_resource_type(counting) -> None:
    api, clock = counting
    now = clock.now()
    async with api.state.db.transaction() as conn:
        await shares.load(conn, SHARE_TREE)
    recent, old = now - timedelta(hours=2), now - timedelta(hours=20)
    await insert(
        api,
        [
            job("running", share="Production", modified=old),
            job("activated", share="Production", resource_type="MCORE", modified=recent),
            job("running", label="user", share="Analysis", modified=recent),
            job("running", share="Anything", modified=recent),
            job("running", share=None, site="SITE_B", modified=recent),
            job("sent", label="ptest", share="Pilot tests", site="SITE_B", modified=recent),
            job("running", share="Removed share", site="SITE_B", modified=recent),
        ],
        [
            job("finished", share="Production", modified=recent),
            job("failed", label="user", share="Analysis", modified=old),
        ],
    )
    assert await get(api, "job_stats_by_site_share_and_resource_type") == ok(
        {
            "SITE_A": {
                "managed": {
                    "SCORE": {**WINDOW_ZERO, "running": 1, "finished": 1},
                    "MCORE": {**WINDOW_ZERO, "activated": 1},
                },
                "user": {"SCORE": {**WINDOW_ZERO, "running": 1}},
                "unknown": {"SCORE": {**WINDOW_ZERO, "running": 1}},
            },
            "SITE_B": {
                "unknown": {"SCORE": {**WINDOW_ZERO, "running": 2}},
                "ptest": {"SCORE": {**WINDOW_ZERO, "sent": 1}},
            },
        }
    )
    day = await get(api, "job_stats_by_site_share_and_resource_type", time_window=1440)
    assert day["data"]["SITE_A"]["user"]["SCORE"]["failed"] == 1


async def test_no_share_tree_means_unknown_labels(counting) -> None:
    api, clock = counting
    await insert(api, [job("running", share="Production", modified=clock.now())])
    assert (await get(api, "job_stats_by_site_share_and_resource_type"))["data"] == {
        "SITE_A": {"unknown": {"SCORE": {**WINDOW_ZERO, "running": 1}}}
    }


async def test_missing_attributes_are_grouped_as_null(counting) -> None:
    """A job without cloud, site or resource type counts under null, as upstream's JSON shows it."""
    api, clock = counting
    await insert(api, [job("running", cloud=None, site=None, resource_type=None, modified=clock.now())])
    assert (await get(api, "job_stats_by_cloud"))["data"] == {"null": {"running": 1}}
    assert (await get(api, "active_job_stats_by_site"))["data"] == {
        "null": {"running": 1, "assigned": 0, "activated": 0}
    }


# --- the aggregates against a plain count -------------------------------------------------------------

STATUSES = sorted(stats.ACTIVE_STATUSES + stats.FINAL_STATUSES)
LABELS = ["managed", "user", "panda", "ptest", "rc_alrb", "install", "test"]
generated_job = st.fixed_dictionaries(
    {
        "status": st.sampled_from(STATUSES),
        "label": st.sampled_from(LABELS),
        "site": st.sampled_from(["S1", "S2"]),
        "cloud": st.sampled_from(["C1", "C2"]),
        "resource_type": st.sampled_from(["SCORE", "MCORE"]),
        "processing_type": st.sampled_from(["simul", "merge"]),
        # Minutes before now; the window is 720 minutes.
        "age": st.integers(min_value=1, max_value=1500).filter(lambda age: age != 720),
        "archived": st.booleans(),
    }
)


def expected_counts(
    population: list[dict[str, Any]],
    keys: Callable[[dict[str, Any]], tuple],
    *,
    window: int | None,
    labels: tuple[str, ...] | None = None,
    excluded: tuple[str, ...] = (),
) -> Counter:
    """The statistics counted one job at a time, straight from the definitions."""
    counted: Counter = Counter()
    for item in population:
        if labels is not None and item["label"] not in labels:
            continue
        if item["status"] in excluded:
            continue
        final = item["status"] in stats.FINAL_STATUSES
        if item["archived"] and not final:
            continue  # the archive holds final jobs only
        if final and (window is None or item["age"] >= window):
            continue
        counted[(*keys(item), item["status"])] += 1
    return counted


def flatten(data: dict[str, Any], depth: int) -> Counter:
    counted: Counter = Counter()

    def walk(level: dict[str, Any], path: tuple) -> None:
        for key, value in level.items():
            if len(path) + 1 == depth:
                for status, count in value.items():
                    if count:
                        counted[(*path, key, status)] = count
            else:
                walk(value, (*path, key))

    walk(data, ())
    return counted


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(population=st.lists(generated_job, max_size=40))
async def test_aggregates_match_a_plain_count(counting, population: list[dict[str, Any]]) -> None:
    api, clock = counting
    now = clock.now()
    async with api.state.db.transaction() as conn:
        await conn.execute(sa.delete(jobs))
        await conn.execute(sa.delete(jobs_archive))
        # Jobs deleted behind the agent's back: its totals go too, so it counts afresh.
        await conn.execute(sa.delete(job_stats_windows))
    rows = [
        (
            item,
            job(
                item["status"],
                label=item["label"],
                site=item["site"],
                cloud=item["cloud"],
                resource_type=item["resource_type"],
                processing_type=item["processing_type"],
                modified=now - timedelta(minutes=item["age"]),
            ),
        )
        for item in population
        if not (item["archived"] and item["status"] not in stats.FINAL_STATUSES)
    ]
    await insert(
        api,
        [row for item, row in rows if not item["archived"]],
        [row for item, row in rows if item["archived"]],
    )
    for kind, labels in stats.KINDS.items():
        data = (await get(api, "job_stats_by_cloud", type=kind))["data"]
        assert flatten(data, 1) == expected_counts(
            population, lambda j: (j["cloud"],), window=720, labels=labels
        )
    data = (await get(api, "production_job_stats_by_cloud_and_processing_type"))["data"]
    assert flatten(data, 2) == expected_counts(
        population, lambda j: (j["cloud"], j["processing_type"]), window=720, labels=stats.PRODUCTION_LABELS
    )
    data = (await get(api, "active_job_stats_by_site"))["data"]
    assert flatten(data, 1) == expected_counts(
        population, lambda j: (j["site"],), window=None, excluded=("merging",)
    )
    data = (await get(api, "active_job_detailed_stats_by_site"))["data"]
    assert flatten(data, 3) == expected_counts(
        population, lambda j: (j["site"], j["resource_type"], j["label"]), window=None, excluded=("merging",)
    )
    for window in (None, 60, 1440):
        params = {} if window is None else {"time_window": window}
        data = (await get(api, "job_stats_by_site_and_resource_type", **params))["data"]
        assert flatten(data, 2) == expected_counts(
            population, lambda j: (j["site"], j["resource_type"]), window=window or 720
        )
