"""async_process requests (api-v1.md §2.14): grep the server's log files, or sleep and echo.

A request is submitted through the API and executed by the ``async_requests`` agent, which runs in
every live Bamboo process (see ``logic/machines.py``):

* grep targets one named machine, or every live machine of a service; the list of expected
  machines is fixed at submission and each gets a pending result row that only it runs.
* sleep_echo runs on any one machine of its service: the first to claim the request (a
  conditional UPDATE on the unclaimed request) runs it.

Running happens outside any transaction (a sleep may last a minute): the agent claims in one
transaction, runs, and records the outcome in another. A process killed in between leaves its row
``running``; once its heartbeat is older than ``machine_alive_seconds`` any live process fails the
row. A sleep_echo is then released for another claim, up to ``async_request_max_attempts`` claims
in all; a grep row is not retried, since only the dead process could have run it (a restarted
process is a new machine).

grep: the pattern is an RE2 regular expression (linear time, no back-references or look-arounds,
so no pattern can make the search take exponential time), at most ``MAX_PATTERN_CHARS`` long. The
file is ``<log_dir>/<log_filename>`` on the machine, read with gzip when its name ends in ``.gz``.
Matching lines are kept up to ``async_grep_max_lines`` lines and ``async_grep_max_bytes`` bytes, and
the search stops after ``async_grep_timeout_seconds``; either limit marks the result truncated.
Return codes are grep's: 0 lines found, 1 none, 2 the file could not be searched (then the result
is ``failed``, the reason in ``error_msg`` and ``stderr``).
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
import uuid
import zlib
from collections.abc import Collection
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import re2
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.config import Settings
from bamboo.db import async_requests as requests_db
from bamboo.db import notify
from bamboo.logic import machines
from bamboo.logic.clock import Clock
from bamboo.logic.errors import BambooError, InvalidInput, NotFound

log = logging.getLogger(__name__)

AGENT = "async_requests"
GREP = "grep"
SLEEP_ECHO = "sleep_echo"
# Who may read a request's results: its requester, also production callers, or every caller.
OWNER = "owner"
PRODUCTION = "production"
ANYONE = "anyone"

MAX_PATTERN_CHARS = 1000
MAX_LOG_FILENAME_CHARS = 255
MAX_MACHINE_NAME_CHARS = 320
MAX_MESSAGE_CHARS = 100
MAX_SECONDS = 60
# Longest piece of a line read at once: a longer line is matched piece by piece.
MAX_LINE_BYTES = 64 * 1024
# Lost rows one agent step recovers.
RECOVERY_BATCH = 100

_RE2_OPTIONS = re2.Options()
# A refused pattern is answered to the caller; RE2 need not also write it to stderr.
_RE2_OPTIONS.log_errors = False


@dataclass(frozen=True, slots=True)
class AgentLimits:
    """The settings the agent works by."""

    alive_for: timedelta
    max_attempts: int
    retention: timedelta
    log_dir: Path | None
    max_lines: int
    max_bytes: int
    timeout_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> AgentLimits:
        return cls(
            alive_for=timedelta(seconds=settings.machine_alive_seconds),
            max_attempts=settings.async_request_max_attempts,
            retention=timedelta(days=settings.async_request_retention_days),
            log_dir=settings.log_dir,
            max_lines=settings.async_grep_max_lines,
            max_bytes=settings.async_grep_max_bytes,
            timeout_seconds=settings.async_grep_timeout_seconds,
        )


@dataclass(frozen=True, slots=True)
class Work:
    """A request this machine has started."""

    request_id: str
    kind: str
    parameters: dict[str, Any]
    attempt: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended, as the result row stores it."""

    status: str
    result: str | None
    truncated: bool
    error_msg: str | None
    stderr: str
    return_code: int


# --- submission -------------------------------------------------------------------------------


