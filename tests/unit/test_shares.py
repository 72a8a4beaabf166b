"""The share tree (domain.md §6.4): parsing, targets, which leaf a task gets, dispatch order."""

from __future__ import annotations

import copy
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bamboo.logic import shares
from bamboo.logic.errors import InvalidInput
from bamboo.logic.shares import ShareTree, parse_tree, rank_shares, share_for_task, target_fractions

DOCUMENT: dict[str, Any] = {
    "default": "Analysis",
    "shares": [
        {
            "name": "Production",
            "value": 75,
            "children": [
                {"name": "MC", "value": 60, "prodsourcelabel": "managed$", "processingtype": "simul|evgen"},
                {"name": "Reprocessing", "value": 20, "prodsourcelabel": "managed$", "campaign": "repro"},
                {"name": "Group", "value": 20, "prodsourcelabel": "managed$", "workinggroup": "GR_"},
            ],
        },
        {"name": "Analysis", "value": 25, "prodsourcelabel": "user|panda", "throttled": True},
        {"name": "Test", "value": 0, "prodsourcelabel": "test|prod_test", "queue_id": 7},
    ],
}


def tree() -> ShareTree:
    return parse_tree(copy.deepcopy(DOCUMENT))


def test_parse_keeps_file_order_parents_and_selectors() -> None:
    parsed = tree()
    assert [(s.name, s.parent) for s in parsed.shares] == [
        ("Production", None),
        ("MC", "Production"),
        ("Reprocessing", "Production"),
        ("Group", "Production"),
        ("Analysis", None),
        ("Test", None),
    ]
    assert [s.name for s in parsed.leaves()] == ["MC", "Reprocessing", "Group", "Analysis", "Test"]
    assert parsed.default == "Analysis"
    mc = parsed.shares[1]
    assert mc.selectors == (("prodsourcelabel", "managed$"), ("processingtype", "simul|evgen"))
    assert parsed.shares[4].throttled is True and parsed.shares[1].throttled is False
    assert parsed.shares[5].queue_id == 7
    assert parsed.depths() == {
        "Production": 0,
        "MC": 1,
        "Reprocessing": 1,
        "Group": 1,
        "Analysis": 0,
        "Test": 0,
    }
    assert parsed.is_leaf("MC") and not parsed.is_leaf("Production") and not parsed.is_leaf("nope")


def _with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    document = copy.deepcopy(DOCUMENT)
    target: Any = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return document


