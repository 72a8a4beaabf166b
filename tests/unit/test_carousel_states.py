"""The staging request state machine (domain.md §9.3, api-v1.md §3.8) and the task statuses the
carousel moves tasks through."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bamboo.logic.states import (
    REQUEST_ACTIVE,
    REQUEST_FINAL,
    REQUEST_REUSABLE,
    REQUEST_STATUSES,
    REQUEST_TRANSITIONS,
    RequestTransitionError,
    check_request_transition,
    task_transition_allowed,
)

STATUSES = sorted(REQUEST_STATUSES)


def allowed(current: str, new: str) -> bool:
    try:
        check_request_transition(current, new)
    except RequestTransitionError:
        return False
    return True


def test_the_vocabulary() -> None:
    assert REQUEST_STATUSES == {"queued", "staging", "done", "cancelled", "retired"}
    assert set(REQUEST_TRANSITIONS) == REQUEST_STATUSES
    for targets in REQUEST_TRANSITIONS.values():
        assert targets <= REQUEST_STATUSES
    assert REQUEST_REUSABLE == REQUEST_ACTIVE | {"done"}


@pytest.mark.parametrize(("current", "new"), list(itertools.product(STATUSES, STATUSES)))
def test_final_requests_never_become_active_again(current: str, new: str) -> None:
    if current in REQUEST_FINAL and new in REQUEST_ACTIVE:
        assert not allowed(current, new)


def test_the_normal_path_and_its_exits() -> None:
    assert allowed("queued", "staging")
    assert allowed("staging", "done")
    assert allowed("done", "retired")
    assert allowed("queued", "cancelled")
    assert allowed("staging", "cancelled")
    # Staging ends only through a rule: a queued request is never done at once.
    assert not allowed("queued", "done")
    assert not allowed("staging", "retired")
    assert not allowed("cancelled", "retired")
    assert not allowed("done", "done")


@given(st.lists(st.sampled_from(STATUSES), max_size=30))
def test_any_walk_follows_queued_staging_done_retired(attempts: list[str]) -> None:
    """Whatever the agent and the operators try, in whatever order, the accepted changes keep the
    request on its one path, and it ends in a final status at most once."""
    status = "queued"
    history = [status]
    for new in attempts:
        if allowed(status, new):
            status = new
            history.append(status)
    order = {"queued": 0, "staging": 1, "done": 2, "retired": 3, "cancelled": 3}
    assert [order[s] for s in history] == sorted(order[s] for s in history)
    assert len(history) == len(set(history))
    if "done" in history:
        assert "staging" in history
    if "retired" in history:
        assert "done" in history
    assert not ({"cancelled", "retired"} <= set(history))


def test_the_task_side() -> None:
    # The refiner parks a task in staging (also after waiting for its parent).
    assert task_transition_allowed("registered", "staging")
    assert task_transition_allowed("pending", "staging")
    # The carousel resumes it once the request has its rule, then it runs as files arrive.
    assert task_transition_allowed("staging", "staged")
    assert task_transition_allowed("staged", "ready")
    assert not task_transition_allowed("staging", "ready")
    # A staging task may still be killed or paused.
    assert task_transition_allowed("staging", "aborting")
    assert task_transition_allowed("staging", "paused")
