"""The tape simulator's progress: a pure function of the rule, its parameters and the clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from bamboo.logic.tape_simulator import OK, REPLICATING, STUCK, TapeParameters, attempt_fails, simulate

START = datetime(2026, 12, 1, tzinfo=UTC)
FILES = [(f"f{i}", 500, False) for i in range(4)]


def at(seconds: float, params: TapeParameters, files=FILES, rule: str = "rule-1"):
    return simulate(rule, files, params, started=START, now=START + timedelta(seconds=seconds))


def test_files_arrive_one_by_one_after_the_delay() -> None:
    # 500 bytes at 100 bytes/s: 5 s a file, after 30 s.
    params = TapeParameters(delay_seconds=30, bandwidth=100, failure_rate=0, max_attempts=3, seed=1)
    assert at(29, params).staged == ()
    assert at(34.9, params).staged == ()
    assert at(35, params).staged == ("f0",)
    assert at(44, params).staged == ("f0", "f1")
    progress = at(50, params)
    assert (progress.state, progress.staged, progress.staged_bytes) == (OK, ("f0", "f1", "f2", "f3"), 2000)
    assert at(49, params).state == REPLICATING


def test_files_on_disk_when_the_rule_started_cost_nothing() -> None:
    params = TapeParameters(delay_seconds=0, bandwidth=100, failure_rate=0, max_attempts=1, seed=1)
    files = [("f0", 500, True), ("f1", 500, False), ("f2", 500, True)]
    assert at(0, params, files).staged == ("f0", "f2")
    assert at(5, params, files).state == OK


def test_every_attempt_failing_gives_the_files_up() -> None:
    params = TapeParameters(delay_seconds=0, bandwidth=100, failure_rate=1.0, max_attempts=3, seed=1)
    # Each file uses its 3 attempts (15 s) before the next starts.
    assert at(14, params).stuck == ()
    assert at(15, params).stuck == ("f0",)
    progress = at(60, params)
    assert (progress.state, progress.staged, progress.failed_attempts) == (STUCK, (), 12)
    assert progress.stuck == ("f0", "f1", "f2", "f3")


def test_a_failed_attempt_is_retried_and_costs_its_time() -> None:
    params = TapeParameters(delay_seconds=0, bandwidth=100, failure_rate=0.5, max_attempts=50, seed=4)
    failures = next(n for n in range(50) if not attempt_fails(params, "rule-1", "f0", n + 1))
    assert at(5 * (failures + 1) - 0.1, params).staged == ()
    progress = at(5 * (failures + 1), params)
    assert progress.staged[:1] == ("f0",)
    assert progress.failed_attempts >= failures


def test_outcomes_depend_on_the_seed_and_the_rule_only() -> None:
    params = TapeParameters(delay_seconds=0, bandwidth=100, failure_rate=0.5, max_attempts=2, seed=9)
    assert at(100, params) == at(100, params)
    outcomes = {at(100, TapeParameters(0, 100, 0.5, 2, seed)).stuck for seed in range(20)}
    assert len(outcomes) > 1
    assert len({at(100, params, rule=f"rule-{n}").stuck for n in range(20)}) > 1


@given(
    seed=st.integers(0, 10_000),
    failure_rate=st.floats(0, 1),
    max_attempts=st.integers(1, 5),
    sizes=st.lists(st.integers(0, 2000), min_size=1, max_size=8),
    earlier=st.floats(0, 200),
    later=st.floats(0, 200),
)
def test_progress_only_grows_and_ends_settled(
    seed: int, failure_rate: float, max_attempts: int, sizes: list[int], earlier: float, later: float
) -> None:
    params = TapeParameters(10, 100, failure_rate, max_attempts, seed)
    files = [(f"f{i}", size, False) for i, size in enumerate(sizes)]
    first, second = sorted((earlier, later))
    before, after = at(first, params, files), at(second, params, files)
    assert set(before.staged) <= set(after.staged)
    assert set(before.stuck) <= set(after.stuck)
    assert before.failed_attempts <= after.failed_attempts
    assert not set(after.staged) & set(after.stuck)
    # Once every file had all its attempts, everything is settled.
    end = 10 + sum(sizes) / 100 * max_attempts + 1
    final = at(end, params, files)
    assert final.state in (OK, STUCK)
    assert sorted(final.staged + final.stuck) == sorted(name for name, _size, _disk in files)
    assert final.state == (STUCK if final.stuck else OK)
