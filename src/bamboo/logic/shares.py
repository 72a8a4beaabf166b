"""Global shares (domain.md §6.4): the share tree, which leaf a task belongs to, and the order in
which dispatch serves the leaves.

The tree comes from a JSON document an operator loads (`bamboo share load`, docs/operations.md).
Only leaves are assigned to tasks and jobs. Each leaf's target is its fraction of the whole grid:
the product, down its branch, of each share's value over the sum of its siblings' values.
Dispatch serves the leaf that runs the fewest jobs for its target first (``Test`` always first),
then by priority.

The first half of the module is pure (parsing, targets, matching, ranking); the async functions
at the end read and write the tree through ``db/shares.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import Any

import re2
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import shares as shares_db
from bamboo.logic.errors import InvalidInput

# A share name is stored in the 32-character gshare column of tasks and jobs.
MAX_NAME_CHARS = 32
MAX_SHARES = 1000
MAX_DEPTH = 8
MAX_SELECTOR_CHARS = 256
MAX_VALUE = 100
# Always served first, whatever its usage (domain.md §6.4): test jobs are few and validate queues.
TEST_SHARE = "Test"
# Selector name in the share file -> the task column it is matched against.
SELECTORS = {
    "prodsourcelabel": "prodSourceLabel",
    "workinggroup": "workingGroup",
    "campaign": "campaign",
    "processingtype": "processingType",
    "transpath": "transPath",
    "rtype": "resource_type",
    "vo": "vo",
}
_NODE_KEYS = {"name", "value", "children", "queue_id", "throttled", *SELECTORS}
_DOCUMENT_KEYS = {"default", "shares"}
# Jobs that count as occupying their share's slots: handed to a pilot and not yet done.
EXECUTING_STATUSES = ("sent", "starting", "running")
WAITING_STATUS = "activated"
# Dispatch reads the jobs of each ranked share waiting at the queue in turn; beyond this many
# the rest are served together after them, by priority, which bounds the reads per call.
MAX_RANKED_SHARES = 64

_RE2_OPTIONS = re2.Options()
# A refused selector is reported to the operator; RE2 need not also write it to stderr.
_RE2_OPTIONS.log_errors = False


@dataclass(frozen=True, slots=True)
class Share:
    """One node of the tree. ``selectors`` maps selector names to regular expressions."""

    name: str
    parent: str | None
    value: float
    selectors: tuple[tuple[str, str], ...] = ()
    queue_id: int | None = None
    throttled: bool = False


@dataclass(frozen=True, slots=True)
class ShareTree:
    """The whole tree in file order (every parent before its children) and the default leaf."""

    shares: tuple[Share, ...]
    default: str

    def leaves(self) -> list[Share]:
        parents = {share.parent for share in self.shares}
        return [share for share in self.shares if share.name not in parents]

    def is_leaf(self, name: str | None) -> bool:
        return any(share.name == name for share in self.leaves())

    def depths(self) -> dict[str, int]:
        """Each share's depth (0 for top-level shares); parents come before their children."""
        found: dict[str, int] = {}
        for share in self.shares:
            found[share.name] = 0 if share.parent is None else found[share.parent] + 1
        return found


def _fail(where: str, problem: str) -> InvalidInput:
    return InvalidInput(f"share file: {where} {problem}")


def _name(node: Mapping[str, Any], where: str) -> str:
    name = node.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _fail(where, "needs a non-empty string name")
    if len(name) > MAX_NAME_CHARS:
        raise _fail(where, f"name is longer than {MAX_NAME_CHARS} characters")
    if not name.isprintable() or name != name.strip():
        raise _fail(where, "name must be printable, without leading or trailing spaces")
    return name


def _value(node: Mapping[str, Any], where: str) -> float:
    value = node.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_VALUE:
        raise _fail(where, f"value must be a number from 0 to {MAX_VALUE} (percent of its parent)")
    return float(value)


# Matching runs on every submission over every leaf: compile each selector once.
@lru_cache(maxsize=4096)
def compile_selector(pattern: str) -> re2._Regexp:
    """A selector as RE2 (linear time in the text, so no pattern can stall submissions)."""
    return re2.compile(pattern, options=_RE2_OPTIONS)


def _selectors(node: Mapping[str, Any], where: str, *, leaf: bool) -> tuple[tuple[str, str], ...]:
    found = []
    for key in SELECTORS:
        pattern = node.get(key)
        if pattern is None:
            continue
        if not leaf:
            raise _fail(where, f"has children, so it cannot have the selector {key}: only leaves match tasks")
        if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_SELECTOR_CHARS:
            raise _fail(where, f"{key} must be a regular expression of 1 to {MAX_SELECTOR_CHARS} characters")
        try:
            compile_selector(pattern)
        except re2.error as exc:
            raise _fail(
                where, f"{key} is not a valid RE2 regular expression (no back-references or look-arounds)"
            ) from exc
        found.append((key, pattern))
    return tuple(found)


