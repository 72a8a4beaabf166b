"""Splitting input files into jobs (domain.md §4.2, §1.4): concrete cases and properties."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bamboo.logic.errors import InvalidInput
from bamboo.logic.splitting import (
    DEFAULT_MAX_FILES_PER_JOB,
    DEFAULT_MAX_SIZE_PER_JOB,
    GIB,
    FileInfo,
    Row,
    Segment,
    SplitRule,
    cut_events,
    group_rows,
)

# --- SplitRule.from_params ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "per_file", "expected"),
    [
        ({}, None, SplitRule()),
        ({"nEventsPerJob": 1000}, None, SplitRule(n_events_per_job=1000)),
        ({"nEventsPerJob": 1000}, 5000, SplitRule(n_events_per_job=1000)),
        # NE >= events per file turns into whole files per job
        ({"nEventsPerJob": 5000}, 5000, SplitRule(n_files_per_job=1)),
        ({"nEventsPerJob": 2500}, 1000, SplitRule(n_files_per_job=2)),
        # a higher-priority key makes the lower ones ignored
        ({"nEventsPerJob": 10, "nFilesPerJob": 3, "nGBPerJob": 5}, None, SplitRule(n_events_per_job=10)),
        ({"nFilesPerJob": 3, "nGBPerJob": 5}, None, SplitRule(n_files_per_job=3)),
        ({"nGBPerJob": 5}, None, SplitRule(n_gb_per_job=5.0)),
        ({"nGBPerJob": 0.5}, None, SplitRule(n_gb_per_job=0.5)),
        ({"nGBPerJob": "MAX"}, None, SplitRule()),
        (
            {"nFilesPerJob": 2, "nMaxFilesPerJob": 50},
            None,
            SplitRule(n_files_per_job=2, n_max_files_per_job=50),
        ),
        ({"nMaxFilesPerJob": None, "nFilesPerJob": None}, None, SplitRule()),
    ],
)
def test_from_params(params: dict, per_file: int | None, expected: SplitRule) -> None:
    assert SplitRule.from_params(params, per_file) == expected


def test_defaults() -> None:
    rule = SplitRule()
    assert rule.n_max_files_per_job == DEFAULT_MAX_FILES_PER_JOB == 200
    assert rule.max_size_per_job == DEFAULT_MAX_SIZE_PER_JOB == 20 * 1024**3


@pytest.mark.parametrize(
    "kwargs",
    [{"n_files_per_job": 0}, {"n_events_per_job": -1}, {"n_gb_per_job": 0.0}, {"n_max_files_per_job": 0}],
)
def test_rule_rejects_non_positive_sizes(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SplitRule(**kwargs)


# --- cut_events -----------------------------------------------------------------------------


def test_cut_single_pseudo_file_like_the_generation_example() -> None:
    # domain.md §1.7: one pseudo file of 10000 events, 1000 per job -> 10 chunks.
    segments = cut_events([FileInfo("pseudo", 0, 10000)], 1000)
    assert len(segments) == 10
    assert [s.start_event for s in segments] == list(range(0, 10000, 1000))
    assert [s.first_event for s in segments] == list(range(1, 10001, 1000))
    assert all(s.n_events == 1000 and s.file_index == 0 for s in segments)
    assert segments[-1].end_event == 9999


def test_cut_carries_the_remaining_count_into_the_next_file() -> None:
    files = [FileInfo("a", 10, 3), FileInfo("b", 10, 3), FileInfo("c", 10, 3)]
    assert cut_events(files, 4) == [
        Segment(0, 0, 2, 1),
        Segment(1, 0, 0, 4),
        Segment(1, 1, 2, 5),
        Segment(2, 0, 1, 7),
        Segment(2, 2, 2, 9),
    ]


def test_cut_numbers_events_from_first_event() -> None:
    segments = cut_events([FileInfo("a", 1, 5)], 2, first_event=101)
    assert [(s.start_event, s.end_event, s.first_event) for s in segments] == [
        (0, 1, 101),
        (2, 3, 103),
        (4, 4, 105),
    ]


@pytest.mark.parametrize("n_events", [None, 0, -5])
def test_cut_needs_event_counts(n_events: int | None) -> None:
    with pytest.raises(InvalidInput, match=r"'evnt\.2\.root'"):
        cut_events([FileInfo("evnt.1.root", 1, 10), FileInfo("evnt.2.root", 1, n_events)], 5)


def test_cut_needs_positive_chunk() -> None:
    with pytest.raises(InvalidInput, match="'nEventsPerJob' must be a positive integer, got 0"):
        cut_events([FileInfo("a", 1, 10)], 0)


def test_cut_of_no_files_is_empty() -> None:
    assert cut_events([], 10) == []


# --- group_rows -----------------------------------------------------------------------------


def rows_of(sizes: list[int], events: list[int | None] | None = None) -> list[Row]:
    events = events if events is not None else [None] * len(sizes)
    return [Row(key=i, size=size, n_events=n) for i, (size, n) in enumerate(zip(sizes, events, strict=True))]


def keys(groups: list[list[Row]]) -> list[list[int]]:
    return [[row.key for row in group] for group in groups]


def test_group_by_files() -> None:
    assert keys(group_rows(rows_of([1] * 5), SplitRule(n_files_per_job=2))) == [[0, 1], [2, 3], [4]]


def test_group_by_files_ignores_the_file_cap() -> None:
    groups = group_rows(rows_of([1] * 7), SplitRule(n_files_per_job=5, n_max_files_per_job=2))
    assert keys(groups) == [[0, 1, 2, 3, 4], [5, 6]]


def test_group_by_events_rebuilds_chunks() -> None:
    files = [FileInfo("a", 10, 3), FileInfo("b", 10, 3), FileInfo("c", 10, 3)]
    segments = cut_events(files, 4)
    rows = [Row(key=i, size=0, n_events=s.n_events) for i, s in enumerate(segments)]
    assert keys(group_rows(rows, SplitRule(n_events_per_job=4))) == [[0, 1], [2, 3], [4]]


def test_group_by_events_needs_counts() -> None:
    with pytest.raises(InvalidInput, match="'row-7'"):
        group_rows([Row("row-1", 1, 3), Row("row-7", 1, None)], SplitRule(n_events_per_job=5))


def test_group_by_gigabytes() -> None:
    sizes = [int(0.6 * GIB), int(0.3 * GIB), int(0.3 * GIB), 2 * GIB, int(0.1 * GIB)]
    groups = group_rows(rows_of(sizes), SplitRule(n_gb_per_job=1.0))
    # a file larger than the limit still makes a job alone
    assert keys(groups) == [[0, 1], [2], [3], [4]]


def test_group_by_gigabytes_respects_file_cap() -> None:
    groups = group_rows(rows_of([1] * 5), SplitRule(n_gb_per_job=1.0, n_max_files_per_job=2))
    assert keys(groups) == [[0, 1], [2, 3], [4]]


def test_group_default_uses_max_size_and_cap() -> None:
    assert keys(group_rows(rows_of([1] * 450), SplitRule())) == [
        list(range(200)),
        list(range(200, 400)),
        list(range(400, 450)),
    ]
    groups = group_rows(rows_of([8 * GIB, 8 * GIB, 8 * GIB, 4 * GIB]), SplitRule())
    assert keys(groups) == [[0, 1], [2, 3]]


def test_group_nothing() -> None:
    assert group_rows([], SplitRule(n_files_per_job=3)) == []
    assert group_rows([], SplitRule(n_events_per_job=3)) == []
    assert group_rows([], SplitRule()) == []


# --- properties -----------------------------------------------------------------------------

file_infos = st.lists(
    st.builds(
        FileInfo, lfn=st.text(min_size=1, max_size=5), size=st.integers(0, 10), n_events=st.integers(1, 60)
    ),
    max_size=12,
)
rules = st.one_of(
    st.builds(SplitRule, n_files_per_job=st.integers(1, 7), n_max_files_per_job=st.integers(1, 9)),
    st.builds(SplitRule, n_events_per_job=st.integers(1, 50)),
    st.builds(SplitRule, n_gb_per_job=st.floats(0.01, 3.0), n_max_files_per_job=st.integers(1, 9)),
    st.builds(SplitRule, n_max_files_per_job=st.integers(1, 9), max_size_per_job=st.integers(1, 4 * GIB)),
)
row_lists = st.lists(
    st.builds(Row, key=st.none(), size=st.integers(0, 2 * GIB), n_events=st.integers(1, 40)), max_size=40
).map(lambda rows: [Row(key=i, size=r.size, n_events=r.n_events) for i, r in enumerate(rows)])


@settings(max_examples=150, deadline=None)
@given(rows=row_lists, rule=rules)
def test_groups_partition_rows_in_order(rows: list[Row], rule: SplitRule) -> None:
    groups = group_rows(rows, rule)
    assert all(groups)
    assert [row for group in groups for row in group] == rows


@settings(max_examples=150, deadline=None)
@given(rows=row_lists, rule=rules)
def test_group_limits(rows: list[Row], rule: SplitRule) -> None:
    groups = group_rows(rows, rule)
    if rule.n_events_per_job is not None:
        for group in groups[:-1]:
            # the last row is what crossed the target
            assert (
                sum(r.n_events for r in group[:-1]) < rule.n_events_per_job <= sum(r.n_events for r in group)
            )
    elif rule.n_files_per_job is not None:
        assert all(len(group) == rule.n_files_per_job for group in groups[:-1])
        assert not groups or 1 <= len(groups[-1]) <= rule.n_files_per_job
    else:
        limit = int(rule.n_gb_per_job * GIB) if rule.n_gb_per_job is not None else rule.max_size_per_job
        for index, group in enumerate(groups):
            assert len(group) <= rule.n_max_files_per_job
            assert len(group) == 1 or sum(r.size for r in group) <= limit
            if index + 1 < len(groups):
                # a group closes only because the next row would break a limit
                nxt = groups[index + 1][0]
                full = len(group) == rule.n_max_files_per_job
                assert full or sum(r.size for r in group) + nxt.size > limit


@settings(max_examples=150, deadline=None)
@given(files=file_infos, n_events_per_job=st.integers(1, 70), first_event=st.integers(1, 10**6))
def test_segments_cover_every_event_once(
    files: list[FileInfo], n_events_per_job: int, first_event: int
) -> None:
    segments = cut_events(files, n_events_per_job, first_event=first_event)
    for index, info in enumerate(files):
        mine = [s for s in segments if s.file_index == index]
        assert mine[0].start_event == 0
        assert mine[-1].end_event == info.n_events - 1
        for before, after in itertools.pairwise(mine):
            assert after.start_event == before.end_event + 1
        assert all(1 <= s.n_events <= n_events_per_job for s in mine)
    # segments run in file order and number events consecutively across files
    assert [s.file_index for s in segments] == sorted(s.file_index for s in segments)
    expected_first = first_event
    for segment in segments:
        assert segment.first_event == expected_first
        expected_first += segment.n_events
    assert expected_first - first_event == sum(f.n_events for f in files)


@settings(max_examples=150, deadline=None)
@given(files=file_infos, n_events_per_job=st.integers(1, 70))
def test_event_chunks_are_exact(files: list[FileInfo], n_events_per_job: int) -> None:
    segments = cut_events(files, n_events_per_job)
    rows = [Row(key=i, size=0, n_events=s.n_events) for i, s in enumerate(segments)]
    groups = group_rows(rows, SplitRule(n_events_per_job=n_events_per_job))
    total = sum(f.n_events for f in files)
    assert all(sum(r.n_events for r in group) == n_events_per_job for group in groups[:-1])
    assert len(groups) == math.ceil(total / n_events_per_job)
    # a chunk touches each file at most once
    for group in groups:
        touched = [segments[r.key].file_index for r in group]
        assert len(touched) == len(set(touched))


@settings(max_examples=100, deadline=None)
@given(n_events=st.integers(1, 5000), n_events_per_job=st.integers(1, 6000))
def test_no_input_job_count(n_events: int, n_events_per_job: int) -> None:
    rule = SplitRule.from_params({"nEventsPerJob": n_events_per_job}, n_events)
    if rule.n_events_per_job is None:
        # the whole pseudo file fits in one job
        assert n_events_per_job >= n_events
        assert len(group_rows([Row(0, 0, n_events)], rule)) == 1
        return
    segments = cut_events([FileInfo("pseudo", 0, n_events)], n_events_per_job)
    rows = [Row(key=i, size=0, n_events=s.n_events) for i, s in enumerate(segments)]
    assert len(group_rows(rows, rule)) == math.ceil(n_events / n_events_per_job)


@settings(max_examples=100, deadline=None)
@given(n_files=st.integers(0, 300), n_files_per_job=st.integers(1, 40))
def test_file_job_count(n_files: int, n_files_per_job: int) -> None:
    rows = rows_of([GIB] * n_files)
    assert len(group_rows(rows, SplitRule(n_files_per_job=n_files_per_job))) == math.ceil(
        n_files / n_files_per_job
    )
