"""The pilot-streaming sizing rule (domain.md §8.2), as a pure function."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bamboo.logic.pilot_streaming import Demand, job_type, new_workers

SINGLE = frozenset({"SCORE", "SCORE_HIMEM"})


def test_no_work_keeps_the_floor_of_managed_single_core_workers() -> None:
    assert new_workers(1, {}, {}, SINGLE) == {"managed": {"SCORE": 5}}
    assert new_workers(8, {}, {}, SINGLE) == {"managed": {"SCORE": 40}}
    assert new_workers(1, {}, {("managed", "SCORE"): {"submitted": 5}}, SINGLE) == {}


def test_workers_follow_the_activated_jobs() -> None:
    demand = {("user", "SCORE"): Demand(100, 100)}
    assert new_workers(8, demand, {}, SINGLE) == {"user": {"SCORE": 100}, "managed": {"SCORE": 1}}
    queued = {("user", "SCORE"): {"submitted": 30, "running": 2}, ("managed", "SCORE"): {"idle": 1}}
    assert new_workers(8, demand, queued, SINGLE) == {"user": {"SCORE": 70}, "managed": {"SCORE": 1}}
    # Multi-core workers carry the queue's cores.
    assert new_workers(8, {("managed", "MCORE"): Demand(10, 80)}, {}, SINGLE) == {
        "managed": {"MCORE": 10, "SCORE": 1}
    }


def test_queued_cores_grow_with_running_ones() -> None:
    demand = {("managed", "SCORE"): Demand(2000, 2000)}
    assert new_workers(1, demand, {}, SINGLE) == {"managed": {"SCORE": 75}}
    running = {("managed", "SCORE"): {"running": 1000}}
    assert new_workers(1, demand, running, SINGLE) == {"managed": {"SCORE": 400}}


def test_the_target_is_shared_by_the_cores_each_kind_needs() -> None:
    demand = {("user", "SCORE"): Demand(300, 300), ("managed", "MCORE"): Demand(100, 800)}
    # T = max(0.4 x 0, 75 x 8) = 600 cores of 1100 needed: 3/11 to user SCORE (163.6 -> 164 workers),
    # 8/11 to MCORE (436.4 cores / 8 -> 55 workers).
    assert new_workers(8, demand, {}, SINGLE) == {
        "user": {"SCORE": 164},
        "managed": {"MCORE": 55, "SCORE": 1},
    }


def test_high_memory_workers_never_outnumber_their_jobs() -> None:
    assert new_workers(1, {("managed", "SCORE_HIMEM"): Demand(2, 2)}, {}, SINGLE) == {
        "managed": {"SCORE_HIMEM": 2, "SCORE": 1}
    }


def test_job_types() -> None:
    assert [job_type(label) for label in ("user", "panda", "managed", "test", None)] == [
        "user",
        "user",
        "managed",
        "managed",
        "managed",
    ]


KINDS = st.sampled_from(
    [("user", "SCORE"), ("managed", "SCORE"), ("managed", "MCORE"), ("managed", "MCORE_HIMEM")]
)
DEMAND = st.dictionaries(KINDS, st.integers(1, 5000).map(lambda n: Demand(n, n)), max_size=4)
STATUSES = st.dictionaries(st.sampled_from(["submitted", "running", "idle", "ready"]), st.integers(0, 3000))
WORKERS = st.dictionaries(KINDS, STATUSES, max_size=4)


@given(st.integers(1, 64), DEMAND, WORKERS)
def test_sizing_properties(corecount: int, demand: dict, workers: dict) -> None:
    answer = new_workers(corecount, demand, workers, SINGLE)
    flat = {(jt, rt): n for jt, per_type in answer.items() for rt, n in per_type.items()}
    assert all(isinstance(n, int) and n > 0 for n in flat.values())
    queued_floor = sum(
        n for status, n in workers.get(("managed", "SCORE"), {}).items() if status in ("submitted", "ready")
    )
    if queued_floor == 0:
        assert flat.get(("managed", "SCORE"), 0) >= 1
    for kind, n in flat.items():
        if "HIMEM" in kind[1]:
            assert n <= demand[kind].jobs
    # More queued workers never ask for more new ones.
    busier = {
        kind: {**statuses, "submitted": statuses.get("submitted", 0) + 10}
        for kind, statuses in workers.items()
    }
    again = new_workers(corecount, demand, busier, SINGLE)
    for kind, n in flat.items():
        assert again.get(kind[0], {}).get(kind[1], 0) <= n