def _queue_id(node: Mapping[str, Any], where: str, *, leaf: bool) -> int | None:
    queue_id = node.get("queue_id")
    if queue_id is None:
        return None
    if not leaf:
        raise _fail(where, "has children, so it cannot have queue_id: only leaves match tasks")
    if isinstance(queue_id, bool) or not isinstance(queue_id, int) or not 0 <= queue_id < 2**31:
        raise _fail(where, "queue_id must be a non-negative 32-bit integer (a work queue id)")
    return queue_id


def parse_tree(document: Any) -> ShareTree:
    """Validate a share file (docs/operations.md) and return its tree.

    Raises:
        InvalidInput: the document breaks a rule; the message names the share and the rule.
    """
    if not isinstance(document, dict):
        raise InvalidInput("share file: the document must be a JSON object with 'shares' and 'default'")
    unknown = sorted(set(document) - _DOCUMENT_KEYS)
    if unknown:
        raise InvalidInput(f"share file: unknown keys {unknown}; allowed: {sorted(_DOCUMENT_KEYS)}")
    roots = document.get("shares")
    if not isinstance(roots, list) or not roots:
        raise InvalidInput("share file: 'shares' must be a non-empty list")
    if len(roots) > MAX_SHARES:
        raise InvalidInput(f"share file: more than {MAX_SHARES} shares")
    shares: list[Share] = []
    # Depth-first with an explicit stack: file order is the order tasks are matched in.
    stack: list[tuple[Any, str | None, str, int]] = [
        (node, None, f"shares[{index}]", 1) for index, node in reversed(list(enumerate(roots)))
    ]
    seen: set[str] = set()
    while stack:
        node, parent, where, depth = stack.pop()
        if not isinstance(node, dict):
            raise _fail(where, "must be a JSON object")
        name = _name(node, where)
        where = f"{where} ({name})"
        unknown = sorted(set(node) - _NODE_KEYS)
        if unknown:
            raise _fail(where, f"has unknown keys {unknown}; allowed: {sorted(_NODE_KEYS)}")
        if name in seen:
            raise _fail(where, "repeats a share name; names must be unique in the tree")
        seen.add(name)
        if depth > MAX_DEPTH:
            raise _fail(where, f"is deeper than {MAX_DEPTH} levels")
        children = node.get("children", [])
        if not isinstance(children, list):
            raise _fail(where, "children must be a list")
        leaf = not children
        throttled = node.get("throttled", False)
        if not isinstance(throttled, bool):
            raise _fail(where, "throttled must be true or false")
        shares.append(
            Share(
                name=name,
                parent=parent,
                value=_value(node, where),
                selectors=_selectors(node, where, leaf=leaf),
                queue_id=_queue_id(node, where, leaf=leaf),
                throttled=throttled,
            )
        )
        if len(shares) + len(stack) + len(children) > MAX_SHARES:
            raise InvalidInput(f"share file: more than {MAX_SHARES} shares")
        stack.extend(
            (child, name, f"{where}.children[{index}]", depth + 1)
            for index, child in reversed(list(enumerate(children)))
        )
    tree = ShareTree(shares=tuple(shares), default="")
    default = document.get("default")
    if not isinstance(default, str) or not tree.is_leaf(default):
        raise InvalidInput(
            "share file: 'default' must name a leaf share (tasks no selector matches go there)"
        )
    return ShareTree(shares=tree.shares, default=default)


def target_fractions(tree: ShareTree) -> dict[str, Fraction]:
    """Each leaf's target fraction of all executing jobs; the fractions sum to exactly 1.

    Siblings' values are normalised by their sum, so they need not add up to 100; siblings whose
    values are all 0 split their parent's part equally (no preference was stated among them).
    """
    totals: dict[str | None, Fraction] = {}
    counts: dict[str | None, int] = {}
    for share in tree.shares:
        totals[share.parent] = totals.get(share.parent, Fraction(0)) + Fraction(share.value)
        counts[share.parent] = counts.get(share.parent, 0) + 1
    fractions: dict[str | None, Fraction] = {None: Fraction(1)}
    for share in tree.shares:
        total = totals[share.parent]
        part = Fraction(share.value) / total if total else Fraction(1, counts[share.parent])
        fractions[share.name] = fractions[share.parent] * part
    return {leaf.name: fractions[leaf.name] for leaf in tree.leaves()}


