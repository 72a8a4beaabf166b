"""The pure rules of scouting: which jobs are scouts, the verdict on them, what they measure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from bamboo.logic import scouting

START = datetime(2026, 12, 1, tzinfo=UTC)


def task(**values) -> dict:
    return {
        "status": "ready",
        "splitRule": None,
        "taskPriority": 1000,
        "baseRamCount": 0,
        "ramUnit": "MBPerCore",
        "walltimeUnit": None,
        "cpuTimeUnit": None,
        "outDiskUnit": None,
        **values,
    }


def job(status: str = "finished", **values) -> dict:
    return {
        "jobStatus": status,
        "coreCount": 1,
        "maxPSS": None,
        "startTime": None,
        "endTime": None,
        "cpuConsumptionTime": None,
        "nEvents": None,
        "outputFileBytes": None,
        **values,
    }


def test_ready_tasks_scout_unless_told_not_to_or_already_scouted() -> None:
    assert scouting.wants_scouts(task(), {}) is True
    assert scouting.wants_scouts(task(), {"skipScout": True}) is False
    assert scouting.wants_scouts(task(splitRule="NF=1,US=3"), {}) is False
    assert scouting.wants_scouts(task(splitRule="NF=1,US=1"), {}) is True
    for status in ("running", "scouting", "pending"):
        assert scouting.wants_scouts(task(status=status), {}) is False


def test_scout_priority_is_at_least_901() -> None:
    for priority, expected in ((1000, 1001), (100, 901), (900, 901), (901, 902), (None, 901)):
        row = {"currentPriority": priority, "assignedPriority": priority}
        scouting.mark(row, task(taskPriority=priority))
        assert row == {"specialHandling": "sj", "currentPriority": expected, "assignedPriority": expected}


def verdict(statuses: list[str], production: bool = False, rate: int | None = None) -> scouting.Verdict:
    return scouting.judge([job(s) for s in statuses], production=production, success_rate_tenths=rate)


def test_verdicts() -> None:
    assert verdict([]) == scouting.WAIT
    assert verdict(["finished", "running"]) == scouting.WAIT
    assert verdict(["finished", "failed"]) == scouting.AVALANCHE
    assert verdict(["failed", "cancelled"]) == scouting.Verdict("broken", "no scout jobs succeeded")
    assert verdict(["finished", "failed", "failed"], rate=5) == scouting.Verdict(
        "broken", "not enough scout jobs succeeded"
    )
    assert verdict(["finished", "finished", "failed", "closed"], rate=5) == scouting.AVALANCHE
    # Production tasks avalanche once half of the scouts finished, not before.
    assert verdict(["finished", "activated", "running", "running"], production=True) == scouting.WAIT
    assert verdict(["finished", "finished", "running", "running"], production=True) == scouting.AVALANCHE
    assert verdict(["finished", "finished", "running", "running"]) == scouting.WAIT
    # A pre-merge scout waiting for its merge has run and succeeded (logic/merge_jobs.py).
    assert verdict(["merging", "failed"]) == scouting.AVALANCHE
    assert verdict(["merging", "running"]) == scouting.WAIT


_STATUSES = st.sampled_from(
    ["activated", "running", "holding", "merging", "finished", "failed", "cancelled", "closed"]
)


@given(st.lists(_STATUSES, max_size=12), st.booleans(), st.none() | st.integers(0, 10))
def test_verdict_rules_hold_for_any_scouts(statuses: list[str], production: bool, rate: int | None) -> None:
    result = verdict(statuses, production, rate)
    finished = statuses.count("finished") + statuses.count("merging")
    ended = sum(s in ("finished", "merging", "failed", "cancelled", "closed") for s in statuses)
    if result.decision == "broken":
        # Only ever once every scout has ended, and never with enough successes.
        assert ended == len(statuses) and statuses
        assert finished == 0 or (rate is not None and finished * 10 < rate * len(statuses))
    elif result.decision == "avalanche":
        assert finished >= 1
        assert ended == len(statuses) or (production and finished * 2 >= len(statuses))
    else:
        assert not statuses or ended < len(statuses)


def test_measurements_take_percentiles_of_finished_scouts() -> None:
    scouts = [
        job(
            maxPSS=(1000 + 100 * i) * 1024 * 2,
            coreCount=2,
            startTime=START,
            endTime=START + timedelta(seconds=600 + 10 * i),
            cpuConsumptionTime=100 * (i + 1),
            nEvents=10,
            outputFileBytes=1000 * (i + 1),
        )
        for i in range(4)
    ]
    scouts.append(job("failed", maxPSS=10**9, coreCount=1))
    values = scouting.measure(scouts, task(baseRamCount=200))
    # PSS per core: 1000, 1100, 1200, 1300 MB, minus 200 -> 75th percentile (nearest rank) 1000.
    assert values == {"ramCount": 1000, "walltime": 630, "cpuTime": 40, "outDiskCount": 300}


def test_fixed_units_and_unmeasured_values_are_kept() -> None:
    scouts = [job(maxPSS=2048, startTime=START, endTime=START + timedelta(seconds=5))]
    assert scouting.measure(scouts, task(ramUnit="MBPerCoreFixed")) == {"walltime": 5}
    assert scouting.measure([job("failed", maxPSS=4096)], task()) == {}
