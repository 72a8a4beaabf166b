"""The Harvester worker status rule of domain.md §8.1-8.2, over every pair of statuses."""

from __future__ import annotations

import itertools

import pytest

from bamboo.logic.states import WORKER_FINAL, WORKER_NOT_STARTED, WORKER_STATUSES, worker_status

STATUSES = sorted(WORKER_STATUSES)
CASES = list(itertools.product([None, *STATUSES], STATUSES, [True, False]))


def test_the_vocabulary() -> None:
    assert WORKER_STATUSES == {
        "to_submit", "pending", "submitted", "ready", "running", "idle",
        "finished", "failed", "cancelled", "missed",
    }  # fmt: skip
    assert WORKER_FINAL == {"finished", "failed", "cancelled", "missed"}


@pytest.mark.parametrize(("current", "reported", "recent"), CASES)
def test_every_transition(current: str | None, reported: str, recent: bool) -> None:
    kept = worker_status(current, reported, final_is_recent=recent)
    if current in WORKER_FINAL and recent:
        expected = current
    elif current in ("running", "idle") and reported in WORKER_NOT_STARTED:
        expected = current
    else:
        expected = reported
    assert kept == expected
    # Whatever is kept is a status of the vocabulary, and reporting it again changes nothing.
    assert kept in WORKER_STATUSES
    assert worker_status(kept, kept, final_is_recent=recent) == kept


@pytest.mark.parametrize("reported", STATUSES)
def test_a_new_worker_takes_any_status(reported: str) -> None:
    assert worker_status(None, reported, final_is_recent=False) == reported


@pytest.mark.parametrize(("current", "reported"), list(itertools.product(sorted(WORKER_FINAL), STATUSES)))
def test_a_recent_final_status_is_never_left(current: str, reported: str) -> None:
    assert worker_status(current, reported, final_is_recent=True) == current
    assert worker_status(current, reported, final_is_recent=False) == reported


@pytest.mark.parametrize("current", ["running", "idle"])
def test_a_worker_that_ran_does_not_go_back_to_submitted(current: str) -> None:
    for reported in WORKER_NOT_STARTED:
        assert worker_status(current, reported, final_is_recent=False) == current


def test_unknown_reported_status_is_refused() -> None:
    with pytest.raises(ValueError, match="not a worker status: dancing"):
        worker_status("running", "dancing", final_is_recent=False)