def _matches(share: Share, task: Mapping[str, Any]) -> bool:
    for key, pattern in share.selectors:
        value = task.get(SELECTORS[key])
        if key == "workinggroup" and value is None:
            # Upstream matches a task without working group as a single space.
            value = " "
        # A task field that is not set does not rule the share out (domain.md §6.4).
        if value is not None and compile_selector(pattern).match(str(value)) is None:
            return False
    queue_id = task.get("workQueue_ID")
    return share.queue_id is None or queue_id is None or share.queue_id == queue_id


def share_for_task(tree: ShareTree, task: Mapping[str, Any]) -> str:
    """The leaf a task belongs to: its ``gshare`` parameter when that names a leaf, else the
    first leaf in file order whose selectors all match the task, else the tree's default.

    Selectors match from the start of the value (``user`` also matches ``users``; write
    ``user$`` for an exact match), as upstream's regular-expression matching does.
    """
    explicit = task.get("gshare")
    if isinstance(explicit, str) and tree.is_leaf(explicit):
        return explicit
    for leaf in tree.leaves():
        if _matches(leaf, task):
            return leaf.name
    return tree.default


def rank_shares(
    tree: ShareTree, executing: Mapping[str | None, int], waiting: Iterable[str | None]
) -> tuple[str, ...]:
    """The leaves that have waiting jobs, most under-used first: the order dispatch serves them.

    Usage is a leaf's executing jobs over its target fraction (the same order as its share of
    executing jobs over its target). ``Test`` comes first; ties go to the larger target, then to
    file order; leaves with a target of 0 come after all others. Jobs of any other share
    (unknown or none) are served after every ranked leaf. An empty answer means there is nothing
    to choose between (at most one group has waiting jobs), so dispatch orders by priority alone.
    """
    targets = target_fractions(tree)
    position = {share.name: index for index, share in enumerate(tree.shares)}
    waiting_set = set(waiting)
    ranked_leaves = [name for name in targets if name in waiting_set]
    groups = len(ranked_leaves) + (1 if waiting_set - set(ranked_leaves) else 0)
    if groups < 2:
        return ()

    def key(name: str) -> tuple[bool, bool, Fraction, Fraction, int]:
        target = targets[name]
        usage = Fraction(executing.get(name, 0)) / target if target else Fraction(executing.get(name, 0))
        return (name != TEST_SHARE, target == 0, usage, -target, position[name])

    return tuple(sorted(ranked_leaves, key=key))


def _rows(tree: ShareTree) -> list[dict[str, Any]]:
    rows = []
    for index, share in enumerate(tree.shares):
        row: dict[str, Any] = dict.fromkeys(SELECTORS)
        row.update(dict(share.selectors))
        row.update(
            name=share.name,
            parent=share.parent,
            position=index,
            value=share.value,
            queue_id=share.queue_id,
            throttled=share.throttled,
            is_default=share.name == tree.default,
        )
        rows.append(row)
    return rows


def _tree_from_rows(rows: Sequence[Mapping[str, Any]]) -> ShareTree | None:
    if not rows:
        return None
    shares = tuple(
        Share(
            name=row["name"],
            parent=row["parent"],
            value=row["value"],
            selectors=tuple((key, row[key]) for key in SELECTORS if row[key] is not None),
            queue_id=row["queue_id"],
            throttled=row["throttled"],
        )
        for row in rows
    )
    default = next(row["name"] for row in rows if row["is_default"])
    return ShareTree(shares=shares, default=default)


async def load(conn: AsyncConnection, document: Any) -> ShareTree:
    """Replace the share tree with the one in ``document`` (validated first).

    Tasks and jobs keep the share they have; a task whose share left the tree is ranked after
    every leaf until it is reassigned.
    """
    tree = parse_tree(document)
    await shares_db.replace(conn, _rows(tree))
    return tree


async def current_tree(conn: AsyncConnection) -> ShareTree | None:
    """The loaded tree, or None when no share file was ever loaded (shares are then not used)."""
    return _tree_from_rows(await shares_db.all_rows(conn))


async def assign(conn: AsyncConnection, task: Mapping[str, Any]) -> str | None:
    """The share of a task being submitted; with no tree loaded, its ``gshare`` parameter as given
    (a value that is not a string is dropped: it cannot name a share)."""
    tree = await current_tree(conn)
    if tree is None:
        explicit = task.get("gshare")
        return explicit if isinstance(explicit, str) else None
    return share_for_task(tree, task)


