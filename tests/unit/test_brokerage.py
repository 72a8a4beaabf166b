"""Brokerage filters, weights and resource-type matching (domain.md §6.2, §6.3)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bamboo.logic.brokerage import (
    QueueLoad,
    TaskNeeds,
    choose_queue,
    job_core_count,
    job_memory,
    rejection,
    site_matches,
)
from bamboo.logic.resource_types import match_job

RESOURCE_TYPES = [
    {"resource_name": "SCORE", "mincore": 1, "maxcore": 1, "minrampercore": None, "maxrampercore": 2000},
    {
        "resource_name": "SCORE_HIMEM",
        "mincore": 1,
        "maxcore": 1,
        "minrampercore": 2001,
        "maxrampercore": None,
    },
    {"resource_name": "MCORE", "mincore": 2, "maxcore": None, "minrampercore": None, "maxrampercore": 2000},
    {
        "resource_name": "MCORE_HIMEM",
        "mincore": 2,
        "maxcore": None,
        "minrampercore": 2001,
        "maxrampercore": None,
    },
]


def queue(name: str = "Q", **spec: object) -> dict:
    return {"name": name, "status": "online", "type": "unified", "corecount": 1, **spec}


USER = TaskNeeds(site=None, prod_source_label="user")


@pytest.mark.parametrize(
    ("needs", "spec", "reason"),
    [
        (USER, {}, None),
        (USER, {"status": "offline"}, "Q is offline"),
        (USER, {"status": "paused"}, "Q is paused"),
        (USER, {"status": "brokeroff"}, "Q is brokeroff and the task does not name it"),
        (TaskNeeds(site="Q", prod_source_label="user"), {"status": "brokeroff"}, None),
        (TaskNeeds(site="Q", prod_source_label="user"), {"status": "test"}, None),
        (USER, {"type": "production"}, "Q is a production queue, the task is user"),
        (
            TaskNeeds(site=None, prod_source_label="managed"),
            {"type": "analysis"},
            "Q is a analysis queue, the task is managed",
        ),
        (TaskNeeds(site=None, prod_source_label="managed"), {"type": "production"}, None),
        (USER, {"corecount": 8}, "Q has 8-core slots, the task is single-core"),
        (USER, {"corecount": -1}, None),
        (USER, {"corecount": 0}, None),
        (
            TaskNeeds(site=None, prod_source_label="user", core_count=8),
            {"corecount": 4},
            "Q has 4-core slots, the task needs 8",
        ),
        (TaskNeeds(site=None, prod_source_label="user", core_count=8), {"corecount": 8}, None),
        (TaskNeeds(site=None, prod_source_label="user", core_count=4), {"corecount": 0}, None),
        (
            TaskNeeds(site=None, prod_source_label="user", ram_count=3000),
            {"maxrss": 2000},
            "Q offers at most 2000 MB, a job needs 3000 MB",
        ),
        (
            TaskNeeds(site=None, prod_source_label="user", core_count=8, ram_count=2000, base_ram_count=500),
            {"corecount": 8, "maxrss": 16000},
            "Q offers at most 16000 MB, a job needs 16500 MB",
        ),
        (
            TaskNeeds(site=None, prod_source_label="user", ram_count=100),
            {"minrss": 1000},
            "Q wants jobs of at least 1000 MB, a job needs 100 MB",
        ),
        (
            TaskNeeds(site=None, prod_source_label="user", walltime=7200),
            {"maxtime": 3600},
            "Q allows 3600 s, a job needs 7200 s",
        ),
        (TaskNeeds(site=None, prod_source_label="user", walltime=7200), {"maxtime": 0}, None),
        (TaskNeeds(site="OTHER", prod_source_label="user"), {}, "Q not in site=OTHER"),
    ],
)
def test_filters(needs: TaskNeeds, spec: dict, reason: str | None) -> None:
    assert rejection(needs, queue(**spec)) == reason


def test_site_forms() -> None:
    assert site_matches("A,B", "B")
    assert site_matches("ANALY_.*", "ANALY_CERN")
    assert not site_matches("ANALY_.*", "CERN_ANALY")
    assert not site_matches("(", "(x")


def test_core_count_and_memory_per_queue() -> None:
    eight = TaskNeeds(site=None, prod_source_label="user", core_count=8, ram_count=1000, base_ram_count=100)
    assert job_core_count(eight, {"corecount": 16}) == 16
    assert job_core_count(eight, {"corecount": -1}) == 8
    assert job_core_count(eight, {"corecount": None}) == 8
    assert job_core_count(USER, {"corecount": 8}) == 1
    assert job_memory(eight, 16) == 16100
    assert (
        job_memory(TaskNeeds(site=None, prod_source_label="user", ram_count=1000, ram_per_core=False), 8)
        == 1000
    )


def test_choice_prefers_weight_and_explains_refusals() -> None:
    loads = {"BUSY": QueueLoad(activated=50, running=1), "IDLE": QueueLoad(running=10)}
    choice = choose_queue(USER, [queue("BUSY"), queue("IDLE"), queue("OFF", status="offline")], loads)
    assert choice.queue is not None and choice.queue["name"] == "IDLE"
    none = choose_queue(USER, [queue("OFF", status="offline")], {})
    assert none.queue is None
    assert none.explain() == "no queue can run this task: OFF is offline"
    assert choose_queue(USER, [], {}).explain() == "no queue defined"


@given(st.lists(st.integers(0, 100), min_size=1, max_size=8), st.integers(0, 2**32))
def test_chosen_queue_always_has_the_best_weight(running: list[int], seed: int) -> None:
    queues = [queue(f"Q{i}") for i in range(len(running))]
    loads = {f"Q{i}": QueueLoad(running=count) for i, count in enumerate(running)}
    choice = choose_queue(USER, queues, loads, random.Random(seed))
    assert choice.queue is not None
    assert loads[choice.queue["name"]].weight == max(load.weight for load in loads.values())


@pytest.mark.parametrize(
    ("cores", "memory", "expected"),
    [
        (1, 2000, "SCORE"),
        (None, 1000, "SCORE"),
        (1, 2001, "SCORE_HIMEM"),
        (8, 16000, "MCORE"),
        (8, 16008, "MCORE_HIMEM"),
        (0, 8000, "MCORE"),
        (1, 0, "SCORE"),
    ],
)
def test_resource_type_matching(cores: int | None, memory: int, expected: str) -> None:
    assert match_job(RESOURCE_TYPES, cores, memory) == expected


def test_no_matching_row_is_undefined() -> None:
    assert match_job(RESOURCE_TYPES[:1], 8, 1000) == "Undefined"