async def submit_grep(
    conn: AsyncConnection,
    clock: Clock,
    *,
    requester: str,
    allowed: Collection[str],
    pattern: str,
    log_filename: str,
    service_name: str | None,
    machine_name: str | None,
    alive_for: timedelta,
) -> str:
    """Record a grep request for one machine or every live machine of a service; its request id."""
    if requester not in allowed:
        raise BambooError(f"'{requester}' is not authorized")
    if bool(service_name) == bool(machine_name):
        raise InvalidInput("exactly one of service_name or machine_name must be provided")
    check_log_filename(log_filename)
    if len(pattern) > MAX_PATTERN_CHARS:
        raise InvalidInput(f"invalid pattern: must be at most {MAX_PATTERN_CHARS} characters")
    try:
        compile_pattern(pattern)
    except re2.error as exc:
        raise InvalidInput(
            "invalid pattern: not an RE2 regular expression (no back-references or look-arounds)"
        ) from exc
    if machine_name:
        if len(machine_name) > MAX_MACHINE_NAME_CHARS:
            raise InvalidInput(f"invalid machine_name: must be at most {MAX_MACHINE_NAME_CHARS} characters")
        # As upstream, a named machine is taken as it is: if it is not alive, the agents of the
        # live machines fail its row at once.
        expected = [machine_name]
    else:
        assert service_name is not None
        expected = await _alive_or_refuse(conn, clock, service_name, alive_for)
    return await _insert(
        conn,
        clock,
        kind=GREP,
        requester=requester,
        access=OWNER,
        parameters={"pattern": pattern, "log_filename": log_filename},
        service_name=service_name or None,
        machine_name=machine_name or None,
        expected=expected,
    )


async def submit_sleep_echo(
    conn: AsyncConnection,
    clock: Clock,
    *,
    requester: str,
    service_name: str,
    message: str,
    seconds: int,
    alive_for: timedelta,
) -> str:
    """Record a sleep_echo request that one live machine of the service will run; its request id."""
    if not service_name:
        raise InvalidInput("service_name must be provided")
    if len(message) > MAX_MESSAGE_CHARS:
        raise InvalidInput(f"invalid message: must be at most {MAX_MESSAGE_CHARS} characters")
    if not 0 <= seconds <= MAX_SECONDS:
        raise InvalidInput(f"invalid seconds: must be between 0 and {MAX_SECONDS}")
    await _alive_or_refuse(conn, clock, service_name, alive_for)
    return await _insert(
        conn,
        clock,
        kind=SLEEP_ECHO,
        requester=requester,
        access=PRODUCTION,
        parameters={"message": message, "seconds": seconds},
        service_name=service_name,
        machine_name=None,
        expected=[],
    )


def check_log_filename(name: str) -> None:
    """A bare ``panda-*.log`` / ``panda-*.gz`` name: nothing that could leave the log directory."""
    if "/" in name or "\\" in name or ".." in name or "\0" in name:
        raise InvalidInput("invalid log_filename: must not contain path separators")
    if not (name.startswith("panda-") and name.endswith((".log", ".gz"))):
        raise InvalidInput("invalid log_filename: must start with 'panda-' and end with '.log' or '.gz'")
    if len(name) > MAX_LOG_FILENAME_CHARS:
        raise InvalidInput(f"invalid log_filename: must be at most {MAX_LOG_FILENAME_CHARS} characters")


def compile_pattern(pattern: str) -> re2._Regexp:
    return re2.compile(pattern, options=_RE2_OPTIONS)


async def _alive_or_refuse(
    conn: AsyncConnection, clock: Clock, service: str, alive_for: timedelta
) -> list[str]:
    alive = await machines.alive_machines(conn, clock, service, alive_for)
    if not alive:
        raise BambooError(f"no alive machines found for service '{service}'")
    return alive


