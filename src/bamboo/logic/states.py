"""Task and job statuses and the rules for moving between them (api-v1.md §3.1-3.3, domain.md §2, §5).

Every status change of a job reported by a pilot goes through :func:`pilot_report`; agents use the
sets below. Keeping the rules here, as pure functions, lets the tests cover them exhaustively.
"""

from __future__ import annotations

from dataclasses import dataclass

# --- jobs -----------------------------------------------------------------------------------------
JOB_FINAL = frozenset({"finished", "failed", "cancelled", "closed"})
JOB_KILLED = frozenset({"cancelled", "closed"})
JOB_STATUSES = (
    frozenset(
        {
            "pending",
            "defined",
            "assigned",
            "waiting",
            "activated",
            "throttled",
            "sent",
            "starting",
            "running",
            "holding",
            "transferring",
            "merging",
        }
    )
    | JOB_FINAL
)
PILOT_REPORTABLE = frozenset({"starting", "running", "holding", "transferring", "finished", "failed"})
# Statuses a pilot may report on: dispatched or running jobs (and activated ones, for push mode).
JOB_REPORTABLE_FROM = frozenset(
    {"activated", "sent", "starting", "running", "holding", "transferring", "merging"}
)

COMMAND_NONE = "NULL"
COMMAND_KILL = "tobekilled"
COMMAND_ALREADY_DONE = "alreadydone"


@dataclass(frozen=True, slots=True)
class PilotDecision:
    """What a pilot report does to a job.

    Attributes:
        status: the job's new status, or None to leave it as it is.
        reply: a command that overrides the job's own commandToPilot in the answer, if any.
        final_report: the report is the pilot's final word (finished/failed), to be kept for the
            finaliser; the job waits in ``holding`` meanwhile.
    """

    status: str | None
    reply: str | None = None
    final_report: bool = False


def pilot_report(current: str, reported: str, *, has_dispatcher_diag: bool = False) -> PilotDecision:
    """Decide the effect of a pilot reporting ``reported`` for a job in status ``current``.

    Rules (api-v1.md §2.3 ``update_job``): finished/failed are recorded as ``holding`` until the
    finaliser registers the outputs; nothing leaves a final status (a report on a finished or failed
    job is answered ``alreadydone``); a job in ``merging`` does not change; holding/transferring
    do not go back to running/starting; a ``starting`` report on a running job keeps it running;
    transferring does not fall back to holding unless the report carries a dispatcher diagnostic.
    """
    if reported not in PILOT_REPORTABLE:
        raise ValueError(f"not a pilot status: {reported}")
    if current in JOB_KILLED:
        # Killed while the pilot still ran it: the pilot must stop.
        return PilotDecision(None, reply=COMMAND_KILL)
    if current in JOB_FINAL:
        return PilotDecision(None, reply=COMMAND_ALREADY_DONE)
    if current not in JOB_REPORTABLE_FROM:
        # Not dispatched (defined, assigned, waiting, throttled...): the pilot must not run it.
        return PilotDecision(None, reply=COMMAND_KILL)
    if current == "merging":
        return PilotDecision(None)
    if current == "holding" and reported in ("holding", "running", "starting", "transferring"):
        return PilotDecision(None, reply=COMMAND_ALREADY_DONE if reported == "holding" else None)
    if current == "transferring" and reported in ("running", "starting"):
        return PilotDecision(None)
    if current == "transferring" and reported == "holding" and not has_dispatcher_diag:
        return PilotDecision(None, reply=COMMAND_ALREADY_DONE)
    if reported in ("finished", "failed"):
        return PilotDecision("holding", final_report=True)
    if reported == "starting" and current == "running":
        return PilotDecision(None)
    return PilotDecision(reported)


# --- Harvester workers (api-v1.md §3.5, domain.md §8.1) ---------------------------------------------
WORKER_FINAL = frozenset({"finished", "failed", "cancelled", "missed"})
# Before the batch system runs the worker: Harvester's to_submit and pending, then submitted.
WORKER_NOT_STARTED = frozenset({"to_submit", "pending", "submitted"})
WORKER_STATUSES = WORKER_NOT_STARTED | frozenset({"ready", "running", "idle"}) | WORKER_FINAL
# A worker that ran does not go back to "not started yet".
_WORKER_STARTED = frozenset({"running", "idle"})


