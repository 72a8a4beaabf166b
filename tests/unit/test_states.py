"""The job state machine for pilot reports and the task final-status rule, exhaustively."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bamboo.logic.states import (
    COMMAND_ALREADY_DONE,
    COMMAND_KILL,
    JOB_FINAL,
    JOB_KILLED,
    JOB_REPORTABLE_FROM,
    JOB_STATUSES,
    PILOT_REPORTABLE,
    PilotDecision,
    completeness,
    final_task_status,
    pilot_report,
)

ALL_PAIRS = list(itertools.product(sorted(JOB_STATUSES), sorted(PILOT_REPORTABLE)))


@pytest.mark.parametrize(("current", "reported"), ALL_PAIRS)
def test_nothing_leaves_a_final_status(current: str, reported: str) -> None:
    decision = pilot_report(current, reported)
    if current in JOB_KILLED:
        assert decision == PilotDecision(None, reply=COMMAND_KILL), "a killed job's pilot must stop"
    elif current in JOB_FINAL:
        assert decision == PilotDecision(None, reply=COMMAND_ALREADY_DONE)
    if decision.status is not None:
        assert decision.status not in JOB_FINAL, "pilots never set a final status directly"


@pytest.mark.parametrize(("current", "reported"), ALL_PAIRS)
def test_repeating_a_report_changes_nothing_more(current: str, reported: str) -> None:
    first = pilot_report(current, reported)
    after = first.status or current
    second = pilot_report(after, reported)
    assert (second.status or after) == after


@pytest.mark.parametrize(
    ("current", "reported", "expected"),
    [
        ("sent", "starting", PilotDecision("starting")),
        ("sent", "running", PilotDecision("running")),
        ("activated", "running", PilotDecision("running")),
        ("starting", "running", PilotDecision("running")),
        ("running", "running", PilotDecision("running")),
        ("running", "starting", PilotDecision(None)),
        ("running", "finished", PilotDecision("holding", final_report=True)),
        ("running", "failed", PilotDecision("holding", final_report=True)),
        ("sent", "finished", PilotDecision("holding", final_report=True)),
        ("running", "holding", PilotDecision("holding")),
        ("running", "transferring", PilotDecision("transferring")),
        ("holding", "finished", PilotDecision("holding", final_report=True)),
        ("holding", "holding", PilotDecision(None, reply=COMMAND_ALREADY_DONE)),
        ("holding", "running", PilotDecision(None)),
        ("holding", "starting", PilotDecision(None)),
        ("transferring", "running", PilotDecision(None)),
        ("transferring", "holding", PilotDecision(None, reply=COMMAND_ALREADY_DONE)),
        ("transferring", "finished", PilotDecision("holding", final_report=True)),
        ("merging", "running", PilotDecision(None)),
        ("merging", "finished", PilotDecision(None)),
        ("failed", "running", PilotDecision(None, reply=COMMAND_ALREADY_DONE)),
        ("finished", "finished", PilotDecision(None, reply=COMMAND_ALREADY_DONE)),
        ("defined", "running", PilotDecision(None, reply=COMMAND_KILL)),
        ("throttled", "running", PilotDecision(None, reply=COMMAND_KILL)),
    ],
)
def test_transition_table(current: str, reported: str, expected: PilotDecision) -> None:
    assert pilot_report(current, reported) == expected


def test_transferring_may_fall_back_to_holding_with_a_diagnostic() -> None:
    assert pilot_report("transferring", "holding", has_dispatcher_diag=True) == PilotDecision("holding")


def test_unknown_report_is_refused() -> None:
    with pytest.raises(ValueError):
        pilot_report("running", "dancing")


@given(
    st.lists(st.sampled_from(sorted(PILOT_REPORTABLE)), max_size=30),
    st.sampled_from(sorted(JOB_REPORTABLE_FROM)),
)
def test_any_report_sequence_stays_in_known_statuses(reports: list[str], start: str) -> None:
    status = start
    for reported in reports:
        status = pilot_report(status, reported).status or status
        assert status in JOB_STATUSES and status not in JOB_FINAL


@pytest.mark.parametrize(
    ("n_files", "finished", "parent", "mutable", "expected"),
    [
        (4, 4, None, False, "done"),
        (4, 4, "done", False, "done"),
        (4, 4, "finished", False, "finished"),
        (4, 4, "running", False, "finished"),
        (4, 4, "failed", False, "failed"),
        (4, 4, "broken", False, "failed"),
        (4, 4, None, True, "finished"),
        (4, 0, None, False, "failed"),
        (4, 3, None, False, "finished"),
        (4, 1, "failed", False, "finished"),
    ],
)
def test_final_task_status(
    n_files: int, finished: int, parent: str | None, mutable: bool, expected: str
) -> None:
    assert (
        final_task_status(
            n_files=n_files, n_files_finished=finished, parent_status=parent, input_mutable=mutable
        )
        == expected
    )


@pytest.mark.parametrize(
    ("finished", "done_per_mille", "goal", "fail_goal", "expected"),
    [
        (2, 500, None, False, "finished"),
        (2, 500, None, True, "failed"),  # the default goal is everything
        (2, 500, 500, True, "finished"),
        (2, 499, 500, True, "failed"),
        (2, None, 500, True, "finished"),  # by files: 2 of 4 is 500 per mille
        (1, None, 500, True, "failed"),
        (4, 1000, 500, True, "done"),
        (0, 0, 100, True, "failed"),
    ],
)
def test_fail_when_goal_unreached(
    finished: int, done_per_mille: int | None, goal: int | None, fail_goal: bool, expected: str
) -> None:
    assert (
        final_task_status(
            n_files=4,
            n_files_finished=finished,
            parent_status=None,
            done_per_mille=done_per_mille,
            goal=goal,
            fail_goal_unreached=fail_goal,
        )
        == expected
    )


def test_completeness_counts_events_when_there_are_some() -> None:
    assert completeness(n_files=4, n_files_finished=1, n_events=100, n_events_used=75) == 750
    assert completeness(n_files=4, n_files_finished=1, n_events=0, n_events_used=0) == 250
    assert completeness(n_files=0, n_files_finished=0, n_events=0, n_events_used=0) == 0
