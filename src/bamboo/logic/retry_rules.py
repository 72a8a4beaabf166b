"""Automatic retries: what a failed job's error means for its input files and its task
(domain.md §5.6, §3.3).

A rule names an error source (a job error column such as ``pilotErrorCode``), a code, optionally a
regular expression on the source's diagnostic and a scope (architecture, release, work queue), and
an action:

* ``no_retry``: the job's input rows get no further attempt (maxAttempt = the attempt just used);
* ``limit_retry``: their maxAttempt is capped at ``max_attempt``;
* ``increase_memory``: the task's memory (``ramCount``, in its unit) is raised to ``factor`` times
  what the job had or used, bounded by ``max_mb_per_core`` and the largest ``maxrss`` of the queues
  the task may use;
* ``increase_cputime``: the task's ``walltime`` is raised to ``factor`` times what the job was
  allowed or took, bounded by ``max_walltime`` and the largest ``maxtime`` of those queues, and its
  ``cpuTime`` per event by the same factor, so brokerage picks longer queues and the splitter makes
  shorter jobs;
* ``reduce_input_per_job``: the task's files per job (split rule ``NF``, or ``MF`` when it splits
  by size) or GB per job (``NG``) become half of what the failed job had, down to 1, when the job's
  attempt number is one of ``attempts`` (every attempt when not given).

Of the active rules that match a job, the most specific wins (each of diagnostic, architecture,
release and work queue counts one), and among equally specific ones the first in the table.
Inactive rules that match are only logged, so a new rule can be watched before it acts.

Resource changes go on the task, not on the file rows: the next jobs of the task are made with the
task's values (the generator reads them), so one failure raises what every later job gets. They
are computed from the failed job, not from the task, so that many jobs failing at once raise the
task once, not once per job.

The table comes from the JSON file named by the ``retry_rules_file`` setting (checked when the
server starts), else from ``retry_rules.json`` shipped beside this module; docs/retry-rules.md
describes the format.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import re2
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import retry as retry_db
from bamboo.db import task_admin as admin_db
from bamboo.db import tasks as tasks_db
from bamboo.logic import queues as queues_logic
from bamboo.logic import resource_types
from bamboo.logic.brokerage import site_matches
from bamboo.logic.splitting import GIB, SplitRule
from bamboo.logic.task_admin import format_split_rule, parse_split_rule, task_memory

log = logging.getLogger(__name__)

#: Error sources a rule may name (job columns), and the diagnostic column its regex reads. The
#: transform has no diagnostic of its own: its exit code goes with the payload's (exeErrorDiag).
SOURCES: dict[str, str] = {
    "pilotErrorCode": "pilotErrorDiag",
    "exeErrorCode": "exeErrorDiag",
    "supErrorCode": "supErrorDiag",
    "ddmErrorCode": "ddmErrorDiag",
    "jobDispatcherErrorCode": "jobDispatcherErrorDiag",
    "taskBufferErrorCode": "taskBufferErrorDiag",
    "transExitCode": "exeErrorDiag",
}
#: Scope keys of a rule and the job column each one is compared with.
SCOPES: dict[str, str] = {
    "architecture": "cmtConfig",
    "release": "AtlasRelease",
    "work_queue": "workQueue_ID",
}
NO_RETRY = "no_retry"
LIMIT_RETRY = "limit_retry"
INCREASE_MEMORY = "increase_memory"
INCREASE_CPUTIME = "increase_cputime"
REDUCE_INPUT = "reduce_input_per_job"
ACTIONS = (NO_RETRY, LIMIT_RETRY, INCREASE_MEMORY, INCREASE_CPUTIME, REDUCE_INPUT)
DEFAULT_FACTOR = 1.5
# Bounds on what an operator's file may ask, so a typo cannot make a job ask for a petabyte.
MAX_RULES = 1000
MAX_DIAG_PATTERN_CHARS = 256
MAX_FACTOR = 10.0
MAX_MB_PER_CORE = 1_000_000
MAX_WALLTIME_SECONDS = 366 * 24 * 3600
MAX_ATTEMPTS = 1000
_RULE_KEYS = {"source", "code", "diag", "action", "parameters", "active", "comment", *SCOPES}
_MERGE_PROCESSING_TYPE = "pmerge"
_RE2_OPTIONS = re2.Options()
# A refused pattern is reported with its rule; RE2 need not also write it to stderr.
_RE2_OPTIONS.log_errors = False


class RetryRulesError(ValueError):
    """The retry-rule table cannot be used; the message names the file, the rule and the key."""


@dataclass(frozen=True)
class Rule:
    """One row of the retry-rule table (see the module docstring)."""

    source: str
    code: int
    action: str
    parameters: Mapping[str, Any] = field(default_factory=dict, hash=False)
    diag: str | None = None
    active: bool = True
    architecture: str | None = None
    release: str | None = None
    work_queue: int | None = None
    position: int = 0
    pattern: Any = field(default=None, compare=False, repr=False)

    @property
    def specificity(self) -> int:
        """How many optional conditions the rule has: the more, the fewer jobs it fits."""
        return sum(
            value is not None for value in (self.diag, self.architecture, self.release, self.work_queue)
        )

    def describe(self) -> str:
        """The rule as logs name it: position, condition and action."""
        extra = f" diag~{self.diag!r}" if self.diag is not None else ""
        return f"rule {self.position} ({self.source}={self.code}{extra} -> {self.action})"

    def matches(self, job: Mapping[str, Any]) -> bool:
        """Whether the failed job has this rule's error (and diagnostic, and scope)."""
        if _code_of(job.get(self.source)) != self.code:
            return False
        for key, column in SCOPES.items():
            wanted = getattr(self, key)
            if wanted is not None and job.get(column) != wanted:
                return False
        if self.pattern is not None:
            return self.pattern.search(str(job.get(SOURCES[self.source]) or "")) is not None
        return True