def _nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"name": f"level{depth}", "value": 1}
    for level in range(depth - 1, 0, -1):
        node = {"name": f"level{level}", "value": 1, "children": [node]}
    return {"default": f"level{depth}", "shares": [node]}


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ([], "must be a JSON object"),
        ({"shares": DOCUMENT["shares"], "default": "Analysis", "extra": 1}, "unknown keys ['extra']"),
        ({"default": "Analysis"}, "'shares' must be a non-empty list"),
        ({"default": "Analysis", "shares": []}, "'shares' must be a non-empty list"),
        ({"default": "Analysis", "shares": {"name": "x"}}, "'shares' must be a non-empty list"),
        (_with(("shares", 0), "Production"), "shares[0] must be a JSON object"),
        (_with(("shares", 1, "name"), ""), "non-empty string name"),
        (_with(("shares", 1, "name"), 5), "non-empty string name"),
        (_with(("shares", 1, "name"), "x" * 33), "longer than 32 characters"),
        (_with(("shares", 1, "name"), " Analysis"), "without leading or trailing spaces"),
        (_with(("shares", 1, "name"), "Ana\nlysis"), "must be printable"),
        (_with(("shares", 1, "name"), "MC"), "repeats a share name"),
        (_with(("shares", 1, "value"), True), "value must be a number from 0 to 100"),
        (_with(("shares", 1, "value"), "25"), "value must be a number from 0 to 100"),
        (_with(("shares", 1, "value"), -1), "value must be a number from 0 to 100"),
        (_with(("shares", 1, "value"), 100.5), "value must be a number from 0 to 100"),
        (_with(("shares", 1, "value"), None), "value must be a number from 0 to 100"),
        (_with(("shares", 0, "children"), "MC"), "children must be a list"),
        (_with(("shares", 0, "vo"), "atlas"), "cannot have the selector vo"),
        (_with(("shares", 0, "queue_id"), 3), "cannot have queue_id"),
        (_with(("shares", 1, "vo"), 3), "vo must be a regular expression"),
        (_with(("shares", 1, "vo"), ""), "vo must be a regular expression"),
        (_with(("shares", 1, "vo"), "a" * 257), "vo must be a regular expression"),
        (_with(("shares", 1, "campaign"), "(a)\\1"), "campaign is not a valid RE2 regular expression"),
        (_with(("shares", 1, "campaign"), "(unclosed"), "campaign is not a valid RE2 regular expression"),
        (_with(("shares", 1, "queue_id"), True), "queue_id must be a non-negative 32-bit integer"),
        (_with(("shares", 1, "queue_id"), -1), "queue_id must be a non-negative 32-bit integer"),
        (_with(("shares", 1, "queue_id"), 2**31), "queue_id must be a non-negative 32-bit integer"),
        (_with(("shares", 1, "throttled"), "Y"), "throttled must be true or false"),
        (_with(("shares", 1, "selector"), "x"), "has unknown keys ['selector']"),
        (_with(("default",), "Production"), "'default' must name a leaf share"),
        (_with(("default",), "Nobody"), "'default' must name a leaf share"),
        (_with(("default",), None), "'default' must name a leaf share"),
        (_nested(shares.MAX_DEPTH + 1), f"deeper than {shares.MAX_DEPTH} levels"),
        (
            {
                "default": "s0",
                "shares": [{"name": f"s{i}", "value": 1} for i in range(shares.MAX_SHARES + 1)],
            },
            f"more than {shares.MAX_SHARES} shares",
        ),
        (
            {
                "default": "c0",
                "shares": [
                    {
                        "name": "root",
                        "value": 1,
                        "children": [{"name": f"c{i}", "value": 1} for i in range(1000)],
                    }
                ],
            },
            f"more than {shares.MAX_SHARES} shares",
        ),
    ],
)
def test_parse_refuses_bad_documents(document: Any, fragment: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_tree(document)
    assert fragment in raised.value.message
    assert raised.value.message.startswith("share file:")


def test_parse_accepts_the_deepest_and_largest_trees() -> None:
    assert parse_tree(_nested(shares.MAX_DEPTH)).depths()[f"level{shares.MAX_DEPTH}"] == shares.MAX_DEPTH - 1
    wide = {"default": "s0", "shares": [{"name": f"s{i}", "value": 1} for i in range(shares.MAX_SHARES)]}
    assert len(parse_tree(wide).leaves()) == shares.MAX_SHARES


def test_parse_names_the_share_at_fault() -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_tree(_with(("shares", 0, "children", 2, "value"), 101))
    assert raised.value.message.startswith("share file: shares[0] (Production).children[2] (Group) value")


def test_targets_normalise_siblings_and_multiply_down_branches() -> None:
    assert target_fractions(tree()) == {
        "MC": Fraction(3, 4) * Fraction(6, 10),
        "Reprocessing": Fraction(3, 4) * Fraction(2, 10),
        "Group": Fraction(3, 4) * Fraction(2, 10),
        "Analysis": Fraction(1, 4),
        "Test": Fraction(0),
    }


def test_targets_split_equally_among_siblings_that_are_all_zero() -> None:
    document = {
        "default": "b",
        "shares": [
            {"name": "a", "value": 0},
            {"name": "p", "value": 0, "children": [{"name": "b", "value": 0}, {"name": "c", "value": 0}]},
        ],
    }
    assert target_fractions(parse_tree(document)) == {
        "a": Fraction(1, 2),
        "b": Fraction(1, 4),
        "c": Fraction(1, 4),
    }


def test_targets_need_not_add_up_to_a_hundred() -> None:
    document = {"default": "a", "shares": [{"name": "a", "value": 10}, {"name": "b", "value": 30}]}
    assert target_fractions(parse_tree(document)) == {"a": Fraction(1, 4), "b": Fraction(3, 4)}


@pytest.mark.parametrize(
    ("task", "share"),
    [
        ({"prodSourceLabel": "managed", "processingType": "simul"}, "MC"),
        ({"prodSourceLabel": "managed", "processingType": "evgen_x"}, "MC"),
        ({"prodSourceLabel": "managed", "processingType": "reco", "campaign": "repro23"}, "Reprocessing"),
        (
            {
                "prodSourceLabel": "managed",
                "processingType": "reco",
                "campaign": "mc",
                "workingGroup": "GR_HIGGS",
            },
            "Group",
        ),
        # Only an exact label matches "managed$".
        ({"prodSourceLabel": "managed_x", "processingType": "simul"}, "Analysis"),
        # A field the task does not set does not rule a share out: the first leaf then matches.
        ({"prodSourceLabel": "managed"}, "MC"),
        # No working group is matched as " ", which "GR_" does not match.
        ({"prodSourceLabel": "managed", "processingType": "reco", "campaign": "mc"}, "Analysis"),
        ({"prodSourceLabel": "user"}, "Analysis"),
        # Matching is anchored at the start only, as upstream's.
        ({"prodSourceLabel": "users"}, "Analysis"),
        ({"prodSourceLabel": "test", "workQueue_ID": 7}, "Test"),
        ({"prodSourceLabel": "test", "workQueue_ID": 8}, "Analysis"),
        ({"prodSourceLabel": "prod_test"}, "Test"),
        ({"prodSourceLabel": "install"}, "Analysis"),
        ({"prodSourceLabel": "user", "gshare": "MC"}, "MC"),
        ({"prodSourceLabel": "user", "gshare": "Production"}, "Analysis"),
        ({"prodSourceLabel": "managed", "processingType": "simul", "gshare": "Unknown"}, "MC"),
        ({"prodSourceLabel": "user", "gshare": 5}, "Analysis"),
    ],
)
def test_share_for_task(task: dict[str, Any], share: str) -> None:
    assert share_for_task(tree(), task) == share


def test_share_for_task_matches_numbers_as_text() -> None:
    document = {
        "default": "b",
        "shares": [{"name": "a", "value": 1, "rtype": "MCORE"}, {"name": "b", "value": 1}],
    }
    parsed = parse_tree(document)
    assert share_for_task(parsed, {"resource_type": "MCORE"}) == "a"
    assert share_for_task(parsed, {"resource_type": "SCORE"}) == "b"


def test_rank_serves_the_larger_target_first_when_nothing_runs() -> None:
    assert rank_shares(tree(), {}, ["Analysis", "MC", "Group"]) == ("MC", "Analysis", "Group")


def test_rank_serves_the_most_under_used_share_first() -> None:
    # Targets: MC 45 %, Analysis 25 %, Group 15 %. 100 executing jobs: MC 60 (over), Analysis 10
    # (under by 15 points), Group 30 (over).
    executing = {"MC": 60, "Analysis": 10, "Group": 30}
    assert rank_shares(tree(), executing, ["MC", "Analysis", "Group"]) == ("Analysis", "MC", "Group")


def test_rank_puts_test_first_and_zero_targets_last() -> None:
    document = {
        "default": "a",
        "shares": [
            {"name": "a", "value": 50},
            {"name": "zero", "value": 0},
            {"name": "Test", "value": 0},
            {"name": "b", "value": 50},
        ],
    }
    parsed = parse_tree(document)
    executing = {"Test": 1000, "a": 5, "b": 1}
    assert rank_shares(parsed, executing, ["a", "zero", "Test", "b"]) == ("Test", "b", "a", "zero")


def test_rank_ties_between_equal_shares_go_to_file_order() -> None:
    document = {"default": "a", "shares": [{"name": "b", "value": 50}, {"name": "a", "value": 50}]}
    assert rank_shares(parse_tree(document), {"a": 2, "b": 2}, ["a", "b"]) == ("b", "a")


def test_rank_is_empty_when_there_is_nothing_to_choose_between() -> None:
    assert rank_shares(tree(), {"MC": 5}, []) == ()
    assert rank_shares(tree(), {"MC": 5}, ["MC"]) == ()
    assert rank_shares(tree(), {}, [None, "Gone"]) == ()


def test_rank_orders_leaves_before_jobs_of_other_shares() -> None:
    assert rank_shares(tree(), {}, ["Analysis", None]) == ("Analysis",)
    # An inner share or one that left the tree counts as "other", not as a leaf.
    assert rank_shares(tree(), {}, ["Production", "Gone", "Group"]) == ("Group",)


def test_site_order_is_bounded() -> None:
    count = shares.MAX_RANKED_SHARES + 10
    document = {"default": "s0", "shares": [{"name": f"s{i}", "value": 1} for i in range(count)]}
    names = [f"s{i}" for i in range(count)]
    ranking = rank_shares(parse_tree(document), {}, names)
    assert ranking == tuple(names)
    assert shares.site_order(ranking, names) == tuple(names[: shares.MAX_RANKED_SHARES])


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A random valid share file: node i hangs under an earlier node or at the root."""
    count = draw(st.integers(min_value=1, max_value=25))
    nodes: list[dict[str, Any]] = []
    roots: list[dict[str, Any]] = []
    for index in range(count):
        node: dict[str, Any] = {
            "name": f"s{index}",
            "value": draw(st.sampled_from([0, 1, 2.5, 10, 33.3, 50, 100])),
        }
        parent = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=index - 1))) if index else None
        depth_ok = parent is None or _depth(nodes, parent) < shares.MAX_DEPTH - 1
        if parent is None or not depth_ok:
            roots.append(node)
        else:
            nodes[parent].setdefault("children", []).append(node)
        node["_parent"] = parent if depth_ok else None
        nodes.append(node)
    for node in nodes:
        node.pop("_parent")
    leaves = [node for node in nodes if "children" not in node]
    for leaf in leaves:
        if draw(st.booleans()):
            leaf["prodsourcelabel"] = draw(st.sampled_from(["user", "managed$", "test|prod_test", ".*"]))
    default = draw(st.sampled_from(leaves))["name"]
    return {"default": default, "shares": roots}


def _depth(nodes: list[dict[str, Any]], index: int) -> int:
    depth = 0
    parent = nodes[index]["_parent"]
    while parent is not None:
        depth += 1
        parent = nodes[parent]["_parent"]
    return depth


@given(documents())
def test_property_targets_are_a_distribution_over_the_leaves(document: dict[str, Any]) -> None:
    parsed = parse_tree(document)
    targets = target_fractions(parsed)
    assert set(targets) == {leaf.name for leaf in parsed.leaves()}
    assert sum(targets.values()) == 1
    assert all(target >= 0 for target in targets.values())


@given(documents(), st.sampled_from(["user", "managed", "test", "install", None]), st.text(max_size=5))
def test_property_a_task_always_gets_a_leaf(
    document: dict[str, Any], label: str | None, explicit: str
) -> None:
    parsed = parse_tree(document)
    chosen = share_for_task(parsed, {"prodSourceLabel": label, "gshare": explicit})
    assert parsed.is_leaf(chosen)
    if parsed.is_leaf(explicit):
        assert chosen == explicit


@given(documents(), st.data())
def test_property_rank_is_an_order_of_the_waiting_leaves(
    document: dict[str, Any], data: st.DataObject
) -> None:
    parsed = parse_tree(document)
    names = [leaf.name for leaf in parsed.leaves()]
    waiting = data.draw(st.sets(st.sampled_from(names)))
    executing = data.draw(st.dictionaries(st.sampled_from(names), st.integers(min_value=0, max_value=1000)))
    ranked = rank_shares(parsed, executing, waiting)
    if len(waiting) < 2:
        assert ranked == ()
        return
    assert sorted(ranked) == sorted(waiting)
    targets = target_fractions(parsed)
    positive = [name for name in ranked if targets[name] > 0]
    usage = [Fraction(executing.get(name, 0)) / targets[name] for name in positive]
    # Among shares with a target, usage never decreases down the order.
    assert usage == sorted(usage)
    # Shares with a target come before those without.
    assert ranked[: len(positive)] == tuple(positive)


@given(documents(), st.data())
def test_property_more_executing_jobs_never_move_a_share_up(
    document: dict[str, Any], data: st.DataObject
) -> None:
    parsed = parse_tree(document)
    names = [leaf.name for leaf in parsed.leaves()]
    if len(names) < 2:
        return
    executing = data.draw(st.dictionaries(st.sampled_from(names), st.integers(min_value=0, max_value=100)))
    chosen = data.draw(st.sampled_from(names))
    before = rank_shares(parsed, executing, names)
    busier = {
        **executing,
        chosen: executing.get(chosen, 0) + data.draw(st.integers(min_value=1, max_value=100)),
    }
    after = rank_shares(parsed, busier, names)
    assert after.index(chosen) >= before.index(chosen)


@given(documents())
def test_property_the_tree_survives_storage(document: dict[str, Any]) -> None:
    parsed = parse_tree(document)
    assert shares._tree_from_rows(shares._rows(parsed)) == parsed


@pytest.mark.parametrize(
    ("waiting_at_site", "order"),
    [
        ({"A", "B", "C"}, ("C", "A", "B")),
        ({"B", "A"}, ("A", "B")),
        # Alone at the queue: nothing to choose between.
        ({"B"}, ()),
        (set(), ()),
        # A ranked share and jobs of shares outside the ranking.
        ({"B", None}, ("B",)),
        ({"B", "Gone"}, ("B",)),
        ({None, "Gone"}, ()),
    ],
)
def test_site_order_keeps_the_shares_waiting_at_the_queue(
    waiting_at_site: set[str | None], order: tuple[str, ...]
) -> None:
    assert shares.site_order(("C", "A", "B"), waiting_at_site) == order


def test_share_order_for_a_queue() -> None:
    order = shares.ShareOrder(("C", "A"), {"PQ1": frozenset({"A", "C"}), "PQ2": frozenset({"A"})})
    assert order.for_site("PQ1") == ("C", "A")
    assert order.for_site("PQ2") == ()
    assert order.for_site("elsewhere") == ()
    assert shares.ShareOrder().for_site("PQ1") == ()
