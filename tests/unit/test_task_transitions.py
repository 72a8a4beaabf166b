"""The task transition table and the command acceptance rules agree (domain.md §2.2-2.3)."""

from __future__ import annotations

import itertools

import pytest

from bamboo.logic.states import (
    COMMAND_DOING_STATUS,
    TASK_COMMANDS,
    TASK_FINAL,
    TASK_STATUSES,
    TASK_TRANSITIONS,
    TaskTransitionError,
    check_task_transition,
    command_accepted,
    command_executable,
    task_transition_allowed,
)

PAIRS = list(itertools.product(sorted(TASK_STATUSES), TASK_COMMANDS))


def test_the_table_names_only_known_statuses() -> None:
    assert set(TASK_TRANSITIONS) == TASK_STATUSES
    for targets in TASK_TRANSITIONS.values():
        assert targets <= TASK_STATUSES


# Statuses in the middle of another command: registration accepts kill/finish/pause there (as
# upstream does), but the commando drops them at pickup instead of breaking the transition table.
IN_FLIGHT = {"aborting", "finishing", "toabort", "tobroken", "toreassign"}


@pytest.mark.parametrize(("status", "command"), PAIRS)
def test_an_executable_command_may_enter_its_doing_status(status: str, command: str) -> None:
    doing = COMMAND_DOING_STATUS.get(command)
    if command_executable(command, status) and doing is not None:
        assert task_transition_allowed(status, doing)
    if command_accepted(command, status) and not command_executable(command, status):
        assert status in IN_FLIGHT, f"{command} accepted in {status} but never executable"


@pytest.mark.parametrize(
    ("current", "new"), list(itertools.product(sorted(TASK_FINAL), sorted(TASK_STATUSES)))
)
def test_final_statuses_leave_only_through_retry_or_incexec(current: str, new: str) -> None:
    if task_transition_allowed(current, new) and new != current:
        assert new in ("toretry", "toincexec")


def test_kill_and_finish_are_refused_in_final_statuses() -> None:
    for status in TASK_FINAL:
        assert not command_accepted("kill", status)
        assert not command_accepted("finish", status)


def test_retry_of_a_running_task_is_refused() -> None:
    assert not command_accepted("retry", "running")
    assert command_accepted("retry", "exhausted")


def test_reassign_to_a_site_is_accepted_in_any_status() -> None:
    assert not command_accepted("reassign", "failed")
    assert command_accepted("reassign", "failed", keeps_status=True)


def test_a_refused_transition_raises() -> None:
    with pytest.raises(TaskTransitionError):
        check_task_transition("aborted", "running")
    check_task_transition("running", "aborting")
    check_task_transition("paused", "running")
