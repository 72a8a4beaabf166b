"""`bamboo task`: submit, list, show, watch and command tasks from the command line.

Commands act as an operator with the production role, through the same logic functions as the
API; the server's agents (or `bamboo agents`) execute them.
"""

from __future__ import annotations

import asyncio
import getpass
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bamboo.auth.identity import AuthMethod, Identity
from bamboo.cli.options import (
    DatabaseOption,
    HomeOption,
    console,
    fail,
    read_json_file,
    settings_for,
    with_database,
)
from bamboo.db import tasks as tasks_db
from bamboo.db.engine import Database
from bamboo.logic import commands, task_admin, tasks
from bamboo.logic.clock import SystemClock
from bamboo.logic.errors import BambooError
from bamboo.logic.progress import TaskProgress, progress

app = typer.Typer(help="Tasks.", no_args_is_help=True)

_MAX_FILE_BYTES = 1024 * 1024
TaskId = Annotated[int, typer.Argument(help="The task's jediTaskID.")]


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(help="Task parameters as a JSON object.")],
    user: Annotated[
        str | None, typer.Option(help="Owner when the file names none (default: your login).")
    ] = None,
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Submit a task as the operator (the server's agents pick it up)."""
    params = read_json_file(file, _MAX_FILE_BYTES)
    if not isinstance(params, dict):
        raise fail("the task parameters must be a JSON object")
    owner = params.get("userName") or user or getpass.getuser()
    params["userName"] = owner
    operator = Identity(dn=f"/CN={owner}", method=AuthMethod.X509)

    async def work(db: Database) -> int:
        async with db.transaction() as conn:
            return await tasks.submit(conn, SystemClock(), operator, params, None, is_production=True)

    try:
        task_id = with_database(settings_for(home, database_url), work)
    except BambooError as exc:
        raise fail(exc.message) from exc
    console.print(tasks.submission_message(task_id))


def _load(home: Path | None, database_url: str | None, task_id: int) -> TaskProgress:
    async def work(db: Database) -> TaskProgress | None:
        async with db.transaction(write=False) as conn:
            return await progress(conn, task_id)

    found = with_database(settings_for(home, database_url), work)
    if found is None:
        raise fail(f"task {task_id} not found")
    return found


@app.command()
def show(task_id: TaskId, home: HomeOption = None, database_url: DatabaseOption = None) -> None:
    """A task's status, input progress and jobs by status."""
    found = _load(home, database_url, task_id)
    table = Table(title=f"task {found.task_id}: {found.name}", show_header=False)
    table.add_row("status", found.status)
    table.add_row("owner", found.user_name)
    table.add_row(
        "inputs", f"{found.n_files_finished} finished, {found.n_files_failed} failed of {found.n_files}"
    )
    if found.error_dialog:
        table.add_row("message", found.error_dialog)
    jobs = Table("job status", "jobs")
    for status, count in sorted(found.jobs_by_status.items()):
        jobs.add_row(status, str(count))
    console.print(table)
    console.print(jobs)


@app.command()
def watch(
    task_id: TaskId,
    interval: Annotated[float, typer.Option(help="Seconds between looks.")] = 1.0,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds (0: never).")] = 0,
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Follow a task with a progress bar until it reaches a final status."""
    started = time.monotonic()
    found = _load(home, database_url, task_id)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        line = bar.add_task(found.status, total=found.n_files or None)
        while True:
            bar.update(
                line,
                description=f"{task_id} {found.status}",
                total=found.n_files or None,
                completed=found.n_files_finished + found.n_files_failed,
            )
            if found.is_final:
                break
            if timeout and time.monotonic() - started > timeout:
                raise fail(f"task {task_id} still {found.status} after {timeout:g} s", code=2)
            asyncio.run(asyncio.sleep(interval))
            found = _load(home, database_url, task_id)
    console.print(f"task {task_id} {found.status}")
    if found.status != "done":
        raise typer.Exit(1)


_OPERATOR = "bamboo-cli"
_LIST_LIMIT = 200


@app.command("list")
def list_tasks(
    status: Annotated[str | None, typer.Option(help="Only tasks in this status.")] = None,
    user: Annotated[str | None, typer.Option(help="Only tasks of this owner (compact user name).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Most tasks to list.")] = _LIST_LIMIT,
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """The newest tasks, with their status, owner, priority and site."""

    async def work(db: Database) -> list[dict]:
        async with db.transaction(write=False) as conn:
            return await tasks_db.listing(conn, status=status, user_name=user, limit=limit)

    rows = with_database(settings_for(home, database_url), work)
    table = Table("jediTaskID", "status", "owner", "priority", "site", "name")
    for row in rows:
        table.add_row(
            str(row["jediTaskID"]),
            row["status"] or "",
            row["userName"] or "",
            str(row["currentPriority"] if row["currentPriority"] is not None else ""),
            row["site"] or "",
            row["taskName"] or "",
        )
    console.print(table)


def _send(home: Path | None, database_url: str | None, task_id: int, name: str, comment: str) -> None:
    async def work(db: Database) -> commands.CommandResult:
        async with db.transaction() as conn:
            return await commands.register(
                conn, SystemClock(), task_id, name, comment, requester=_OPERATOR, production=True
            )

    result = with_database(settings_for(home, database_url), work)
    if result.code != commands.OK:
        raise fail(result.message)
    console.print(result.message)


@app.command()
def kill(task_id: TaskId, home: HomeOption = None, database_url: DatabaseOption = None) -> None:
    """Kill a task and its jobs."""
    _send(home, database_url, task_id, "kill", f"kill by {_OPERATOR}")


@app.command()
def finish(
    task_id: TaskId,
    soft: Annotated[bool, typer.Option(help="Let running jobs end instead of killing them.")] = False,
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Finish a task: no new jobs; it ends by what it processed."""
    _send(home, database_url, task_id, "finish", f"{'soft ' if soft else ''}finish by {_OPERATOR}")


@app.command()
def pause(task_id: TaskId, home: HomeOption = None, database_url: DatabaseOption = None) -> None:
    """Pause a task: no new jobs and its queued jobs are throttled."""
    _send(home, database_url, task_id, "pause", f"pause by {_OPERATOR}")


@app.command()
def resume(task_id: TaskId, home: HomeOption = None, database_url: DatabaseOption = None) -> None:
    """Resume a paused or throttled task."""
    _send(home, database_url, task_id, "resume", f"resume by {_OPERATOR}")


@app.command()
def reassign(
    task_id: TaskId,
    site: Annotated[str, typer.Option(help="The queue to run the task's jobs at.")],
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Reassign a task to a queue; its jobs are made again there."""
    _send(home, database_url, task_id, "reassign", f"site:{site}:y")


@app.command()
def retry(task_id: TaskId, home: HomeOption = None, database_url: DatabaseOption = None) -> None:
    """Retry a finished or failed task: its failed inputs get new attempts."""

    async def work(db: Database) -> commands.CommandResult:
        async with db.transaction() as conn:
            return await commands.retry(
                conn, SystemClock(), task_id, [], requester=_OPERATOR, production=True
            )

    result = with_database(settings_for(home, database_url), work)
    if result.code != commands.OK:
        raise fail(result.message)
    console.print(result.message)


@app.command()
def priority(
    task_id: TaskId,
    value: Annotated[int, typer.Argument(help="The new current priority of the task and its queued jobs.")],
    home: HomeOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Change a task's priority; its jobs not yet running follow."""

    async def work(db: Database) -> task_admin.Outcome:
        async with db.transaction() as conn:
            return await task_admin.change_priority(conn, task_id, value)

    outcome = with_database(settings_for(home, database_url), work)
    if not outcome.ok:
        raise fail(outcome.message or "priority not changed")
    console.print(outcome.message)