@dataclass(frozen=True)
class Decision:
    """The rule that acts on a failed job (None: the usual retry) and the inactive rules that
    would have matched (logged only)."""

    rule: Rule | None
    watched: tuple[Rule, ...] = ()


def _code_of(value: Any) -> int | None:
    """A job's error code as an integer; transExitCode is stored as text."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def choose(rules: Sequence[Rule], job: Mapping[str, Any]) -> Decision:
    """The rule acting on ``job``: of the matching active rules, the most specific, and of equally
    specific ones the first in the table."""
    matching = [rule for rule in rules if rule.matches(job)]
    active = [rule for rule in matching if rule.active]
    chosen = min(active, key=lambda rule: (-rule.specificity, rule.position), default=None)
    return Decision(chosen, tuple(rule for rule in matching if not rule.active))


# --- Loading and validation -------------------------------------------------------------------


def _problem(where: str, message: str) -> RetryRulesError:
    return RetryRulesError(f"{where}: {message}")


def _int(where: str, key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _problem(where, f"'{key}' must be an integer, got {value!r}")
    if not low <= value <= high:
        raise _problem(where, f"'{key}' must be between {low} and {high}, got {value}")
    return value


def _number(where: str, key: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _problem(where, f"'{key}' must be a number, got {value!r}")
    if not low < value <= high:
        raise _problem(where, f"'{key}' must be above {low} and at most {high}, got {value}")
    return float(value)


def _parameters(where: str, action: str, given: Any) -> dict[str, Any]:
    """The action's parameters, checked, with defaults filled in."""
    if not isinstance(given, dict):
        raise _problem(where, f"'parameters' must be an object, got {given!r}")
    allowed: dict[str, tuple[str, ...]] = {
        NO_RETRY: (),
        LIMIT_RETRY: ("max_attempt",),
        INCREASE_MEMORY: ("factor", "max_mb_per_core"),
        INCREASE_CPUTIME: ("factor", "max_walltime"),
        REDUCE_INPUT: ("attempts",),
    }
    unknown = sorted(set(given) - set(allowed[action]))
    if unknown:
        expected = ", ".join(allowed[action]) or "none"
        names = ", ".join(unknown)
        raise _problem(where, f"unknown parameter(s) {names} for {action} (expected: {expected})")
    checked: dict[str, Any] = {}
    if action == LIMIT_RETRY:
        if "max_attempt" not in given:
            raise _problem(where, "limit_retry needs the parameter 'max_attempt'")
        checked["max_attempt"] = _int(where, "max_attempt", given["max_attempt"], 1, MAX_ATTEMPTS)
    if action in (INCREASE_MEMORY, INCREASE_CPUTIME):
        checked["factor"] = _number(where, "factor", given.get("factor", DEFAULT_FACTOR), 1.0, MAX_FACTOR)
    if action == INCREASE_MEMORY and given.get("max_mb_per_core") is not None:
        checked["max_mb_per_core"] = _int(
            where, "max_mb_per_core", given["max_mb_per_core"], 1, MAX_MB_PER_CORE
        )
    if action == INCREASE_CPUTIME and given.get("max_walltime") is not None:
        checked["max_walltime"] = _int(where, "max_walltime", given["max_walltime"], 1, MAX_WALLTIME_SECONDS)
    if action == REDUCE_INPUT and given.get("attempts") is not None:
        attempts = given["attempts"]
        if not isinstance(attempts, list) or not attempts:
            raise _problem(where, f"'attempts' must be a non-empty list of attempt numbers, got {attempts!r}")
        checked["attempts"] = tuple(_int(where, "attempts", item, 1, MAX_ATTEMPTS) for item in attempts)
    return checked


