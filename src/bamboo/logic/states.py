"""Task and job statuses and the rules for moving between them (api-v1.md §3.1-3.3, domain.md §2, §5).

Every status change of a job reported by a pilot goes through :func:`pilot_report`; agents use the
sets below. Keeping the rules here, as pure functions, lets the tests cover them exhaustively.
"""

from __future__ import annotations

from dataclasses import dataclass

# --- jobs -----------------------------------------------------------------------------------------
JOB_FINAL = frozenset({"finished", "failed", "cancelled", "closed"})
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


# --- tasks ----------------------------------------------------------------------------------------
TASK_FINAL = frozenset({"done", "finished", "failed", "aborted", "broken"})
# Tasks the job generator works on.
TASK_GENERATING = frozenset({"ready", "running", "scouting"})
# Statuses the finisher turns into final ones, and what they become.
TASK_FINAL_OF = {"tobroken": "broken", "toabort": "aborted"}


def final_task_status(
    *,
    n_files: int,
    n_files_finished: int,
    parent_status: str | None,
    input_mutable: bool = False,
) -> str:
    """The final status of a task whose master inputs are all processed (domain.md §2.5).

    Args:
        n_files: master input files (or chunks) of the task.
        n_files_finished: of those, the successfully processed ones.
        parent_status: status of the parent task, or None without parent.
        input_mutable: the master input can still grow.
    """
    if n_files and n_files == n_files_finished:
        if parent_status in ("failed", "broken", "aborted"):
            return "failed"
        if (parent_status is not None and parent_status != "done") or input_mutable:
            return "finished"
        return "done"
    if n_files_finished == 0:
        return "failed"
    return "finished"