def site_order(ranking: Sequence[str], waiting_at_site: Iterable[str | None]) -> tuple[str, ...]:
    """The part of the global ``ranking`` a queue needs: the ranked shares with waiting jobs
    there, in ranking order, at most :data:`MAX_RANKED_SHARES` of them. Empty when the queue's
    waiting jobs are of one share only (or of none in the ranking), so its dispatch orders by
    priority alone."""
    waiting = set(waiting_at_site)
    ordered = tuple(name for name in ranking if name in waiting)[:MAX_RANKED_SHARES]
    groups = len(ordered) + (1 if waiting - set(ordered) else 0)
    return ordered if groups >= 2 else ()


@dataclass(frozen=True, slots=True)
class ShareOrder:
    """The global ranking of shares and, per queue, the shares with waiting jobs there."""

    ranking: tuple[str, ...] = ()
    waiting_by_site: Mapping[str | None, frozenset[str | None]] = field(default_factory=dict)

    def for_site(self, site: str) -> tuple[str, ...]:
        if not self.ranking:
            return ()
        return site_order(self.ranking, self.waiting_by_site.get(site, frozenset()))


async def dispatch_order(conn: AsyncConnection) -> ShareOrder:
    """The current :func:`rank_shares` answer for the whole system (upstream ranks shares
    globally, not per queue), with the shares waiting at each queue."""
    tree = await current_tree(conn)
    if tree is None:
        return ShareOrder()
    counts = await shares_db.job_counts_by_site(conn, (*EXECUTING_STATUSES, WAITING_STATUS))
    executing: dict[str | None, int] = {}
    waiting: dict[str | None, set[str | None]] = {}
    for (share, status, site), count in counts.items():
        if status == WAITING_STATUS:
            waiting.setdefault(site, set()).add(share)
        else:
            executing[share] = executing.get(share, 0) + count
    ranking = rank_shares(tree, executing, {share for shares in waiting.values() for share in shares})
    return ShareOrder(ranking, {site: frozenset(shares) for site, shares in waiting.items()})


@dataclass(frozen=True, slots=True)
class ShareUsage:
    """One row of `bamboo share list`."""

    share: Share
    depth: int
    leaf: bool
    default: bool
    target: Fraction | None
    executing: int
    waiting: int


async def overview(conn: AsyncConnection) -> list[ShareUsage]:
    """The tree in file order with each leaf's target and its executing and waiting jobs."""
    tree = await current_tree(conn)
    if tree is None:
        return []
    targets = target_fractions(tree)
    depths = tree.depths()
    counts = await shares_db.job_counts(conn, (*EXECUTING_STATUSES, WAITING_STATUS))
    usage = []
    for share in tree.shares:
        executing = sum(counts.get((share.name, status), 0) for status in EXECUTING_STATUSES)
        usage.append(
            ShareUsage(
                share=share,
                depth=depths[share.name],
                leaf=share.name in targets,
                default=share.name == tree.default,
                target=targets.get(share.name),
                executing=executing,
                waiting=counts.get((share.name, WAITING_STATUS), 0),
            )
        )
    return usage


# api-v1.md §2.1 reassign_global_share: the jobs that move with their task.
_WAITING_JOB_STATUSES = ("pending", "defined", "assigned", "waiting", "activated")
_RUNNING_JOB_STATUSES = ("starting", "running")
MAX_REASSIGNED_TASKS = 10_000
REASSIGN_OK, REASSIGN_NOT_LEAF = 0, 1


async def reassign(
    conn: AsyncConnection, task_ids: Sequence[int], share: str, *, reassign_running_jobs: bool
) -> int:
    """Move tasks and their waiting jobs (also the running ones when asked) to the leaf ``share``.

    Returns :data:`REASSIGN_OK`, or :data:`REASSIGN_NOT_LEAF` when ``share`` is not a leaf of the
    loaded tree. Ids of tasks that do not exist are passed over, as upstream does.

    Raises:
        InvalidInput: more than :data:`MAX_REASSIGNED_TASKS` ids.
    """
    if len(task_ids) > MAX_REASSIGNED_TASKS:
        raise InvalidInput(f"at most {MAX_REASSIGNED_TASKS} task ids per call, got {len(task_ids)}")
    tree = await current_tree(conn)
    if tree is None or not tree.is_leaf(share):
        return REASSIGN_NOT_LEAF
    ids = sorted(set(task_ids))
    statuses = _WAITING_JOB_STATUSES + (_RUNNING_JOB_STATUSES if reassign_running_jobs else ())
    await shares_db.move_tasks(conn, ids, share)
    await shares_db.move_jobs(conn, ids, share, statuses)
    return REASSIGN_OK
