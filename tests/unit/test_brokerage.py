"""Brokerage filters, weights and resource-type matching (domain.md §6.2, §6.3)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bamboo.logic.brokerage import (
    QueueLoad,
    TaskNeeds,
    allows_no_pilot,
    catchall,
    choose_queue,
    disables_reassign,
    job_core_count,
    job_memory,
    pseudo_queues,
    rejection,
    site_matches,
)
from bamboo.logic.resource_types import match_job, match_task

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
        (USER, {"status": "paused"}, "Q is paused and the task does not name it"),
        (USER, {"status": "test"}, "Q is test and the task does not name it"),
        (TaskNeeds(site=None, prod_source_label="test"), {"status": "test"}, None),
        (TaskNeeds(site=None, prod_source_label="ptest"), {"status": "test"}, None),
        (
            TaskNeeds(site=None, prod_source_label="managed"),
            {"status": "brokeroff"},
            ("Q is brokeroff and the task does not name it"),
        ),
        (TaskNeeds(site="Q", prod_source_label="user"), {"status": "paused"}, None),
        (TaskNeeds(site="Q", prod_source_label="user"), {"status": "offline"}, "Q is offline"),
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


# --- the other filters of domain.md §6.2 --------------------------------------------------------


@pytest.mark.parametrize(
    ("needs", "spec", "reason"),
    [
        # Scratch: output + work disk + the largest input file, against maxwdir.
        (
            TaskNeeds(site=None, prod_source_label="user", disk=1000, largest_input=1000),
            {"maxwdir": 2000},
            None,
        ),
        (
            TaskNeeds(site=None, prod_source_label="user", disk=1000, largest_input=1001),
            {"maxwdir": 2000},
            "Q has 2000 MB of scratch, a job needs 2001 MB",
        ),
        # Direct IO (maxinputsize -1): the input is not copied to scratch.
        (
            TaskNeeds(site=None, prod_source_label="user", disk=1000, largest_input=5000),
            {"maxwdir": 2000, "maxinputsize": -1},
            None,
        ),
        (TaskNeeds(site=None, prod_source_label="user", disk=10**6), {"maxwdir": 0}, None),
        # Walltime bounds.
        (TaskNeeds(site=None, prod_source_label="user", walltime=3600), {"maxtime": 3600}, None),
        (
            TaskNeeds(site=None, prod_source_label="user", walltime=59),
            {"mintime": 60},
            "Q wants jobs of at least 60 s",
        ),
        (TaskNeeds(site=None, prod_source_label="user", walltime=60), {"mintime": 60}, None),
        # Cores and memory do not apply to a queue the task names (§6.2 filters 5, 6).
        (TaskNeeds(site="Q", prod_source_label="user", core_count=8), {"corecount": 1}, None),
        (TaskNeeds(site="Q", prod_source_label="user", ram_count=9000), {"maxrss": 2000}, None),
        (TaskNeeds(site=None, prod_source_label="user", core_count=0), {"corecount": 8}, None),
        (TaskNeeds(site=None, prod_source_label="user", ram_count=2000), {"maxrss": 2000}, None),
        # processingType lists of the catchall.
        (
            TaskNeeds(site=None, prod_source_label="user", processing_type="simul"),
            {"catchall": "allowed_processing=reprocessing|pile"},
            "Q allows processingType reprocessing|pile only, the task is simul",
        ),
        (
            TaskNeeds(site=None, prod_source_label="user", processing_type="pile"),
            {"catchall": "allowed_processing=reprocessing|pile"},
            None,
        ),
        (
            TaskNeeds(site=None, prod_source_label="user", processing_type="simul"),
            {"catchall": "disableReassign,excluded_processing=simul|evgen"},
            "Q excludes processingType simul",
        ),
        (
            TaskNeeds(site=None, prod_source_label="user", processing_type="pile"),
            {"extra_queue_params": {"excluded_processing": "simul|evgen"}},
            None,
        ),
        (TaskNeeds(site=None, prod_source_label="user"), {"catchall": "excluded_processing=simul"}, None),
    ],
)
def test_more_filters(needs: TaskNeeds, spec: dict, reason: str | None) -> None:
    assert rejection(needs, queue(**spec)) == reason


def test_catchall_switches() -> None:
    spec = queue(catchall="disableReassign, allow_no_pilot=false,per_core_attr")
    assert catchall(spec) == {"disableReassign": "", "allow_no_pilot": "false", "per_core_attr": ""}
    assert disables_reassign(spec)
    assert not allows_no_pilot(spec)
    assert allows_no_pilot(queue(extra_queue_params={"allow_no_pilot": True}))
    assert not disables_reassign(queue())


def test_queues_without_pilots_are_left_out_while_an_active_one_qualifies() -> None:
    # The idle queue has the better weight: only pilot activity puts it aside.
    loads = {"IDLE": QueueLoad(running=100), "ALIVE": QueueLoad(running=1)}
    specs = [queue("IDLE"), queue("ALIVE")]
    choice = choose_queue(USER, specs, loads, active=frozenset({"ALIVE"}))
    assert choice.queue is not None and choice.queue["name"] == "ALIVE"
    assert choose_queue(USER, specs, loads).queue["name"] == "IDLE", "activity not checked"
    # No queue had a pilot (a fresh installation): the work still goes somewhere.
    assert choose_queue(USER, specs, loads, active=frozenset()).queue["name"] == "IDLE"
    # Test tasks and allow_no_pilot queues need no pilot.
    test_task = TaskNeeds(site=None, prod_source_label="test")
    assert choose_queue(test_task, specs, loads, active=frozenset({"ALIVE"})).queue["name"] == "IDLE"
    exempt = [queue("IDLE", catchall="allow_no_pilot"), queue("ALIVE")]
    assert choose_queue(USER, exempt, loads, active=frozenset({"ALIVE"})).queue["name"] == "IDLE"


# --- unified queues: one pseudo-queue per resource type -------------------------------------------


def test_a_ucore_queue_is_one_pseudo_queue_per_resource_type() -> None:
    rows = [*RESOURCE_TYPES, UNDEFINED_ROW]
    specs = pseudo_queues(queue("U", capability="ucore", corecount=8, maxrss=32000), rows)
    assert [(s["resource_type"], s["corecount"], s["minrss"], s["maxrss"]) for s in specs] == [
        ("SCORE", 1, None, 2000),
        ("SCORE_HIMEM", 1, 2001, 4000),
        ("MCORE", 8, None, 16000),
        ("MCORE_HIMEM", 8, 16008, 32000),
    ]
    assert {s["name"] for s in specs} == {"U"}
    # A plain queue, or no resource types known: the queue itself.
    assert pseudo_queues(queue("P", corecount=8), rows) == [queue("P", corecount=8)]
    assert pseudo_queues(queue("U", capability="ucore"), []) == [queue("U", capability="ucore")]
    # Single-core slots have no multi-core pseudo-queue.
    single = pseudo_queues(queue("S", capability="ucore", corecount=1), rows)
    assert [s["resource_type"] for s in single] == ["SCORE", "SCORE_HIMEM"]


@pytest.mark.parametrize(
    ("cores", "ram", "resource_type", "job_cores"),
    [
        (1, 1500, "SCORE", 1),
        (1, 3000, "SCORE_HIMEM", 1),
        (8, 1500, "MCORE", 8),
        (8, 3000, "MCORE_HIMEM", 8),
    ],
)
def test_a_ucore_queue_takes_every_resource_type(
    cores: int, ram: int, resource_type: str, job_cores: int
) -> None:
    needs = TaskNeeds(site=None, prod_source_label="managed", core_count=cores, ram_count=ram)
    unified = queue("U", capability="ucore", corecount=8, maxrss=32000)
    choice = choose_queue(needs, [unified], {}, rt_rows=RESOURCE_TYPES)
    assert choice.queue is not None and choice.queue["resource_type"] == resource_type
    assert job_core_count(needs, choice.queue) == job_cores
    memory = job_memory(needs, job_cores)
    assert match_job(RESOURCE_TYPES, job_cores, memory) == resource_type
    # The same queue without the capability takes only its own slot size.
    assert choose_queue(needs, [queue("U", corecount=8, maxrss=32000)], {}).queue is None or cores == 8


def test_a_ucore_queue_refuses_what_no_pseudo_queue_takes() -> None:
    needs = TaskNeeds(site=None, prod_source_label="managed", core_count=1, ram_count=5000)
    choice = choose_queue(
        needs, [queue("U", capability="ucore", corecount=8, maxrss=32000)], {}, rt_rows=RESOURCE_TYPES
    )
    assert choice.queue is None
    assert choice.reasons == (
        "U/SCORE offers at most 2000 MB, a job needs 5000 MB / U/SCORE_HIMEM offers at most 4000 MB, "
        "a job needs 5000 MB / U/MCORE has 8-core slots, the task is single-core / "
        "U/MCORE_HIMEM has 8-core slots, the task is single-core",
    )


# --- resource types (domain.md §6.3) ---------------------------------------------------------------

UNDEFINED_ROW = {
    "resource_name": "Undefined",
    "mincore": None,
    "maxcore": None,
    "minrampercore": None,
    "maxrampercore": None,
}


@pytest.mark.parametrize(
    ("cores", "memory", "expected"),
    [
        (1, 0, "SCORE"),
        (1, 2000, "SCORE"),
        (1, 2001, "SCORE_HIMEM"),
        (None, 2000, "SCORE"),
        (None, 2001, "SCORE_HIMEM"),
        (2, 4000, "MCORE"),
        (2, 4001, "MCORE"),  # 2000.5 rounds to 2000 (banker's rounding)
        (2, 4002, "MCORE_HIMEM"),
        (0, 16000, "MCORE"),  # 0 cores counts as 8
        (0, 16004, "MCORE"),
        (0, 16005, "MCORE_HIMEM"),
        (64, 128000, "MCORE"),
        (-1, 1000, "Undefined"),
    ],
)
def test_job_resource_type_boundaries(cores: int | None, memory: int, expected: str) -> None:
    assert match_job(RESOURCE_TYPES, cores, memory) == expected
    assert match_job([*RESOURCE_TYPES, UNDEFINED_ROW], cores, memory) == expected


@pytest.mark.parametrize(
    ("cores", "ram", "base", "per_core", "expected"),
    [
        # 0.9 x 2222 = 1999.8 <= 2000; 0.9 x 2224 = 2001.6 >= 2001. Task memory is not rounded
        # (§6.3 rounds only a job's), so 0.9 x 2223 = 2000.7 falls between the conventional rows.
        (1, 2222, 0, True, "SCORE"),
        (1, 2223, 0, True, "Undefined"),
        (1, 2224, 0, True, "SCORE_HIMEM"),
        (None, 2222, 0, True, "SCORE"),
        # The base memory is spread over the cores: (2000 x 8 + 1776) / 8 x 0.9 = 1999.8.
        (8, 2000, 1776, True, "MCORE"),
        (8, 2000, 1784, True, "Undefined"),
        (8, 2000, 1787, True, "MCORE_HIMEM"),
        # Per-job memory: (16000 + 1776) / 8 x 0.9 = 1999.8.
        (8, 16000, 1776, False, "MCORE"),
        (8, 16000, 1787, False, "MCORE_HIMEM"),
        (0, 2222, 0, True, "MCORE"),  # 0 cores counts as 8
        (0, 17776, 0, False, "MCORE"),
        (0, 17787, 0, False, "MCORE_HIMEM"),
        (1, 0, 0, True, "SCORE"),
        (-1, 1000, 0, True, "Undefined"),
    ],
)
def test_task_resource_type_boundaries(
    cores: int | None, ram: int, base: int, per_core: bool, expected: str
) -> None:
    assert match_task(RESOURCE_TYPES, cores, ram, base, ram_per_core=per_core) == expected


def _contains(row: dict, cores: int, ram: float) -> bool:
    def within(value: float, low: int | None, high: int | None) -> bool:
        return (low is None or value >= low) and (high is None or value <= high)

    return within(cores, row["mincore"], row["maxcore"]) and within(
        ram, row["minrampercore"], row["maxrampercore"]
    )


_BOUND = st.one_of(st.none(), st.integers(0, 5000))
_ROWS = st.lists(
    st.fixed_dictionaries(
        {"mincore": _BOUND, "maxcore": _BOUND, "minrampercore": _BOUND, "maxrampercore": _BOUND}
    ),
    max_size=6,
).map(lambda rows: [{"resource_name": f"T{i}", **row} for i, row in enumerate(rows)])


@given(_ROWS, st.one_of(st.none(), st.integers(0, 128)), st.integers(0, 10**6))
def test_a_job_gets_the_first_row_that_contains_it(rows: list[dict], cores: int | None, memory: int) -> None:
    name = match_job(rows, cores, memory)
    effective = 1 if cores is None else (8 if cores == 0 else cores)
    ram = round(memory / effective)
    matching = [row["resource_name"] for row in rows if _contains(row, effective, ram)]
    assert name == (matching[0] if matching else "Undefined")


@given(
    _ROWS,
    st.one_of(st.none(), st.integers(0, 128)),
    st.integers(0, 10**5),
    st.integers(0, 10**5),
    st.booleans(),
)
def test_a_task_gets_the_first_row_that_contains_its_compensated_memory(
    rows: list[dict], cores: int | None, ram: int, base: int, per_core: bool
) -> None:
    name = match_task(rows, cores, ram, base, ram_per_core=per_core)
    effective = 1 if cores is None else (8 if cores == 0 else cores)
    total = ram * effective + base if per_core else ram + base
    matching = [row["resource_name"] for row in rows if _contains(row, effective, total / effective * 0.9)]
    assert name == (matching[0] if matching else "Undefined")