def _compile(where: str, text: Any) -> Any:
    if not isinstance(text, str) or not text:
        raise _problem(where, f"'diag' must be a non-empty string, got {text!r}")
    if len(text) > MAX_DIAG_PATTERN_CHARS:
        raise _problem(where, f"'diag' is longer than {MAX_DIAG_PATTERN_CHARS} characters")
    try:
        return re2.compile(text, options=_RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else exc
        raise _problem(
            where,
            f"'diag' is not a valid regular expression (RE2: no back-references or look-arounds): {reason}",
        ) from exc


def _rule(where: str, position: int, item: Any) -> Rule:
    if not isinstance(item, dict):
        raise _problem(where, f"a rule must be an object, got {item!r}")
    unknown = sorted(set(item) - _RULE_KEYS)
    if unknown:
        expected = ", ".join(sorted(_RULE_KEYS))
        raise _problem(where, f"unknown key(s) {', '.join(unknown)} (expected: {expected})")
    for key in ("source", "code", "action"):
        if key not in item:
            raise _problem(where, f"'{key}' is missing")
    source, action = item["source"], item["action"]
    if source not in SOURCES:
        raise _problem(where, f"unknown source {source!r} (expected one of: {', '.join(SOURCES)})")
    if action not in ACTIONS:
        raise _problem(where, f"unknown action {action!r} (expected one of: {', '.join(ACTIONS)})")
    code = _int(where, "code", item["code"], -(2**31), 2**31 - 1)
    if code == 0:
        raise _problem(where, "'code' 0 means no error; a rule needs an error code")
    active = item.get("active", True)
    if not isinstance(active, bool):
        raise _problem(where, f"'active' must be true or false, got {active!r}")
    for key in ("architecture", "release"):
        if item.get(key) is not None and not isinstance(item[key], str):
            raise _problem(where, f"'{key}' must be a string, got {item[key]!r}")
    work_queue = item.get("work_queue")
    if work_queue is not None:
        work_queue = _int(where, "work_queue", work_queue, 0, 2**31 - 1)
    diag = item.get("diag")
    return Rule(
        source=source,
        code=code,
        action=action,
        parameters=_parameters(where, action, item.get("parameters", {})),
        diag=diag,
        active=active,
        architecture=item.get("architecture"),
        release=item.get("release"),
        work_queue=work_queue,
        position=position,
        pattern=_compile(where, diag) if diag is not None else None,
    )


def parse_table(text: str, origin: str = "retry rules") -> tuple[Rule, ...]:
    """The rules of a JSON document ``{"rules": [...]}``; raises RetryRulesError naming
    ``origin``, the rule's position (from 1) and what is wrong."""
    try:
        decoded = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RetryRulesError(f"{origin}: not valid JSON: {exc}") from exc
    if not isinstance(decoded, dict) or set(decoded) - {"rules", "comment"} or "rules" not in decoded:
        raise RetryRulesError(f'{origin}: expected an object {{"rules": [...]}} (and optionally "comment")')
    items = decoded["rules"]
    if not isinstance(items, list):
        raise RetryRulesError(f"{origin}: 'rules' must be a list")
    if len(items) > MAX_RULES:
        raise RetryRulesError(f"{origin}: at most {MAX_RULES} rules, got {len(items)}")
    return tuple(_rule(f"{origin}: rule {index}", index, item) for index, item in enumerate(items, start=1))


def load_table(path: Path | None) -> tuple[Rule, ...]:
    """The table of the file ``path``, or the built-in defaults when None."""
    if path is None:
        return default_table()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RetryRulesError(f"retry rules file {path}: cannot be read: {exc}") from exc
    return parse_table(text, f"retry rules file {path}")


@cache
def default_table() -> tuple[Rule, ...]:
    """The built-in rules (``retry_rules.json`` in this package)."""
    text = resources.files("bamboo.logic").joinpath("retry_rules.json").read_text(encoding="utf-8")
    return parse_table(text, "built-in retry rules")


_installed: tuple[Rule, ...] | None = None


def install(rules: tuple[Rule, ...] | None) -> None:
    """Make ``rules`` the table of this process (None: back to the built-in defaults). The server
    installs the configured table once at start, before it forks its workers."""
    global _installed
    _installed = rules


def active_table() -> tuple[Rule, ...]:
    """The table failed jobs are judged by in this process."""
    return _installed if _installed is not None else default_table()


# --- What an action changes (pure) ---------------------------------------------------------------


def attempt_limit(rule: Rule, row: Mapping[str, Any]) -> int | None:
    """The new maxAttempt of an input row of the failed job under ``rule``, None to keep it.

    The row's attemptNr is still the one the job used; the failure adds one.
    """
    used = row["attemptNr"] + 1
    if rule.action == NO_RETRY:
        limit = used
    elif rule.action == LIMIT_RETRY:
        limit = rule.parameters["max_attempt"]
    else:
        return None
    if row["maxAttempt"] is not None and row["maxAttempt"] <= limit:
        return None
    return limit


def _candidate_queues(
    task: Mapping[str, Any], queues: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    site = task.get("site")
    return [queue for queue in queues if not site or site_matches(site, queue["name"])]


def _largest(queues: Sequence[Mapping[str, Any]], key: str) -> int | None:
    """The largest positive ``key`` of the queues; None when one of them sets no limit (or there
    is no queue), since that queue takes any value."""
    values = [queue.get(key) or 0 for queue in queues]
    if not values or any(value <= 0 for value in values):
        return None
    return max(values)


def _per_core(task: Mapping[str, Any]) -> bool:
    return (task.get("ramUnit") or "MBPerCore").lower().startswith("mbpercore")


def raised_memory(
    rule: Rule, task: Mapping[str, Any], job: Mapping[str, Any], queues: Sequence[Mapping[str, Any]]
) -> int | None:
    """The task's new ``ramCount`` (in its unit) after ``job`` ran out of memory, None to keep it.

    The job's memory is the larger of what it was given (minRamCount, MB) and what the pilot saw
    it use (maxRSS, kB); the next jobs get ``factor`` times that, within the bounds.
    """
    cores = max(job.get("coreCount") or 1, 1)
    used = max(job.get("minRamCount") or 0, math.ceil((job.get("maxRSS") or 0) / 1024))
    if used <= 0:
        return None
    total = math.ceil(used * rule.parameters["factor"])
    bounds = [_largest(_candidate_queues(task, queues), "maxrss")]
    if rule.parameters.get("max_mb_per_core") is not None:
        bounds.append(rule.parameters["max_mb_per_core"] * cores)
    total = min([total, *(bound for bound in bounds if bound is not None)])
    base = task.get("baseRamCount") or 0
    ram = math.ceil((total - base) / cores) if _per_core(task) else total - base
    return ram if ram > (task.get("ramCount") or 0) else None


def raised_walltime(
    rule: Rule, task: Mapping[str, Any], job: Mapping[str, Any], queues: Sequence[Mapping[str, Any]]
) -> dict[str, int] | None:
    """The task's new ``walltime`` (seconds per job) and ``cpuTime`` (seconds per event) after
    ``job`` ran out of time, None to keep them.

    The job's time is the longer of the queue limit it had (maxWalltime) and how long it ran.
    """
    ran = 0
    if job.get("startTime") is not None and job.get("endTime") is not None:
        ran = max(0, int((job["endTime"] - job["startTime"]).total_seconds()))
    used = max(job.get("maxWalltime") or 0, ran)
    if used <= 0:
        return None
    factor = rule.parameters["factor"]
    walltime = math.ceil(used * factor)
    bounds = [_largest(_candidate_queues(task, queues), "maxtime"), rule.parameters.get("max_walltime")]
    walltime = min([walltime, *(bound for bound in bounds if bound is not None)])
    if walltime <= (task.get("walltime") or 0):
        return None
    changes = {"walltime": walltime}
    if task.get("cpuTime"):
        changes["cpuTime"] = math.ceil(task["cpuTime"] * factor)
    return changes


def reduced_split_rule(
    rule: Rule, task: Mapping[str, Any], job: Mapping[str, Any], n_inputs: int
) -> str | None:
    """The task's new split rule after ``job`` (with ``n_inputs`` input rows) failed, None to keep
    it: files per job (NF, else the cap MF) or GB per job (NG) halved from what the job had."""
    attempts = rule.parameters.get("attempts")
    if attempts is not None and job.get("attemptNr") not in attempts:
        return None
    tokens = parse_split_rule(task.get("splitRule"))
    if "NE" in tokens:
        # Event ranges were cut when the task was refined; they cannot be made smaller now.
        return None
    if "NG" in tokens:
        current = _positive_number(tokens["NG"])
        half = (job.get("inputFileBytes") or 0) / GIB / 2
        if current is None or half <= 0:
            return None
        # Rounded down to hundredths, which the split rule's text keeps exactly, so the same failure
        # cannot halve again (the inner round absorbs binary noise such as 147.45 * 100 < 14745).
        new_gb = max(1.0, math.floor(round(min(current, half) * 100, 6)) / 100)
        if new_gb >= current:
            return None
        tokens["NG"] = f"{new_gb:g}"
        return format_split_rule(tokens)
    key = "NF" if "NF" in tokens else "MF"
    current = _positive_number(tokens.get(key))
    new_files = max(1, n_inputs // 2)
    if current is not None and new_files >= current:
        return None
    tokens[key] = str(new_files)
    return format_split_rule(tokens)


def _positive_number(text: str | None) -> float | None:
    try:
        value = float(text or "")
    except ValueError:
        return None
    return value if value > 0 and math.isfinite(value) else None


def split_for_task(rule: SplitRule, split_rule_text: str | None) -> SplitRule:
    """The submitted split rule with the task's current ``NF``, ``NG`` and ``MF`` (which
    reduce_input_per_job and task/change_split_rule set) in place of the submitted numbers.

    The way of splitting stays the submitted one: a task split by events is not changed.
    """
    if rule.n_events_per_job is not None:
        return rule
    tokens = parse_split_rule(split_rule_text)
    n_files = _positive_number(tokens.get("NF"))
    n_gb = _positive_number(tokens.get("NG"))
    max_files = _positive_number(tokens.get("MF"))
    if rule.n_files_per_job is not None and n_files is not None:
        rule = replace(rule, n_files_per_job=max(1, int(n_files)))
    if rule.n_gb_per_job is not None and n_gb is not None:
        rule = replace(rule, n_gb_per_job=n_gb)
    if max_files is not None:
        rule = replace(rule, n_max_files_per_job=max(1, int(max_files)))
    return rule


# --- Applying the rules to a failed job ----------------------------------------------------------


async def after_failure(
    conn: AsyncConnection, job: Mapping[str, Any], inputs: Sequence[dict[str, Any]]
) -> None:
    """Apply the active table to a failed job whose input rows (``inputs``, still ``running``) go
    back to the task.

    A lowered maxAttempt is written and also set on the given row dicts, in place, because the
    caller decides from them whether a row may be retried (and, for a merge job, whether its
    pre-merge jobs fail). Attempts themselves are counted by the caller.
    """
    if not inputs:
        return
    decision = choose(active_table(), job)
    for rule in decision.watched:
        log.info("job %s: inactive %s matches; it would act if active", job["PandaID"], rule.describe())
    rule = decision.rule
    if rule is None:
        return
    log.info("job %s: %s applies", job["PandaID"], rule.describe())
    if rule.action in (NO_RETRY, LIMIT_RETRY):
        await _limit_attempts(conn, rule, inputs)
    elif job.get("processingType") == _MERGE_PROCESSING_TYPE:
        # Merge jobs take the task's merge resources, not the ones these actions change.
        log.info("job %s: %s does not change merge jobs", job["PandaID"], rule.action)
    else:
        await _change_task(conn, rule, job, len(inputs))


async def _limit_attempts(conn: AsyncConnection, rule: Rule, inputs: Sequence[dict[str, Any]]) -> None:
    by_limit: dict[int, list[int]] = {}
    for row in inputs:
        limit = attempt_limit(rule, row)
        if limit is not None:
            by_limit.setdefault(limit, []).append(row["fileID"])
            row["maxAttempt"] = limit
    for limit, file_ids in by_limit.items():
        await tasks_db.update_files(conn, file_ids, maxAttempt=limit)


async def _change_task(conn: AsyncConnection, rule: Rule, job: Mapping[str, Any], n_inputs: int) -> None:
    task = await retry_db.lock_task_if_free(conn, job["jediTaskID"])
    if task is None:
        log.warning(
            "job %s: task %s is busy or gone; %s not applied this time",
            job["PandaID"],
            job["jediTaskID"],
            rule.action,
        )
        return
    values: dict[str, Any] = {}
    if rule.action == INCREASE_MEMORY:
        ram = raised_memory(rule, task, job, await queues_logic.list_specs(conn))
        if ram is not None:
            values["ramCount"] = ram
            memory = {**task, "ramCount": ram}
            values["resource_type"] = resource_types.match_job(
                await resource_types.resource_type_list(conn), task["coreCount"], task_memory(memory)
            )
    elif rule.action == INCREASE_CPUTIME:
        values.update(raised_walltime(rule, task, job, await queues_logic.list_specs(conn)) or {})
    elif rule.action == REDUCE_INPUT:
        split_rule = reduced_split_rule(rule, task, job, n_inputs)
        if split_rule is not None:
            values["splitRule"] = split_rule
    if not values:
        log.info("job %s: %s leaves task %s as it is", job["PandaID"], rule.action, task["jediTaskID"])
        return
    await admin_db.update_task(conn, task["jediTaskID"], **values)
    log.info("job %s: task %s now has %s", job["PandaID"], task["jediTaskID"], values)
