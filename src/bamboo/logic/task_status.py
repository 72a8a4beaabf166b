"""The one way a task's status changes: checked against the transition table, then written.

Every agent and command goes through :func:`change`, so a status the table of
:mod:`bamboo.logic.states` does not allow can never reach the database (``db.tasks.update``
refuses a ``status`` value for the same reason).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import tasks as tasks_db
from bamboo.logic.clock import Clock
from bamboo.logic.states import check_task_transition

log = logging.getLogger(__name__)


async def change(
    conn: AsyncConnection,
    clock: Clock,
    task: dict[str, Any],
    new: str,
    *,
    forced_by: str | None = None,
    **values: Any,
) -> None:
    """Move ``task`` (a row as read, with its current ``status``) to ``new``.

        ``superStatus``, ``modificationTime`` and ``stateChangeTime`` follow; entering ``pending``
        stamps ``frozenTime`` (since when the task waits, which the pending timeout reads) and leaving
        it clears the stamp. ``values`` are further task columns written in the same statement.
    ``forced_by`` names an operator override that may leave any status (``reactivate``); it is
    logged, so an override is never silent.

        Raises:
            TaskTransitionError: the table does not allow the change.
    """
    current = task["status"]
    if forced_by is None:
        check_task_transition(current, new)
    now = clock.now()
    written: dict[str, Any] = {
        "superStatus": new,
        "modificationTime": now,
        "stateChangeTime": now if new != current else task.get("stateChangeTime") or now,
    }
    if new == "pending" and current != "pending":
        written["frozenTime"] = now
    elif new != "pending" and current == "pending":
        written["frozenTime"] = None
    written.update(values)
    await tasks_db.write_status(conn, task["jediTaskID"], new, **written)
    if new != current:
        dialog = values.get("errorDialog")
        how = f" (forced by {forced_by})" if forced_by else ""
        log.info(
            "task %s: %s -> %s%s%s", task["jediTaskID"], current, new, how, f" ({dialog})" if dialog else ""
        )