def worker_status(current: str | None, reported: str, *, final_is_recent: bool) -> str:
    """The status a worker row keeps after Harvester reports ``reported`` for it.

    Args:
        current: the stored status, None for a new worker (or a stored value outside the
            vocabulary, which the report then replaces).
        reported: a status of :data:`WORKER_STATUSES`.
        final_is_recent: the row was last updated less than 3 h ago (domain.md §8.2): a final
            status that recent is kept, whatever is reported, so a late report of an older state
            cannot reopen a worker that has ended.

    A worker running or idle never goes back to a not-started status (domain.md §8.1); a final
    status older than 3 h may be replaced (Harvester reuses nothing, but a row that old is
    stale and the report is the fresher truth).
    """
    if reported not in WORKER_STATUSES:
        raise ValueError(f"not a worker status: {reported}")
    if current in WORKER_FINAL and final_is_recent:
        return current
    if current in _WORKER_STARTED and reported in WORKER_NOT_STARTED:
        return current
    return reported


# --- data carousel requests (api-v1.md §3.8, domain.md §9.3) -------------------------------------
REQUEST_ACTIVE = frozenset({"queued", "staging"})
REQUEST_FINAL = frozenset({"done", "cancelled", "retired"})
# A task over the same dataset joins such a request instead of making a new one.
REQUEST_REUSABLE = frozenset({"queued", "staging", "done"})
REQUEST_STATUSES = REQUEST_ACTIVE | REQUEST_FINAL
# The one table of request transitions: queued -> staging (a DDM rule submitted) -> done (every file
# staged or given up); an active request is cancelled when no task needs it or when it is resubmitted
# elsewhere; a done request nobody uses is retired (no longer reused).
REQUEST_TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"staging", "cancelled"}),
    "staging": frozenset({"done", "cancelled"}),
    "done": frozenset({"retired"}),
    "cancelled": frozenset(),
    "retired": frozenset(),
}


class RequestTransitionError(ValueError):
    """A staging request status change the transition table does not allow."""


def check_request_transition(current: str, new: str) -> None:
    """Raise :class:`RequestTransitionError` unless a request may go from ``current`` to ``new``."""
    if new not in REQUEST_TRANSITIONS.get(current, frozenset()):
        raise RequestTransitionError(f"staging request status {current} -> {new} is not allowed")


