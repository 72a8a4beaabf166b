"""The retry-rule table (logic/retry_rules.py): loading and checking, matching, specificity, and
what each action changes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bamboo.logic import retry_rules
from bamboo.logic.retry_rules import RetryRulesError, Rule, choose, parse_table
from bamboo.logic.splitting import GIB, SplitRule
from bamboo.logic.task_admin import parse_split_rule


def table(*rules: dict) -> tuple[Rule, ...]:
    return parse_table(json.dumps({"rules": list(rules)}))


def rule(**values) -> Rule:
    return table({"source": "pilotErrorCode", "code": 1212, "action": "no_retry", **values})[0]


# --- Loading and checking ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "retry rules: not valid JSON"),
        ("[]", 'expected an object {"rules": [...]}'),
        ('{"rules": {}}', "'rules' must be a list"),
        ('{"rules": [], "extra": 1}', 'expected an object {"rules": [...]}'),
        ('{"rules": [1]}', "rule 1: a rule must be an object, got 1"),
    ],
)
def test_documents_that_are_not_tables_are_refused(text: str, message: str) -> None:
    with pytest.raises(RetryRulesError) as caught:
        parse_table(text)
    assert message in str(caught.value)


BASE = {"source": "pilotErrorCode", "code": 1212, "action": "no_retry"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"action": "increse_memory"}, "rule 2: unknown action 'increse_memory' (expected one of: no_retry,"),
        (
            {"source": "pilotErrorDiag"},
            "rule 2: unknown source 'pilotErrorDiag' (expected one of: pilotErrorCode,",
        ),
        ({"diag": "(a)\\1"}, "rule 2: 'diag' is not a valid regular expression (RE2"),
        ({"diag": "(?=x)"}, "rule 2: 'diag' is not a valid regular expression"),
        ({"diag": ""}, "rule 2: 'diag' must be a non-empty string"),
        ({"diag": "a" * 257}, "rule 2: 'diag' is longer than 256 characters"),
        ({"code": "1212"}, "rule 2: 'code' must be an integer, got '1212'"),
        ({"code": True}, "rule 2: 'code' must be an integer, got True"),
        ({"code": 0}, "rule 2: 'code' 0 means no error"),
        ({"code": 2**40}, "rule 2: 'code' must be between"),
        ({"active": "yes"}, "rule 2: 'active' must be true or false"),
        ({"architecture": 5}, "rule 2: 'architecture' must be a string"),
        ({"work_queue": "q"}, "rule 2: 'work_queue' must be an integer"),
        ({"colour": "red"}, "rule 2: unknown key(s) colour"),
        ({"parameters": [1]}, "rule 2: 'parameters' must be an object"),
        ({"parameters": {"factor": 2}}, "rule 2: unknown parameter(s) factor for no_retry (expected: none)"),
        ({"action": "limit_retry"}, "rule 2: limit_retry needs the parameter 'max_attempt'"),
        (
            {"action": "limit_retry", "parameters": {"max_attempt": 2.5}},
            "rule 2: 'max_attempt' must be an integer, got 2.5",
        ),
        (
            {"action": "limit_retry", "parameters": {"max_attempt": 0}},
            "rule 2: 'max_attempt' must be between 1 and 1000, got 0",
        ),
        (
            {"action": "increase_memory", "parameters": {"factor": "2"}},
            "rule 2: 'factor' must be a number, got '2'",
        ),
        (
            {"action": "increase_memory", "parameters": {"factor": 1}},
            "rule 2: 'factor' must be above 1.0 and at most 10.0, got 1",
        ),
        (
            {"action": "increase_memory", "parameters": {"max_mb_per_core": -1}},
            "rule 2: 'max_mb_per_core' must be between 1 and",
        ),
        (
            {"action": "increase_cputime", "parameters": {"max_walltime": "1d"}},
            "rule 2: 'max_walltime' must be an integer",
        ),
        (
            {"action": "reduce_input_per_job", "parameters": {"attempts": []}},
            "rule 2: 'attempts' must be a non-empty list",
        ),
        (
            {"action": "reduce_input_per_job", "parameters": {"attempts": [1, "2"]}},
            "rule 2: 'attempts' must be an integer, got '2'",
        ),
    ],
)
def test_a_bad_rule_is_refused_with_its_position_and_key(changes: dict, message: str) -> None:
    with pytest.raises(RetryRulesError) as caught:
        table(BASE, {**BASE, **changes})
    assert message in str(caught.value)


@pytest.mark.parametrize("key", ["source", "code", "action"])
def test_a_rule_without_a_required_key_is_refused(key: str) -> None:
    broken = {k: v for k, v in BASE.items() if k != key}
    with pytest.raises(RetryRulesError, match=f"rule 1: '{key}' is missing"):
        table(broken)


def test_too_many_rules_are_refused() -> None:
    with pytest.raises(RetryRulesError, match="at most 1000 rules, got 1001"):
        table(*[BASE] * 1001)


def test_defaults_are_filled_in() -> None:
    memory, walltime = table(
        {**BASE, "action": "increase_memory"}, {**BASE, "action": "increase_cputime", "comment": "x"}
    )
    assert memory.parameters == {"factor": 1.5}
    assert walltime.parameters == {"factor": 1.5}
    assert memory.active and memory.position == 1 and walltime.position == 2


def test_a_file_is_read_and_its_errors_name_it(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(
        json.dumps({"rules": [{**BASE, "action": "limit_retry", "parameters": {"max_attempt": 2}}]})
    )
    (loaded,) = retry_rules.load_table(path)
    assert (loaded.action, loaded.parameters) == ("limit_retry", {"max_attempt": 2})
    path.write_text('{"rules": [{"source": "pilotErrorCode", "code": 1, "action": "retry_forever"}]}')
    with pytest.raises(RetryRulesError, match=f"retry rules file {path}: rule 1: unknown action"):
        retry_rules.load_table(path)
    with pytest.raises(RetryRulesError, match="cannot be read"):
        retry_rules.load_table(tmp_path / "missing.json")


def test_without_a_file_the_built_in_rules_apply() -> None:
    defaults = retry_rules.load_table(None)
    assert defaults == retry_rules.default_table()
    actions = {(r.source, r.code): r.action for r in defaults if r.diag is None}
    assert actions[("pilotErrorCode", 1212)] == "increase_memory"
    assert actions[("pilotErrorCode", 1235)] == "increase_memory"
    assert actions[("pilotErrorCode", 1213)] == "increase_cputime"
    assert actions[("pilotErrorCode", 1335)] == "no_retry"
    assert all(r.active for r in defaults)


def test_the_installed_table_is_used_until_reset() -> None:
    custom = table(BASE)
    retry_rules.install(custom)
    try:
        assert retry_rules.active_table() is custom
    finally:
        retry_rules.install(None)
    assert retry_rules.active_table() == retry_rules.default_table()


# --- Matching ---------------------------------------------------------------------------------


def test_a_rule_matches_its_source_and_code_only() -> None:
    r = rule()
    assert r.matches({"pilotErrorCode": 1212})
    assert not r.matches({"pilotErrorCode": 1213})
    assert not r.matches({"exeErrorCode": 1212})
    assert not r.matches({"pilotErrorCode": None})


def test_trans_exit_code_is_compared_as_a_number() -> None:
    (r,) = table({"source": "transExitCode", "code": 65, "action": "no_retry"})
    assert r.matches({"transExitCode": "65"})
    assert r.matches({"transExitCode": " 65 "})
    assert not r.matches({"transExitCode": "fatal"})
    assert not r.matches({"transExitCode": None})


def test_the_diag_pattern_searches_the_sources_diagnostic() -> None:
    r = rule(diag="bad_alloc|out of memory")
    assert r.matches({"pilotErrorCode": 1212, "pilotErrorDiag": "std::bad_alloc thrown"})
    assert not r.matches({"pilotErrorCode": 1212, "pilotErrorDiag": "segfault"})
    assert not r.matches({"pilotErrorCode": 1212, "pilotErrorDiag": None})
    # Another source's diagnostic does not count.
    assert not r.matches({"pilotErrorCode": 1212, "exeErrorDiag": "out of memory"})


def test_scope_keys_must_all_agree() -> None:
    r = rule(architecture="x86_64-el9", release="Athena-25", work_queue=7)
    job = {"pilotErrorCode": 1212, "cmtConfig": "x86_64-el9", "AtlasRelease": "Athena-25", "workQueue_ID": 7}
    assert r.matches(job)
    assert not r.matches({**job, "cmtConfig": "aarch64"})
    assert not r.matches({**job, "AtlasRelease": None})
    assert not r.matches({**job, "workQueue_ID": 8})
    assert r.specificity == 3


def test_the_most_specific_active_rule_wins_and_inactive_ones_are_watched() -> None:
    general, with_diag, watched, other = table(
        {**BASE, "action": "limit_retry", "parameters": {"max_attempt": 2}},
        {**BASE, "diag": "memory"},
        {**BASE, "diag": "memory", "architecture": "el9", "action": "increase_memory", "active": False},
        {"source": "exeErrorCode", "code": 8, "action": "no_retry"},
    )
    job = {"pilotErrorCode": 1212, "pilotErrorDiag": "out of memory", "cmtConfig": "el9", "exeErrorCode": 8}
    decision = choose([general, with_diag, watched, other], job)
    assert decision.rule == with_diag
    assert decision.watched == (watched,)
    # Without a diagnostic that fits, the general rule and the exe rule tie: the first one wins.
    assert choose([general, with_diag, watched, other], {**job, "pilotErrorDiag": "x"}).rule == general
    assert choose([other, general], {**job, "pilotErrorDiag": "x"}).rule == general
    assert choose([general], {"pilotErrorCode": 1}).rule is None


# --- Specificity, as properties ------------------------------------------------------------------

CODES = st.sampled_from([1212, 1213])
SOURCES = st.sampled_from(["pilotErrorCode", "exeErrorCode"])


@st.composite
def rule_items(draw) -> dict:
    item = {
        "source": draw(SOURCES),
        "code": draw(CODES),
        "action": draw(st.sampled_from(["no_retry", "increase_memory"])),
    }
    if draw(st.booleans()):
        item["diag"] = draw(st.sampled_from(["memory", "time", "^out"]))
    if draw(st.booleans()):
        item["architecture"] = draw(st.sampled_from(["el9", "el8"]))
    if draw(st.booleans()):
        item["release"] = draw(st.sampled_from(["A-1", "A-2"]))
    if draw(st.booleans()):
        item["work_queue"] = draw(st.sampled_from([1, 2]))
    item["active"] = draw(st.booleans())
    return item


JOBS = st.fixed_dictionaries(
    {
        "pilotErrorCode": st.sampled_from([None, 1212, 1213]),
        "pilotErrorDiag": st.sampled_from([None, "out of memory", "time limit", "memory and time"]),
        "exeErrorCode": st.sampled_from([None, 1212, 1213]),
        "exeErrorDiag": st.sampled_from([None, "out of time", "memory"]),
        "cmtConfig": st.sampled_from([None, "el9", "el8"]),
        "AtlasRelease": st.sampled_from([None, "A-1", "A-2"]),
        "workQueue_ID": st.sampled_from([None, 1, 2]),
    }
)


@settings(max_examples=150, deadline=None)
@given(items=st.lists(rule_items(), max_size=12), job=JOBS)
def test_the_chosen_rule_is_active_matching_and_no_other_beats_it(items: list[dict], job: dict) -> None:
    rules = table(*items)
    decision = choose(rules, job)
    active = [r for r in rules if r.active and r.matches(job)]
    if decision.rule is None:
        assert active == []
        return
    assert decision.rule in active
    for other in active:
        assert other.specificity < decision.rule.specificity or (
            other.specificity == decision.rule.specificity and other.position >= decision.rule.position
        )
    assert set(decision.watched) == {r for r in rules if not r.active and r.matches(job)}


@settings(max_examples=100, deadline=None)
@given(items=st.lists(rule_items(), max_size=10), extra=st.lists(rule_items(), max_size=5), job=JOBS)
def test_inactive_rules_never_change_the_decision(items: list[dict], extra: list[dict], job: dict) -> None:
    inactive = [{**item, "active": False} for item in extra]
    before = choose(table(*items), job).rule
    after = choose(table(*items, *inactive), job).rule
    assert (before is None) == (after is None)
    if before is not None:
        assert before.position == after.position


@settings(max_examples=100, deadline=None)
@given(items=st.lists(rule_items(), min_size=1, max_size=10), job=JOBS, data=st.data())
def test_order_only_breaks_ties(items: list[dict], job: dict, data) -> None:
    """Shuffling the table changes the chosen rule only among equally specific ones."""
    shuffled = data.draw(st.permutations(items))
    first = choose(table(*items), job).rule
    second = choose(table(*shuffled), job).rule
    assert (first is None) == (second is None)
    if first is not None:
        assert first.specificity == second.specificity


# --- Attempts ------------------------------------------------------------------------------------


def test_no_retry_uses_up_the_attempts_and_limit_retry_caps_them() -> None:
    no_retry = rule()
    (limit,) = table({**BASE, "action": "limit_retry", "parameters": {"max_attempt": 2}})
    row = {"attemptNr": 0, "maxAttempt": 3}
    assert retry_rules.attempt_limit(no_retry, row) == 1
    assert retry_rules.attempt_limit(limit, row) == 2
    assert retry_rules.attempt_limit(limit, {"attemptNr": 0, "maxAttempt": 2}) is None
    # A rule never gives more attempts than the row has.
    assert retry_rules.attempt_limit(limit, {"attemptNr": 0, "maxAttempt": 1}) is None
    assert retry_rules.attempt_limit(no_retry, {"attemptNr": 2, "maxAttempt": None}) == 3
    (memory,) = table({**BASE, "action": "increase_memory"})
    assert retry_rules.attempt_limit(memory, row) is None


@given(
    attempt=st.integers(0, 20), max_attempt=st.one_of(st.none(), st.integers(1, 30)), cap=st.integers(1, 30)
)
def test_attempt_limits_only_ever_lower(attempt: int, max_attempt: int | None, cap: int) -> None:
    (limit,) = table({**BASE, "action": "limit_retry", "parameters": {"max_attempt": cap}})
    row = {"attemptNr": attempt, "maxAttempt": max_attempt}
    for r in (limit, rule()):
        new = retry_rules.attempt_limit(r, row)
        if new is not None:
            assert max_attempt is None or new < max_attempt
    assert retry_rules.attempt_limit(rule(), row) in (attempt + 1, None)


# --- Memory --------------------------------------------------------------------------------------

MEMORY = table({**BASE, "action": "increase_memory", "parameters": {"factor": 1.5}})[0]
CAPPED_MEMORY = table(
    {**BASE, "action": "increase_memory", "parameters": {"factor": 2, "max_mb_per_core": 3000}}
)[0]


def task(**values) -> dict:
    return {
        "ramCount": 2000,
        "ramUnit": "MBPerCore",
        "baseRamCount": 0,
        "coreCount": 1,
        "site": None,
        "walltime": 0,
        "cpuTime": None,
        "splitRule": None,
        **values,
    }


def test_memory_grows_by_the_factor_of_what_the_job_had_or_used() -> None:
    job = {"minRamCount": 2000, "coreCount": 1, "maxRSS": None}
    assert retry_rules.raised_memory(MEMORY, task(), job, []) == 3000
    # The pilot saw it use more than it was given (maxRSS in kB).
    assert retry_rules.raised_memory(MEMORY, task(), {**job, "maxRSS": 2600 * 1024}, []) == 3900


def test_memory_per_core_and_per_job_units_and_the_base() -> None:
    job = {"minRamCount": 8000 + 500, "coreCount": 4, "maxRSS": None}
    per_core = task(ramCount=2000, baseRamCount=500, coreCount=4)
    # 8500 * 1.5 = 12750 MB per job; minus the base, per core.
    assert retry_rules.raised_memory(MEMORY, per_core, job, []) == 3063
    per_job = task(ramCount=8000, ramUnit="MB", baseRamCount=500, coreCount=4)
    assert retry_rules.raised_memory(MEMORY, per_job, job, []) == 12250


def test_memory_is_bounded_by_the_parameter_and_the_largest_usable_queue() -> None:
    job = {"minRamCount": 2000, "coreCount": 1, "maxRSS": None}
    assert retry_rules.raised_memory(CAPPED_MEMORY, task(), job, []) == 3000
    queues = [{"name": "SMALL", "maxrss": 2500}, {"name": "BIG", "maxrss": 2800}]
    assert retry_rules.raised_memory(MEMORY, task(), job, queues) == 2800
    # A queue without a limit takes anything.
    assert retry_rules.raised_memory(MEMORY, task(), job, [*queues, {"name": "ANY"}]) == 3000
    # Only the queues the task may use count.
    assert retry_rules.raised_memory(MEMORY, task(site="SMALL"), job, [*queues, {"name": "ANY"}]) == 2500
    # At the bound already: nothing left to raise.
    assert retry_rules.raised_memory(MEMORY, task(ramCount=2500, site="SMALL"), job, queues) is None


def test_many_jobs_failing_at_once_raise_the_task_once() -> None:
    job = {"minRamCount": 2000, "coreCount": 1, "maxRSS": None}
    first = retry_rules.raised_memory(MEMORY, task(), job, [])
    assert first == 3000
    assert retry_rules.raised_memory(MEMORY, task(ramCount=first), job, []) is None
    assert retry_rules.raised_memory(MEMORY, task(), {"minRamCount": 0, "coreCount": 1}, []) is None


@given(
    ram=st.integers(0, 10_000),
    used=st.integers(1, 20_000),
    cores=st.integers(1, 16),
    cap=st.one_of(st.none(), st.integers(100, 20_000)),
    factor=st.floats(1.01, 10),
)
def test_raised_memory_is_above_the_task_and_within_the_bounds(ram, used, cores, cap, factor) -> None:
    parameters = {"factor": factor} | ({"max_mb_per_core": cap} if cap else {})
    (r,) = table({**BASE, "action": "increase_memory", "parameters": parameters})
    new = retry_rules.raised_memory(
        r, task(ramCount=ram, coreCount=cores), {"minRamCount": used, "coreCount": cores}, []
    )
    if new is not None:
        assert new > ram
        if cap:
            assert new <= cap
        assert new * cores <= used * factor + cores


# --- Walltime ------------------------------------------------------------------------------------

WALLTIME = table({**BASE, "action": "increase_cputime", "parameters": {"factor": 2, "max_walltime": 20000}})[
    0
]


def test_walltime_grows_from_the_queue_limit_or_the_time_run() -> None:
    job = {"maxWalltime": 3600, "startTime": None, "endTime": None}
    assert retry_rules.raised_walltime(WALLTIME, task(walltime=3000), job, []) == {"walltime": 7200}
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ran = {"maxWalltime": 0, "startTime": start, "endTime": start + timedelta(seconds=5000)}
    assert retry_rules.raised_walltime(WALLTIME, task(walltime=3000, cpuTime=10), ran, []) == {
        "walltime": 10000,
        "cpuTime": 20,
    }


def test_walltime_is_bounded_and_never_lowered() -> None:
    job = {"maxWalltime": 15000, "startTime": None, "endTime": None}
    assert retry_rules.raised_walltime(WALLTIME, task(), job, []) == {"walltime": 20000}
    queues = [{"name": "SHORT", "maxtime": 3600}, {"name": "LONG", "maxtime": 18000}]
    assert retry_rules.raised_walltime(WALLTIME, task(), job, queues) == {"walltime": 18000}
    assert retry_rules.raised_walltime(WALLTIME, task(walltime=18000), job, queues) is None
    assert retry_rules.raised_walltime(WALLTIME, task(), {"maxWalltime": 0}, queues) is None


# --- Inputs per job ------------------------------------------------------------------------------

REDUCE = table({**BASE, "action": "reduce_input_per_job"})[0]


def test_files_per_job_halve_down_to_one() -> None:
    t = task(splitRule="NF=8,MF=200")
    assert retry_rules.reduced_split_rule(REDUCE, t, {"attemptNr": 1}, 8) == "NF=4,MF=200"
    assert (
        retry_rules.reduced_split_rule(REDUCE, task(splitRule="NF=4,MF=200"), {"attemptNr": 1}, 4)
        == "NF=2,MF=200"
    )
    assert retry_rules.reduced_split_rule(REDUCE, task(splitRule="NF=2"), {"attemptNr": 1}, 3) == "NF=1"
    assert retry_rules.reduced_split_rule(REDUCE, task(splitRule="NF=1"), {"attemptNr": 1}, 1) is None
    # Jobs made before the last halving do not halve again.
    assert retry_rules.reduced_split_rule(REDUCE, task(splitRule="NF=4"), {"attemptNr": 1}, 8) is None


def test_size_split_tasks_get_a_file_cap_and_gb_tasks_fewer_gb() -> None:
    assert retry_rules.reduced_split_rule(REDUCE, task(splitRule="MF=200"), {"attemptNr": 1}, 6) == "MF=3"
    job = {"attemptNr": 1, "inputFileBytes": 10 * GIB}
    assert retry_rules.reduced_split_rule(REDUCE, task(splitRule="NG=10,MF=50"), job, 5) == "NG=5,MF=50"
    small = {"attemptNr": 1, "inputFileBytes": GIB}
    assert retry_rules.reduced_split_rule(REDUCE, task(splitRule="NG=3"), small, 5) == "NG=1"
    assert retry_rules.reduced_split_rule(REDUCE, task(splitRule="NG=1"), small, 5) is None
    # Event ranges are cut at refinement: nothing to reduce.
    assert retry_rules.reduced_split_rule(REDUCE, task(splitRule="NE=100,MF=200"), job, 5) is None


def test_reduction_only_at_the_given_attempts() -> None:
    (r,) = table({**BASE, "action": "reduce_input_per_job", "parameters": {"attempts": [2, 4]}})
    t = task(splitRule="NF=8")
    assert retry_rules.reduced_split_rule(r, t, {"attemptNr": 1}, 8) is None
    assert retry_rules.reduced_split_rule(r, t, {"attemptNr": 2}, 8) == "NF=4"


def test_the_generator_splits_with_the_tasks_current_numbers() -> None:
    by_files = SplitRule(n_files_per_job=8)
    assert retry_rules.split_for_task(by_files, "NF=2,MF=200").n_files_per_job == 2
    assert retry_rules.split_for_task(by_files, None) == by_files
    assert retry_rules.split_for_task(by_files, "NF=junk") == by_files
    by_gb = SplitRule(n_gb_per_job=10)
    assert retry_rules.split_for_task(by_gb, "NG=2.5,MF=7") == SplitRule(
        n_gb_per_job=2.5, n_max_files_per_job=7
    )
    by_size = SplitRule()
    assert retry_rules.split_for_task(by_size, "MF=3").n_max_files_per_job == 3
    # A GB or file count does not turn a size split into another kind.
    assert retry_rules.split_for_task(by_size, "NF=2,NG=1") == by_size
    by_events = SplitRule(n_events_per_job=100)
    assert retry_rules.split_for_task(by_events, "MF=1") == by_events


@given(
    mode=st.sampled_from(["NF", "MF", "NG"]),
    current=st.integers(1, 400),
    n_inputs=st.integers(1, 400),
    size_gb=st.floats(0, 500),
)
def test_a_reduction_only_lowers_and_never_below_one(
    mode: str, current: int, n_inputs: int, size_gb: float
) -> None:
    job = {"attemptNr": 1, "inputFileBytes": int(size_gb * GIB)}
    new = retry_rules.reduced_split_rule(REDUCE, task(splitRule=f"{mode}={current}"), job, n_inputs)
    if new is None:
        return
    value = float(parse_split_rule(new)[mode])
    assert 1 <= value < current
    # The same failure seen again (another job of the same kind) changes nothing more.
    assert retry_rules.reduced_split_rule(REDUCE, task(splitRule=new), job, n_inputs) is None
