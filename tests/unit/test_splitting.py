"""Splitting input files into jobs (domain.md §4.2, §1.4): concrete cases and properties."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bamboo.logic.errors import InvalidInput
from bamboo.logic.secondary import SecondaryUse, allocate, attributes_text
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
from bamboo.logic.taskparams import DatasetPlan

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


# --- walltime sizing ------------------------------------------------------------------------


def test_walltime_closes_a_job_before_the_queue_limit() -> None:
    # 10 s per event, queue maxtime 100 s: at most 10 events per job.
    rule = SplitRule().with_walltime(10, 100)
    rows = rows_of([1] * 5, [4, 4, 3, 12, 1])
    # a file over the limit on its own still makes a job
    assert keys(group_rows(rows, rule)) == [[0, 1], [2], [3], [4]]


def test_walltime_sizing_combines_with_gigabytes_and_file_cap() -> None:
    rule = SplitRule(n_gb_per_job=1.0, n_max_files_per_job=3).with_walltime(1.0, 50)
    rows = rows_of([int(0.4 * GIB)] * 6, [10, 10, 10, 10, 40, 11])
    assert keys(group_rows(rows, rule)) == [[0, 1], [2, 3], [4], [5]]


def test_walltime_does_not_change_fixed_counts() -> None:
    rows = rows_of([1] * 4, [100] * 4)
    assert keys(group_rows(rows, SplitRule(n_files_per_job=2).with_walltime(10, 5))) == [[0, 1], [2, 3]]
    assert keys(group_rows(rows, SplitRule(n_events_per_job=200).with_walltime(10, 5))) == [[0, 1], [2, 3]]


@pytest.mark.parametrize(("per_event", "maxtime"), [(None, 100), (0, 100), (5, None), (5, 0), (-1, 10)])
def test_walltime_sizing_off_without_both_numbers(per_event: float | None, maxtime: int | None) -> None:
    rule = SplitRule(n_gb_per_job=2.0).with_walltime(per_event, maxtime)
    assert rule == SplitRule(n_gb_per_job=2.0)
    assert len(group_rows(rows_of([1] * 3, [10**9] * 3), rule)) == 1


def test_walltime_rule_rejects_non_positive_values() -> None:
    with pytest.raises(ValueError):
        SplitRule(seconds_per_event=0.0, max_walltime=10)


@settings(max_examples=150, deadline=None)
@given(
    rows=row_lists,
    per_event=st.floats(0.1, 20.0),
    maxtime=st.integers(1, 400),
    max_files=st.integers(1, 9),
    gigabytes=st.one_of(st.none(), st.floats(0.01, 3.0)),
)
def test_walltime_groups_partition_and_respect_every_cap(
    rows: list[Row], per_event: float, maxtime: int, max_files: int, gigabytes: float | None
) -> None:
    rule = SplitRule(n_gb_per_job=gigabytes, n_max_files_per_job=max_files).with_walltime(per_event, maxtime)
    groups = group_rows(rows, rule)
    assert all(groups)
    assert [row for group in groups for row in group] == rows
    limit = int(gigabytes * GIB) if gigabytes is not None else rule.max_size_per_job
    max_events = maxtime / per_event
    for index, group in enumerate(groups):
        events = sum(r.n_events for r in group)
        size = sum(r.size for r in group)
        assert len(group) <= max_files
        assert len(group) == 1 or (events <= max_events and size <= limit)
        if index + 1 < len(groups):
            nxt = groups[index + 1][0]
            assert len(group) == max_files or size + nxt.size > limit or events + nxt.n_events > max_events


# --- secondary inputs -----------------------------------------------------------------------


def plan(**kwargs) -> DatasetPlan:
    return DatasetPlan(name="sec.ds", type="input", stream="IN2", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "secondary", "text", "use"),
    [
        ({}, True, None, SecondaryUse()),
        ({"nfiles_per_job": 2}, True, "np=2", SecondaryUse(n_files_per_job=2)),
        ({"ratio": 0.5}, True, "ratio=0.5", SecondaryUse(ratio=0.5)),
        ({"ratio": 3.0, "attributes": ("ru",)}, True, "ru,ratio=3", SecondaryUse(ratio=3, reusable=True)),
        ({"attributes": ("repeat", "nosplit")}, True, "repeat,nosplit", SecondaryUse(every_file=True)),
        # the master's nFilesPerJob is the task's business, not an attribute
        ({"nfiles_per_job": 2, "attributes": ("cc",)}, False, "cc", SecondaryUse()),
    ],
)
def test_secondary_attributes_round_trip(kwargs: dict, secondary: bool, text: str | None, use) -> None:
    assert attributes_text(plan(**kwargs), secondary=secondary) == text
    if secondary:
        assert SecondaryUse.from_attributes(text) == use


@pytest.mark.parametrize("text", ["np=abc,ratio=-1", "np=,ratio=nan", "np=0,ratio=0", "ratio=inf"])
def test_malformed_secondary_sizing_is_ignored(text: str) -> None:
    assert SecondaryUse.from_attributes(text) == SecondaryUse()


def test_secondary_tracking() -> None:
    assert SecondaryUse().tracked and SecondaryUse(n_files_per_job=3).tracked
    assert not SecondaryUse(reusable=True).tracked
    assert not SecondaryUse(every_file=True).tracked


def test_secondary_default_is_one_file_per_master_file() -> None:
    assert allocate([2, 2, 1], list("abcdefg"), SecondaryUse()) == [["a", "b"], ["c", "d"], ["e"]]


def test_secondary_files_per_job_ignores_master_count() -> None:
    assert allocate([5, 1, 3], list("abcde"), SecondaryUse(n_files_per_job=2)) == [
        ["a", "b"],
        ["c", "d"],
        ["e"],
    ]


def test_secondary_runs_out() -> None:
    assert allocate([1, 1, 1], ["a"], SecondaryUse()) == [["a"], [], []]


def test_secondary_fractional_ratio_rounds_up() -> None:
    assert allocate([3, 1, 2], list("abcdefgh"), SecondaryUse(ratio=0.5)) == [["a", "b"], ["c"], ["d"]]
    # float noise in an integral product does not add a file
    assert SecondaryUse(ratio=0.1).files_for(30, 100) == 3


def test_secondary_reusable_starts_again() -> None:
    assert allocate([1, 1, 1, 1], list("abc"), SecondaryUse(n_files_per_job=2, reusable=True)) == [
        ["a", "b"],
        ["a", "b"],
        ["a", "b"],
        ["a", "b"],
    ]
    assert allocate([1, 1, 1, 1], list("abc"), SecondaryUse(reusable=True)) == [["a"], ["b"], ["c"], ["a"]]


def test_secondary_every_file_in_every_job() -> None:
    assert allocate([1, 4], list("ab"), SecondaryUse(every_file=True, n_files_per_job=1)) == [
        ["a", "b"],
        ["a", "b"],
    ]


secondary_uses = st.builds(
    SecondaryUse,
    n_files_per_job=st.one_of(st.none(), st.integers(1, 5)),
    ratio=st.one_of(st.integers(1, 4), st.floats(0.05, 4.0)),
    reusable=st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(counts=st.lists(st.integers(1, 6), max_size=15), n_rows=st.integers(0, 40), use=secondary_uses)
def test_secondary_allocation_properties(counts: list[int], n_rows: int, use: SecondaryUse) -> None:
    rows = list(range(n_rows))
    shares = allocate(counts, rows, use)
    assert len(shares) == len(counts)
    for share, count in zip(shares, counts, strict=True):
        wanted = use.files_for(count, n_rows)
        assert len(share) <= wanted
        # a share is a run of consecutive rows
        assert share == list(range(share[0], share[0] + len(share))) if share else True
        if use.reusable and wanted <= n_rows:
            assert len(share) == wanted
    if not use.reusable:
        handed = [row for share in shares for row in share]
        # each row at most once, in order, and nothing skipped while jobs still wanted more
        assert handed == rows[: len(handed)]
        total_wanted = sum(use.files_for(c, n_rows) for c in counts)
        assert len(handed) == min(total_wanted, n_rows)


def test_rule_at_a_queue() -> None:
    queue = {"name": "Q", "maxtime": 3600, "maxwdir": 4000}
    rule = SplitRule().for_queue(queue, 2.5)
    assert rule == SplitRule(max_size_per_job=4000 * 1024**2, seconds_per_event=2.5, max_walltime=3600)
    # the task's own size limit still wins over the queue's scratch space
    assert group_rows(rows_of([3 * GIB] * 2), SplitRule(n_gb_per_job=10.0).for_queue(queue, None)) == [
        rows_of([3 * GIB] * 2)
    ]
    assert keys(group_rows(rows_of([3 * GIB] * 2), rule)) == [[0], [1]]
    assert SplitRule().for_queue({"name": "Q"}, 2.5) == SplitRule()


# --- merge jobs -----------------------------------------------------------------------------


def test_merge_rule_defaults_to_fifty_files_and_five_gigabytes() -> None:
    rule = SplitRule.for_merges({})
    assert (rule.n_files_per_job, rule.n_gb_per_job, rule.n_max_files_per_job) == (None, None, 50)
    assert rule.max_size_per_job == 5 * GIB
    sizes = [Row(key=i, size=GIB, n_events=None) for i in range(12)]
    assert [len(group) for group in group_rows(sizes, rule)] == [5, 5, 2]


def test_merge_rule_takes_files_or_gigabytes_per_merge_job() -> None:
    assert SplitRule.for_merges({"nFilesPerMergeJob": 3, "nGBPerMergeJob": 1}).n_files_per_job == 3
    rule = SplitRule.for_merges({"nGBPerMergeJob": 2, "nMaxFilesPerMergeJob": 4})
    assert (rule.n_gb_per_job, rule.n_max_files_per_job) == (2.0, 4)
    assert SplitRule.for_merges({"nGBPerMergeJob": "MAX"}).n_gb_per_job is None