# --- tasks ----------------------------------------------------------------------------------------
TASK_FINAL = frozenset({"done", "finished", "failed", "aborted", "broken"})
# Tasks whose jobs run, finished by the finisher once their inputs are processed.
TASK_PROCESSING = frozenset({"ready", "running", "scouting"})
# Tasks the generator makes jobs for: a task in scouting waits for its scouts' verdict.
TASK_MAKING_JOBS = frozenset({"ready", "running"})
# Statuses the finisher turns into final ones, and what they become.
TASK_FINAL_OF = {"tobroken": "broken", "toabort": "aborted"}
# ``passed`` (a finish command has ended the task's jobs) gets the final-status rule.
TASK_PASSED = "passed"
TASK_STATUSES = frozenset(
    {
        "registered", "defined", "assigning", "ready", "pending", "scouting", "scouted", "running",
        "prepared", "done", "failed", "finished", "aborting", "aborted", "finishing", "topreprocess",
        "preprocessing", "tobroken", "broken", "toretry", "toincexec", "rerefine", "paused",
        "throttled", "exhausted", "passed", "staging", "staged", "toabort", "toreassign", "reassigning",
    }
)  # fmt: skip
_ACTIVE = frozenset(
    {"registered", "defined", "assigning", "ready", "pending", "scouting", "scouted", "running",
     "topreprocess", "preprocessing", "throttled", "rerefine", "staging", "staged", "reassigning"}
)  # fmt: skip
# The one table of task transitions (domain.md §2.2-2.3): status -> statuses it may move to.
# Every task status written by the agents and commands is checked against it.
TASK_TRANSITIONS: dict[str, frozenset[str]] = {
    "registered": frozenset({"defined", "ready", "pending", "tobroken", "broken", "staging", "topreprocess"}),
    "defined": frozenset({"assigning", "ready", "pending", "tobroken"}),
    "assigning": frozenset({"ready", "pending", "tobroken"}),
    "ready": frozenset({"scouting", "running", "pending", "prepared", "exhausted", "tobroken"}),
    "pending": frozenset(
        {
            "registered",
            "defined",
            "ready",
            "scouting",
            "running",
            "exhausted",
            "tobroken",
            "prepared",
            "staging",
        }
    ),
    # -> ready: a reassignment killed the scouts, which start again.
    "scouting": frozenset({"scouted", "running", "pending", "tobroken", "exhausted", "prepared", "ready"}),
    "scouted": frozenset({"running", "prepared"}),
    "running": frozenset({"running", "pending", "throttled", "exhausted", "prepared", "tobroken"}),
    "throttled": frozenset({"running", "scouting", "ready", "prepared"}),
    "topreprocess": frozenset({"preprocessing", "tobroken"}),
    "preprocessing": frozenset({"registered", "tobroken", "pending"}),
    # The carousel (logic/carousel.py) resumes a staging task once its request has a DDM rule; the
    # datasets were made at refinement, so a staged task goes on to ready (files come as staged).
    "staging": frozenset({"staged", "tobroken"}),
    "staged": frozenset({"defined", "registered", "ready"}),
    "exhausted": frozenset({"ready", "running", "scouting", "finishing", "toretry", "toincexec"}),
    "prepared": frozenset({"done", "finished", "failed"}),
    "finishing": frozenset({"passed"}),
    "passed": frozenset({"done", "finished", "failed", "exhausted"}),
    "aborting": frozenset({"toabort"}),
    "toabort": frozenset({"aborted"}),
    "tobroken": frozenset({"broken"}),
    "toretry": frozenset({"ready", "done", "finished", "failed", "aborted", "exhausted"}),
    "toincexec": frozenset({"rerefine"}),
    "rerefine": frozenset({"ready", "running", "defined", "tobroken"}),
    "toreassign": frozenset({"reassigning"}),
    "reassigning": frozenset({"ready", "running", "pending"}),
    "paused": frozenset(),
    # Final statuses move only through retry / incexec.
    # -> toretry: lost-file recovery re-runs a done task to re-produce lost outputs
    # (logic/file_recovery.py); the retry command itself stays refused for done tasks.
    "done": frozenset({"toincexec", "toretry"}),
    "finished": frozenset({"toretry", "toincexec"}),
    "failed": frozenset({"toretry", "toincexec"}),
    "aborted": frozenset({"toretry", "toincexec"}),
    "broken": frozenset(),
}
# What every non-final, non-paused status may also do: be killed, finished, paused, reassigned.
_COMMAND_DOING = frozenset({"aborting", "finishing", "paused", "toreassign"})


class TaskTransitionError(ValueError):
    """A task status change the transition table does not allow."""


def task_transition_allowed(current: str, new: str) -> bool:
    """Whether a task may go from ``current`` to ``new`` (same status is always allowed)."""
    if current == new:
        return True
    if new in TASK_TRANSITIONS.get(current, frozenset()):
        return True
    if current == "paused":
        # resume restores the status the task was paused in.
        return new in _ACTIVE or new in ("exhausted", "prepared", "finishing", "aborting")
    if current in _ACTIVE or current in ("exhausted", "prepared", "passed", "toretry", "toincexec"):
        return new in _COMMAND_DOING and command_accepted(_DOING_COMMAND[new], current)
    return False


def check_task_transition(current: str, new: str) -> None:
    """Raise :class:`TaskTransitionError` unless the table allows ``current`` -> ``new``."""
    if not task_transition_allowed(current, new):
        raise TaskTransitionError(f"task status {current} -> {new} is not allowed")