async def _insert(
    conn: AsyncConnection,
    clock: Clock,
    *,
    kind: str,
    requester: str,
    access: str,
    parameters: dict[str, Any],
    service_name: str | None,
    machine_name: str | None,
    expected: list[str],
) -> str:
    request_id = str(uuid.uuid4())
    await requests_db.insert_request(
        conn,
        request_id=request_id,
        kind=kind,
        requester=requester,
        access=access,
        parameters=parameters,
        service_name=service_name,
        machine_name=machine_name,
        expected_machines=expected,
        now=clock.now(),
    )
    await notify.announce(conn, AGENT)
    return request_id


# --- reading ----------------------------------------------------------------------------------


async def read_result(
    conn: AsyncConnection, *, request_id: str, reader: str, reader_is_production: bool
) -> dict[str, Any]:
    """The state of a request and its result rows, for a caller its access level lets read them.

    ``overall_status`` is complete when every expected machine has a done or failed row. A
    sleep_echo expects the machine that claimed it (none before the first claim, so pending).
    """
    request = await requests_db.get_request(conn, request_id)
    if request is None:
        raise NotFound(f"request_id '{request_id}' not found")
    access, requester = request["access"], request["requester"]
    allowed = access == ANYONE or reader == requester or (access == PRODUCTION and reader_is_production)
    if not allowed:
        raise BambooError(
            f"'{reader}' is not authorized to read results (access='{access}', requester='{requester}')"
        )
    rows = await requests_db.results_of(conn, request_id)
    if request["kind"] == SLEEP_ECHO:
        expected = [request["claimed_by"]] if request["claimed_by"] else []
    else:
        expected = list(request["expected_machines"])
    ended = {row["machine_name"] for row in rows if row["status"] in (requests_db.DONE, requests_db.FAILED)}
    complete = bool(expected) and set(expected) <= ended
    return {
        "overall_status": "complete" if complete else "pending",
        "expected_machines": expected,
        "results": [_result_row(row) for row in rows],
    }


def _result_row(row: Any) -> dict[str, Any]:
    return {
        "machine_name": row["machine_name"],
        "status": row["status"],
        "result": row["result"],
        "truncated": bool(row["truncated"]),
        "error_msg": row["error_msg"],
        "attempts": row["attempts"],
        "started_at": _moment(row["started_at"]),
        "finished_at": _moment(row["finished_at"]),
        "stderr": row["stderr"],
        "return_code": row["return_code"],
    }


def _moment(value: datetime | None) -> str | None:
    # Upstream sends str() of the database's naive UTC time: "2026-12-07 12:00:00".
    return None if value is None else str(value.astimezone(UTC).replace(tzinfo=None))


# --- the agent --------------------------------------------------------------------------------


async def recover_lost(conn: AsyncConnection, clock: Clock, limits: AgentLimits) -> int:
    """Fail the unfinished rows of machines that are no longer alive; release their sleep_echo
    requests for another claim while attempts are left. Returns how many rows were failed."""
    now = clock.now()
    failed = 0
    for row in await requests_db.lost_results(conn, now - limits.alive_for, RECOVERY_BATCH):
        machine = row["machine_name"]
        if row["kind"] == SLEEP_ECHO:
            attempts_left = limits.max_attempts - row["attempts"]
            reason = f"machine '{machine}' stopped heartbeating during attempt {row['attempts']}"
            if attempts_left <= 0:
                reason += f"; no attempt left of {limits.max_attempts}"
        else:
            reason = f"machine '{machine}' is not alive"
        if not await requests_db.fail_unfinished(conn, row["request_id"], machine, reason, now):
            continue
        failed += 1
        if row["kind"] == SLEEP_ECHO and attempts_left > 0 and row["claimed_by"] == machine:
            await requests_db.release_claim(conn, row["request_id"], machine)
    return failed


