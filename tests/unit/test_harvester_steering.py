"""Target slots and worker reports in brokerage, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from bamboo.logic import target_slots
from bamboo.logic.brokerage import QueueLoad, TaskNeeds, choose_queue
from bamboo.logic.target_slots import SlotRow, closed_to
from tests.unit.test_brokerage import RESOURCE_TYPES, USER, queue

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
EXPRESS = TaskNeeds(site=None, prod_source_label="managed", gshare="Express")


def row(gshare: str = "", resource_type: str = "", n: int = 0, expiration: datetime | None = None) -> SlotRow:
    return SlotRow(gshare, resource_type, n, expiration)


def test_which_rows_close_which_jobs() -> None:
    assert closed_to([row()], "Express", "SCORE")
    assert closed_to([row("Express")], "Express", "MCORE")
    assert not closed_to([row("Express")], "Other", "SCORE")
    assert not closed_to([row("Express")], None, "SCORE")
    assert closed_to([row("", "SCORE")], None, "SCORE")
    assert not closed_to([row("Express", "SCORE")], "Express", "MCORE")
    assert not closed_to([row(n=5)], "Express", "SCORE")


def test_live_rows_by_queue_drop_expired_ones() -> None:
    records = [
        {"pandaQueueName": "A", "gshare": "", "resourceType": "", "numSlots": 0, "expirationTime": NOW},
        {"pandaQueueName": "A", "gshare": "G", "resourceType": "", "numSlots": 3, "expirationTime": None},
        {
            "pandaQueueName": "B",
            "gshare": "",
            "resourceType": "SCORE",
            "numSlots": 0,
            "expirationTime": NOW + timedelta(seconds=1),
        },
    ]
    assert target_slots.live_by_queue(records, NOW) == {
        "A": (row("G", n=3),),
        "B": (row("", "SCORE", 0, NOW + timedelta(seconds=1)),),
    }


def test_brokerage_leaves_out_queues_with_zero_slots_for_the_task() -> None:
    loads = {"BEST": QueueLoad(running=100), "OTHER": QueueLoad(running=1)}
    specs = [queue("BEST"), queue("OTHER")]
    assert choose_queue(EXPRESS, specs, loads, rt_rows=RESOURCE_TYPES).queue["name"] == "BEST"
    closed = {"BEST": (row("Express"),)}
    assert choose_queue(EXPRESS, specs, loads, rt_rows=RESOURCE_TYPES, slots=closed).queue["name"] == "OTHER"
    # The resource type the task's jobs would get at the queue decides: SCORE here.
    by_type = {"BEST": (row("", "MCORE"),)}
    assert choose_queue(EXPRESS, specs, loads, rt_rows=RESOURCE_TYPES, slots=by_type).queue["name"] == "BEST"
    by_type = {"BEST": (row("", "SCORE"),), "OTHER": (row("", "SCORE"),)}
    choice = choose_queue(EXPRESS, specs, loads, rt_rows=RESOURCE_TYPES, slots=by_type)
    assert choice.queue is None
    assert choice.reasons == (
        "BEST has 0 target slots for Express's SCORE jobs",
        "OTHER has 0 target slots for Express's SCORE jobs",
    )


def test_a_ucore_pseudo_queue_with_slots_left_still_takes_the_task() -> None:
    eight = TaskNeeds(site=None, prod_source_label="managed", core_count=8)
    ucore = queue("UC", capability="ucore", corecount=8)
    closed_single = {"UC": (row("", "SCORE"),)}
    choice = choose_queue(eight, [ucore], {}, rt_rows=RESOURCE_TYPES, slots=closed_single)
    assert choice.queue is not None and choice.queue["resource_type"] == "MCORE"
    closed_multi = {"UC": (row("", "MCORE"),)}
    assert choose_queue(eight, [ucore], {}, rt_rows=RESOURCE_TYPES, slots=closed_multi).queue is None


def test_queues_with_waiting_workers_go_first() -> None:
    loads = {"BUSY": QueueLoad(running=100), "HUNGRY": QueueLoad(running=1, activated=3)}
    specs = [queue("BUSY"), queue("HUNGRY")]
    assert choose_queue(USER, specs, loads).queue["name"] == "BUSY"
    assert choose_queue(USER, specs, loads, waiting={"HUNGRY": 4}).queue["name"] == "HUNGRY"
    # As many jobs already wait there as workers: they have work, the weight decides again.
    assert choose_queue(USER, specs, loads, waiting={"HUNGRY": 3}).queue["name"] == "BUSY"
    # Waiting workers never bring back a queue a filter left out.
    assert (
        choose_queue(
            USER, [queue("BUSY"), queue("HUNGRY", status="offline")], loads, waiting={"HUNGRY": 9}
        ).queue["name"]
        == "BUSY"
    )


@given(
    st.dictionaries(st.sampled_from(["A", "B", "C"]), st.integers(0, 20)),
    st.dictionaries(st.sampled_from(["A", "B", "C"]), st.integers(0, 20)),
)
def test_a_queue_with_waiting_workers_is_chosen_whenever_one_exists(waiting: dict, activated: dict) -> None:
    loads = {name: QueueLoad(activated=n) for name, n in activated.items()}
    specs = [queue("A"), queue("B"), queue("C")]
    chosen = choose_queue(USER, specs, loads, waiting=waiting).queue["name"]
    hungry = {name for name in "ABC" if waiting.get(name, 0) > activated.get(name, 0)}
    assert chosen in hungry or not hungry


def test_waiting_workers_count_idle_ready_and_submitted_of_every_instance() -> None:
    stats = [
        {"computingSite": "A", "status": "idle", "n_workers": 2},
        {"computingSite": "A", "status": "submitted", "n_workers": 3},
        {"computingSite": "A", "status": "running", "n_workers": 50},
        {"computingSite": "B", "status": "ready", "n_workers": 1},
        {"computingSite": "C", "status": "running", "n_workers": 7},
    ]
    assert target_slots.waiting_workers(stats) == {"A": 5, "B": 1}