# --- task commands (api-v1.md §2 common notes, domain.md §2.3) ------------------------------------
TASK_COMMANDS = ("kill", "finish", "retry", "incexec", "reassign", "pause", "resume", "avalanche", "release")
_KILL_REFUSED = frozenset(
    {"finished", "done", "prepared", "broken", "aborted", "toabort", "aborting", "failed"}
)
_RETRY_FROM = frozenset({"finished", "failed", "exhausted"})
_INCEXEC_FROM = frozenset({"finished", "failed", "aborted", "done", "exhausted"})
_REASSIGN_FROM = frozenset(
    {"defined", "ready", "running", "scouting", "scouted", "pending", "assigning", "exhausted"}
)
_PAUSE_REFUSED = frozenset({"finished", "failed", "done", "aborted", "broken", "paused"})
_RESUME_FROM = frozenset({"paused", "throttled", "staging"})
_RELEASE_FROM = frozenset({"scouting", "pending", "running", "ready", "assigning", "defined"})
_DOING_COMMAND = {"aborting": "kill", "finishing": "finish", "paused": "pause", "toreassign": "reassign"}
# The status a command puts the task in when the commando picks it up.
COMMAND_DOING_STATUS = {
    "kill": "aborting",
    "finish": "finishing",
    "retry": "toretry",
    "incexec": "toincexec",
    "reassign": "toreassign",
    "pause": "paused",
}


def command_accepted(command: str, status: str, *, keeps_status: bool = False) -> bool:
    """Whether ``command`` may be registered for a task in ``status``.

    Args:
        keeps_status: for reassign, the target is a site and the task keeps its status, which
            upstream accepts in any status.
    """
    if command in ("kill", "finish"):
        return status not in _KILL_REFUSED
    if command == "retry":
        return status in _RETRY_FROM
    if command == "incexec":
        return status in _INCEXEC_FROM
    if command == "reassign":
        return keeps_status or status in _REASSIGN_FROM
    if command == "pause":
        return status not in _PAUSE_REFUSED
    if command == "resume":
        return status in _RESUME_FROM
    if command == "avalanche":
        return status == "scouting"
    if command == "release":
        return status in _RELEASE_FROM
    raise ValueError(f"not a task command: {command}")


def command_executable(command: str, status: str, *, keeps_status: bool = False) -> bool:
    """Whether the commando can execute ``command`` on a task in ``status`` now.

    Registration follows upstream's wider acceptance table; a task already in the middle of
    another command (aborting, finishing, toreassign...) cannot enter this one's doing status,
    so the command is dropped at pickup, as JEDI does.
    """
    if not command_accepted(command, status, keeps_status=keeps_status):
        return False
    doing = COMMAND_DOING_STATUS.get(command)
    return doing is None or keeps_status or task_transition_allowed(status, doing)


FULL_GOAL = 1000


def completeness(*, n_files: int, n_files_finished: int, n_events: int, n_events_used: int) -> int:
    """How much of the master input is processed, per mille (domain.md §2.5): by events when the
    input counts them, else by files."""
    if n_events:
        return n_events_used * FULL_GOAL // n_events
    return n_files_finished * FULL_GOAL // n_files if n_files else 0


def final_task_status(
    *,
    n_files: int,
    n_files_finished: int,
    parent_status: str | None,
    input_mutable: bool = False,
    done_per_mille: int | None = None,
    goal: int | None = None,
    fail_goal_unreached: bool = False,
) -> str:
    """The final status of a task whose master inputs are all processed (domain.md §2.5).

    Args:
        n_files: master input files (or chunks) of the task.
        n_files_finished: of those, the successfully processed ones.
        parent_status: status of the parent task, or None without parent.
        input_mutable: the master input can still grow.
        done_per_mille: the task's :func:`completeness`; by files when not given.
        goal: the completeness the task aims at, per mille (default all of it).
        fail_goal_unreached: ``failWhenGoalUnreached``: a partial result below the goal fails.
    """
    if n_files and n_files == n_files_finished:
        if parent_status in ("failed", "broken", "aborted"):
            return "failed"
        if (parent_status is not None and parent_status != "done") or input_mutable:
            return "finished"
        return "done"
    if n_files_finished == 0:
        return "failed"
    if fail_goal_unreached:
        reached = done_per_mille
        if reached is None:
            reached = completeness(
                n_files=n_files, n_files_finished=n_files_finished, n_events=0, n_events_used=0
            )
        if reached < (goal or FULL_GOAL):
            return "failed"
    return "finished"