async def take_work(
    conn: AsyncConnection, clock: Clock, machine: machines.Machine, limits: AgentLimits
) -> Work | None:
    """Start the next request for this machine: a pending grep row first, else a sleep_echo claim."""
    now = clock.now()
    request_id = await requests_db.next_pending(conn, machine.name)
    if request_id is not None:
        attempt = await requests_db.start_pending(conn, request_id, machine.name, now)
        if attempt is not None:
            return await _work(conn, request_id, attempt)
    request_id = await requests_db.next_unclaimed(conn, SLEEP_ECHO, machine.service, machine.name)
    if request_id is not None:
        attempt = await requests_db.claim(conn, request_id, machine.name, limits.max_attempts, now)
        if attempt is not None:
            return await _work(conn, request_id, attempt)
    return None


async def _work(conn: AsyncConnection, request_id: str, attempt: int) -> Work:
    request = await requests_db.get_request(conn, request_id)
    assert request is not None
    return Work(request_id, request["kind"], dict(request["parameters"]), attempt)


async def perform(work: Work, limits: AgentLimits) -> Outcome:
    """Run a started request (no transaction is open meanwhile).

    An unexpected error fails the request rather than the agent: a row left running by a live
    machine would never be recovered.
    """
    try:
        if work.kind == SLEEP_ECHO:
            await asyncio.sleep(work.parameters["seconds"])
            return Outcome(requests_db.DONE, work.parameters["message"], False, None, "", 0)
        return await asyncio.to_thread(
            grep_log, limits, work.parameters["log_filename"], work.parameters["pattern"]
        )
    except Exception as exc:
        log.exception("async request %s failed", work.request_id)
        return _unsearchable(f"the request failed on this machine: {type(exc).__name__}")


async def record(
    conn: AsyncConnection, clock: Clock, machine: machines.Machine, work: Work, outcome: Outcome
) -> bool:
    """Store the outcome; False when the row was failed meanwhile (this machine taken for dead)."""
    return await requests_db.finish(
        conn, work.request_id, machine.name, work.attempt, asdict(outcome), clock.now()
    )


async def purge(conn: AsyncConnection, clock: Clock, limits: AgentLimits) -> int:
    """Delete the requests older than the retention and their results."""
    return await requests_db.delete_submitted_before(conn, clock.now() - limits.retention)


def grep_log(limits: AgentLimits, log_filename: str, pattern: str) -> Outcome:
    """Search ``<log_dir>/<log_filename>`` for lines matching ``pattern`` within the limits."""
    if limits.log_dir is None:
        return _unsearchable("log_dir is not configured on this machine")
    try:
        check_log_filename(log_filename)
        regex = compile_pattern(pattern)
    except (InvalidInput, re2.error) as exc:
        return _unsearchable(str(exc))
    directory = limits.log_dir.resolve()
    try:
        path = (directory / log_filename).resolve(strict=True)
    except OSError:
        return _unsearchable(f"log file '{log_filename}' not found")
    # A symbolic link may not lead out of the log directory.
    if path.parent != directory or not path.is_file():
        return _unsearchable(f"log file '{log_filename}' not found")
    deadline = time.monotonic() + limits.timeout_seconds
    found: list[str] = []
    size = 0
    truncated = False
    error_msg = None
    try:
        with gzip.open(path, "rb") if log_filename.endswith(".gz") else path.open("rb") as stream:
            while piece := stream.readline(MAX_LINE_BYTES):
                if time.monotonic() > deadline:
                    truncated = True
                    error_msg = f"search stopped after the time limit of {limits.timeout_seconds:g} s"
                    break
                line = piece.decode("utf-8", errors="replace").rstrip("\r\n")
                if regex.search(line) is None:
                    continue
                if len(found) >= limits.max_lines or size + len(piece) > limits.max_bytes:
                    truncated = True
                    break
                found.append(line)
                size += len(piece)
    except (OSError, EOFError, zlib.error) as exc:
        return _unsearchable(f"cannot read log file '{log_filename}': {exc}")
    return Outcome(requests_db.DONE, "\n".join(found), truncated, error_msg, "", 0 if found else 1)


def _unsearchable(reason: str) -> Outcome:
    return Outcome(requests_db.FAILED, None, False, reason, reason, 2)
