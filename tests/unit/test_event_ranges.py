"""Cutting jobsets into event ranges and jobs (logic/es_generation.py), without a database."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bamboo.logic import es_generation
from bamboo.logic.errors import InvalidInput
from bamboo.logic.es_generation import (
    JOB_CLONE,
    JOB_ES_CONSUMER,
    MAX_RANGES_PER_JOBSET,
    RANGES_PER_CYCLE,
    JobsetRule,
    cut_ranges,
    groups_within_budget,
    job_slots,
    jobset_event_rows,
    jobset_rule,
    row_ranges,
)
from bamboo.logic.taskparams import refine
from tests.tasks import NO_INPUT_TASK

NOW = "now"


@given(
    start=st.integers(min_value=0, max_value=10**9),
    n_events=st.integers(min_value=0, max_value=5000),
    per_range=st.integers(min_value=1, max_value=700),
)
def test_ranges_cover_every_event_once_in_order(start: int, n_events: int, per_range: int) -> None:
    ranges = cut_ranges(start, n_events, per_range)
    assert len(ranges) == -(-n_events // per_range)
    events = [event for low, high in ranges for event in range(low, high + 1)]
    assert events == list(range(start, start + n_events))
    # Every range but the last is full; none is empty.
    assert all(high - low + 1 == per_range for low, high in ranges[:-1])
    assert all(1 <= high - low + 1 <= per_range for low, high in ranges)


def test_ranges_of_an_exact_example() -> None:
    assert cut_ranges(0, 10, 4) == [(0, 3), (4, 7), (8, 9)]
    assert cut_ranges(100, 3, 5) == [(100, 102)]
    assert cut_ranges(7, 0, 5) == []


@pytest.mark.parametrize(("n_events", "per_range"), [(-1, 1), (5, 0), (5, -2)])
def test_ranges_refuse_nonsense(n_events: int, per_range: int) -> None:
    with pytest.raises(ValueError):
        cut_ranges(0, n_events, per_range)


def file_row(file_id: int, n_events: int | None, start: int | None = None, end: int | None = None) -> dict:
    return {
        "fileID": file_id,
        "datasetID": 7,
        "lfn": f"f{file_id}.root",
        "nEvents": n_events,
        "startEvent": start,
        "endEvent": end,
    }


def test_row_ranges_use_the_file_or_its_event_split_chunk() -> None:
    assert row_ranges(file_row(1, 5), 2) == [(0, 1), (2, 3), (4, 4)]
    # An event-split row covers startEvent..endEvent of its file (nEvents agrees, but is not read).
    assert row_ranges(file_row(1, 3, start=10, end=12), 2) == [(10, 11), (12, 12)]
    with pytest.raises(InvalidInput, match=r"f9\.root.*no known number of events"):
        row_ranges(file_row(9, None), 2)


ES_RULE = JobsetRule(
    job_event_service=JOB_ES_CONSUMER, jobs_per_set=2, n_events_per_range=4, max_attempt_es=7
)
CLONE_RULE = JobsetRule(job_event_service=JOB_CLONE, jobs_per_set=3, clone_mode="storeonce")


def test_event_rows_of_a_jobset() -> None:
    rows = jobset_event_rows(55, 1000, [file_row(1, 6), file_row(2, 3, start=20, end=22)], ES_RULE, NOW)
    assert [
        (r["fileID"], r["job_processID"], r["def_min_eventID"], r["def_max_eventID"], r["attemptNr"])
        for r in rows
    ] == [(1, 0, 0, 3, 7), (1, 4, 4, 5, 7), (2, 20, 20, 22, 7)]
    assert {(r["jediTaskID"], r["PandaID"], r["jobsetID"], r["status"], r["datasetID"]) for r in rows} == {
        (55, 1000, 1000, "ready", 7)
    }


def test_a_cloned_jobset_has_one_semaphore_row() -> None:
    (row,) = jobset_event_rows(55, 1000, [file_row(3, 6), file_row(4, 6)], CLONE_RULE, NOW)
    assert row == {
        "jediTaskID": 55,
        "datasetID": 7,
        "PandaID": 1000,
        "jobsetID": 1000,
        "fileID": 3,
        "job_processID": 0,
        "attemptNr": 1,
        "status": "ready",
        "def_min_eventID": 0,
        "def_max_eventID": 0,
        "is_jumbo": False,
        "modificationTime": NOW,
    }


def queue(name: str) -> dict[str, Any]:
    return {"name": name}


def test_consumers_share_the_chosen_queue() -> None:
    slots = job_slots(ES_RULE, 2, queue("A"), [queue("A"), queue("B")])
    assert [(s.group, s.queue["name"], s.event_service) for s in slots] == [
        (0, "A", 1),
        (0, "A", 1),
        (1, "A", 1),
        (1, "A", 1),
    ]


@given(n_sites=st.integers(min_value=1, max_value=6), n_queues=st.integers(min_value=1, max_value=6))
def test_clones_go_to_distinct_queues(n_sites: int, n_queues: int) -> None:
    candidates = [queue(f"Q{i}") for i in range(n_queues)]
    chosen = candidates[-1]
    rule = JobsetRule(job_event_service=JOB_CLONE, jobs_per_set=n_sites, clone_mode="runonce")
    slots = job_slots(rule, 2, chosen, candidates)
    for group in (0, 1):
        names = [s.queue["name"] for s in slots if s.group == group]
        assert names[0] == chosen["name"]
        assert len(names) == len(set(names)) == min(n_sites, n_queues)
    assert {s.event_service for s in slots} == {3}


def task_row(event_service: int | None, split_rule: str | None) -> dict:
    return {"eventService": event_service, "splitRule": split_rule, "useJumbo": None}


def test_the_rule_follows_the_task_row() -> None:
    refined = refine({**NO_INPUT_TASK, "eventService": 1, "nEventsPerWorker": 5})
    assert jobset_rule(task_row(0, None), refined) is None
    assert jobset_rule(task_row(1, "NE=2,ES=5,EC=3,XA=4"), refined) == JobsetRule(
        job_event_service=1, jobs_per_set=3, n_events_per_range=5, max_attempt_es=4
    )
    # change_split_rule may have changed ES; a nonsense value falls back to the submitted one.
    assert jobset_rule(task_row(1, "ES=9"), refined).n_events_per_range == 9
    assert jobset_rule(task_row(1, "ES=x,EC=0"), refined) == JobsetRule(
        job_event_service=1, jobs_per_set=1, n_events_per_range=5, max_attempt_es=10
    )
    # enable_job_cloning on any task.
    assert jobset_rule(task_row(2, "NE=2,UC=2,ES=1,EC=2,NS=3"), refined) == JobsetRule(
        job_event_service=3, jobs_per_set=3, clone_mode="storeonce"
    )
    with pytest.raises(InvalidInput, match="nEventsPerWorker"):
        jobset_rule(task_row(1, None), refine(NO_INPUT_TASK))


def test_a_cycle_takes_a_bounded_number_of_ranges() -> None:
    rule = JobsetRule(job_event_service=JOB_ES_CONSUMER, jobs_per_set=1, n_events_per_range=1)
    half = [[file_row(1, RANGES_PER_CYCLE // 2)]]
    assert len(groups_within_budget(half * 3, rule)) == 2
    # One jobset is always made, up to its own bound.
    big = [[file_row(1, RANGES_PER_CYCLE + 1)]]
    assert groups_within_budget(big * 2, rule) == big
    with pytest.raises(InvalidInput, match="event ranges"):
        groups_within_budget([[file_row(1, MAX_RANGES_PER_JOBSET + 1)]], rule)
    # Cloning makes one row per jobset: no budget.
    assert len(groups_within_budget(big * 3, CLONE_RULE)) == 3


def test_clone_mode_travels_in_special_handling() -> None:
    row: dict[str, Any] = {"specialHandling": "debug"}
    slot = es_generation.JobSlot(0, {"name": "B", "cloud": "C", "maxtime": 60}, JOB_CLONE)
    es_generation.mark_job(row, slot, 99, CLONE_RULE)
    assert row["specialHandling"] == "debug,cloning:storeonce"
    assert (row["eventService"], row["jobsetID"]) == (3, 99)
    assert es_generation.clone_mode(row) == "storeonce"
    assert es_generation.clone_mode({"specialHandling": None}) is None


def test_the_refined_task_keeps_the_es_merge_spec_and_es_only_text() -> None:
    es_only = {"type": "constant", "value": "--es", "es_only": True}
    params = {
        **NO_INPUT_TASK,
        "jobParameters": [*NO_INPUT_TASK["jobParameters"], es_only],
        "eventService": 1,
        "nEventsPerWorker": 2,
        "esmergeSpec": {"transPath": "merge.sh", "jobParameters": "--in ${INPUT0}"},
    }
    refined = refine(params)
    assert refined.event_service is not None and refined.event_service.merge is not None
    assert refined.event_service.merge.trans_path == "merge.sh"
    assert refined.event_service.merge.job_parameters == "--in ${INPUT0}"
    assert refined.job_params_template.endswith("--es")
    assert not refine({**params, "eventService": 0}).job_params_template.endswith("--es")
    assert refine({**params, "eventService": 0}).event_service is None
