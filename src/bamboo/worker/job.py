"""One job on one slot: sandbox, stage-in, payload, heartbeats, stage-out, log tarball, final report.

The order is the pilot's: report ``starting``, stage the inputs in from the local storage
(checking size and Adler-32 against the job's description), fetch the transformation when it is
a URL, report ``running`` and run the payload, heartbeating every ``worker_heartbeat_seconds``
and obeying the answer's command; then stage the outputs out (a missing output fails the job),
pack the sandbox's logs into the job's log tarball and stage it out too (even for a failed job,
so its log can be read; only a finished job's files are registered, by the server's finaliser),
and send the final report with the output report. The sandbox is removed at the end.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import tarfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from bamboo.storage import StorageError
from bamboo.storage.datasets import DataStorage, adler32_of
from bamboo.worker import payload, report
from bamboo.worker.client import PilotClient, ServerError
from bamboo.worker.report import Failure, FileReport

log = logging.getLogger(__name__)
T = TypeVar("T")

# Commands of an update_job answer that end the payload: the server killed the job (tobekilled),
# asks it to stop softly (softkill; the worker has no events to finish, so it stops at once), or
# already ended it (alreadydone).
STOP_COMMANDS = {
    "tobekilled": "job killed by the server (tobekilled)",
    "softkill": "job soft-killed by the server (softkill)",
    "alreadydone": "job already ended on the server",
}
STDOUT_NAME = "payload.stdout"
STDERR_NAME = "payload.stderr"
WORKER_LOG_NAME = "worker.log"
# What the final report carries of the payload's stdout and of the worker's log for the job.
REPORTED_STDOUT_CHARS = 100_000
REPORTED_LOG_CHARS = 100_000
FINAL_REPORT_ATTEMPTS = 5
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class WorkerIdentity:
    queue: str
    node: str
    pilot_id: str
    heartbeat_seconds: float


class JobLog:
    """The worker's log lines about one job, also kept in the job's sandbox for its log tarball."""

    def __init__(self, panda_id: int, path: Path) -> None:
        self.panda_id = panda_id
        self.path = path

    def info(self, message: str) -> None:
        log.info("job %s: %s", self.panda_id, message)
        try:
            with self.path.open("a") as handle:
                handle.write(f"{datetime.now(UTC).strftime(_TIME_FORMAT)} {message}\n")
        except OSError as exc:
            # A full disk must not stop the job from being reported.
            log.warning("job %s: log line not kept in the sandbox: %s", self.panda_id, exc)


def _stamp(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime(_TIME_FORMAT)


def _split(job: dict[str, Any], key: str) -> list[str]:
    value = str(job.get(key) or "")
    return [] if value in ("", "NULL") else value.split(",")


class JobRun:
    """Runs one job to its final report."""

    def __init__(
        self,
        job: dict[str, Any],
        *,
        client: PilotClient,
        storage: DataStorage,
        work_dir: Path,
        identity: WorkerIdentity,
        executor: ThreadPoolExecutor,
        stopping: asyncio.Event,
    ) -> None:
        self.job = job
        self.panda_id = int(job["PandaID"])
        self.client = client
        self.storage = storage
        self.identity = identity
        self.executor = executor
        self.stopping = stopping
        self.sandbox = work_dir / f"PandaJob_{self.panda_id}_{job.get('attemptNr', 0)}"
        self.log: JobLog | None = None
        self.inputs: list[str] = []
        self.transformation_file: str | None = None
        self.outputs: list[FileReport] = []
        self.start_time: float | None = None
        self.exit_code: int | None = None
        self.cpu_seconds: float = 0.0
        self.max_rss_kb: int = 0

    async def _blocking(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    def _common(self) -> dict[str, Any]:
        return {
            "job_id": self.panda_id,
            "attempt_nr": self.job.get("attemptNr"),
            "site_name": self.identity.queue,
            "node": self.identity.node,
            "scheduler_id": "bamboo-worker",
            "pilot_id": self.identity.pilot_id,
            "core_count": self.job.get("coreCount") or 1,
        }

    async def _report(self, status: str, **fields: Any) -> str:
        """Send a report; the answer's command ('NULL' when the report could not be sent)."""
        try:
            answer = await self.client.update_job({**self._common(), "job_status": status, **fields})
        except ServerError as exc:
            self._log(f"report {status} not sent: {exc}")
            return "NULL"
        return str(answer.get("command") or "NULL")

    def _log(self, message: str) -> None:
        if self.log is not None:
            self.log.info(message)
        else:
            log.info("job %s: %s", self.panda_id, message)

    async def run(self) -> None:
        failure: Failure | None = None
        try:
            self.sandbox.mkdir(parents=True, exist_ok=False)
            self.log = JobLog(self.panda_id, self.sandbox / WORKER_LOG_NAME)
        except OSError as exc:
            failure = Failure(report.STAGE_IN_FAILED, f"cannot create the sandbox {self.sandbox}: {exc}")
        if failure is None:
            self._log(f"sandbox {self.sandbox}")
            command = await self._report("starting")
            failure = self._stop_failure(command) or await self._prepare()
        if failure is None:
            failure = await self._execute()
        if failure is None:
            failure = await self._stage_out_outputs()
        log_file = await self._stage_out_log()
        if failure is None and log_file is None and _split(self.job, "logFile"):
            failure = Failure(report.LOG_CREATION_FAILED, "the log tarball could not be made or stored")
        await self._final_report(failure, log_file)
        await self._blocking(shutil.rmtree, self.sandbox, True)

    def _stop_failure(self, command: str) -> Failure | None:
        for part in command.split(","):
            if part in STOP_COMMANDS:
                return Failure(report.PANDA_KILL, STOP_COMMANDS[part])
        return None

    async def _prepare(self) -> Failure | None:
        failure = await self._blocking(self._stage_in)
        if failure is not None:
            return failure
        transformation = str(self.job.get("transformation") or "")
        if payload.is_url(transformation):
            try:
                name = payload.transformation_file_name(transformation)
                body = await self.client.download(transformation)
                target = self.sandbox / name
                await self._blocking(target.write_bytes, body)
                target.chmod(0o755)
                self.transformation_file = name
                self._log(f"transformation {transformation} downloaded as {name}")
            except (ServerError, StorageError, OSError) as exc:
                return Failure(report.TRANSFORMATION_DOWNLOAD_FAILED, f"transformation not downloaded: {exc}")
        return None

    def _stage_in(self) -> Failure | None:
        lfns = _split(self.job, "inFiles")
        scopes = _split(self.job, "scopeIn")
        sizes = _split(self.job, "fsize")
        checksums = _split(self.job, "checksum")
        if len(scopes) != len(lfns):
            return Failure(report.STAGE_IN_FAILED, "the job's inFiles and scopeIn do not match")
        for index, (lfn, scope) in enumerate(zip(lfns, scopes, strict=True)):
            try:
                source = self.storage.path(scope, lfn)
                if not source.is_file():
                    return Failure(report.MISSING_INPUT_FILE, f"{scope}:{lfn} is not in the local storage")
                target = self.sandbox / lfn
                shutil.copyfile(source, target)
            except (StorageError, OSError) as exc:
                return Failure(report.STAGE_IN_FAILED, f"{scope}:{lfn} not staged in: {exc}")
            self.inputs.append(lfn)
            expected_size = sizes[index] if index < len(sizes) else ""
            if expected_size.isdigit() and target.stat().st_size != int(expected_size):
                return Failure(report.STAGE_IN_FAILED, f"{lfn}: size differs from the catalog's")
            expected = checksums[index] if index < len(checksums) else ""
            if expected.startswith("ad:") and adler32_of(target) != expected[3:]:
                return Failure(report.INPUT_CHECKSUM_MISMATCH, f"{lfn}: adler32 differs from the catalog's")
            self._log(f"staged in {scope}:{lfn}")
        return None

    async def _execute(self) -> Failure | None:
        try:
            command = payload.command_line(self.job)
        except (ValueError, StorageError) as exc:
            return Failure(report.PAYLOAD_FAILED, f"no payload to run: {exc}")
        limit = payload.time_limit_seconds(self.job)
        memory = payload.memory_limit_bytes(self.job)
        self._log(f"running {command!r} (time limit {limit or 'none'} s, memory limit {memory or 'none'} B)")
        answer = await self._report("running")
        stop = self._stop_failure(answer)
        if stop is not None:
            return stop
        env = payload.payload_environment(os.environ, self.job, self.identity.queue)
        self.start_time = time.time()
        with (self.sandbox / STDOUT_NAME).open("wb") as out, (self.sandbox / STDERR_NAME).open("wb") as err:
            # Popen in the event loop's thread, not an executor's: the launcher's parent-death
            # signal fires when the thread that forked it ends. Forking takes a millisecond.
            process = subprocess.Popen(  # noqa: S603, ASYNC220 - the job's own payload, by design
                payload.launcher_argv(command, memory),
                cwd=self.sandbox,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,
            )
        waiter = asyncio.ensure_future(self._blocking(os.wait4, process.pid, 0))
        stop_waiter = asyncio.ensure_future(self.stopping.wait())
        failure: Failure | None = None
        deadline = None if limit is None else time.monotonic() + limit
        next_beat = time.monotonic() + self.identity.heartbeat_seconds
        try:
            while not waiter.done():
                now = time.monotonic()
                wake = next_beat if deadline is None else min(next_beat, deadline)
                await asyncio.wait(
                    {waiter, stop_waiter}, timeout=max(wake - now, 0), return_when="FIRST_COMPLETED"
                )
                if waiter.done():
                    break
                if stop_waiter.done():
                    failure = Failure(report.KILLED_BY_SIGTERM, "the worker was stopped (SIGTERM)")
                elif deadline is not None and time.monotonic() >= deadline:
                    failure = Failure(
                        report.REACHED_TIME_LIMIT, f"payload ran past its time limit of {limit} s"
                    )
                elif time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.identity.heartbeat_seconds
                    failure = self._stop_failure(await self._report("running"))
                if failure is not None:
                    self._log(f"killing the payload: {failure.diag}")
                    _kill_group(process.pid)
                    break
            _, status, usage = await waiter
        finally:
            stop_waiter.cancel()
            if not waiter.done():
                _kill_group(process.pid)
                await asyncio.shield(waiter)
        process.returncode = status
        self.exit_code = (
            os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
        )
        self.cpu_seconds = usage.ru_utime + usage.ru_stime
        self.max_rss_kb = usage.ru_maxrss
        self._log(f"payload ended with {self.exit_code}")
        return failure or report.payload_failure(self.exit_code)

    async def _stage_out_outputs(self) -> Failure | None:
        return await self._blocking(self._stage_out_data)

    def _stage_out_data(self) -> Failure | None:
        log_lfn = str(self.job.get("logFile") or "")
        lfns = [lfn for lfn in _split(self.job, "outFiles") if lfn != log_lfn]
        scopes = _split(self.job, "scopeOut")
        if len(scopes) != len(lfns):
            return Failure(report.STAGE_OUT_FAILED, "the job's outFiles and scopeOut do not match")
        for lfn, scope in zip(lfns, scopes, strict=True):
            path = self.sandbox / lfn
            if not path.is_file():
                return Failure(report.MISSING_OUTPUT_FILE, f"output {lfn} was not produced")
            try:
                described = report.describe(path, lfn, str(uuid.uuid4()))
                self.storage.put(path, scope, lfn)
            except (StorageError, OSError) as exc:
                return Failure(report.STAGE_OUT_FAILED, f"output {lfn} not staged out: {exc}")
            self.outputs.append(described)
            self._log(f"staged out {scope}:{lfn} ({described.fsize} bytes, adler32 {described.adler32})")
        return None

    async def _stage_out_log(self) -> FileReport | None:
        if self.log is None:
            return None
        lfn = str(self.job.get("logFile") or "")
        scope = str(self.job.get("scopeLog") or "")
        if lfn in ("", "NULL") or not scope:
            return None
        guid = str(self.job.get("logGUID") or "")
        try:
            return await self._blocking(
                self._pack_log, lfn, scope, guid if guid not in ("", "NULL") else str(uuid.uuid4())
            )
        except (StorageError, OSError, tarfile.TarError) as exc:
            self._log(f"log tarball {lfn} not stored: {exc}")
            return None

    def _pack_log(self, lfn: str, scope: str, guid: str) -> FileReport:
        """The sandbox without its inputs, outputs and transformation, as ``tarball_PandaJob_<id>/``
        in the job's log file (tar + gzip), stored in the local storage."""
        skipped = {lfn, *self.inputs, *(item.lfn for item in self.outputs)}
        if self.transformation_file:
            skipped.add(self.transformation_file)
        tarball = self.sandbox.parent / f".{self.sandbox.name}.{lfn}"
        self._log(f"packing the log tarball {lfn}")
        try:
            with tarfile.open(tarball, "w:gz") as archive:
                for path in sorted(self.sandbox.iterdir()):
                    if path.name not in skipped:
                        archive.add(path, arcname=f"tarball_PandaJob_{self.panda_id}/{path.name}")
            described = report.describe(tarball, lfn, guid)
            self.storage.put(tarball, scope, lfn)
        finally:
            tarball.unlink(missing_ok=True)
        return described

    async def _final_report(self, failure: Failure | None, log_file: FileReport | None) -> None:
        files = [*self.outputs, *([log_file] if log_file is not None else [])]
        status = "failed" if failure is not None else "finished"
        fields: dict[str, Any] = {
            "job_output_report": report.output_report(files) if files else "",
            "end_time": _stamp(time.time()),
            "cpu_consumption_time": round(self.cpu_seconds),
            "cpu_consumption_unit": "s",
            "max_rss": self.max_rss_kb,
            "stdout": await self._blocking(_read_end, self.sandbox / STDOUT_NAME, REPORTED_STDOUT_CHARS),
        }
        if self.start_time is not None:
            fields["start_time"] = _stamp(self.start_time)
        if self.exit_code is not None:
            fields["trans_exit_code"] = self.exit_code
            fields["exe_error_code"] = self.exit_code
        if failure is not None:
            fields["pilot_error_code"] = failure.code
            fields["pilot_error_diag"] = failure.diag
            self._log(f"failed: {failure.code} {failure.diag}")
        else:
            # As the pilot: a finished job reports error code 0 rather than none.
            fields["pilot_error_code"] = 0
            self._log("finished")
        fields["pilot_log"] = await self._blocking(
            _read_end, self.sandbox / WORKER_LOG_NAME, REPORTED_LOG_CHARS
        )
        for attempt in range(1, FINAL_REPORT_ATTEMPTS + 1):
            try:
                answer = await self.client.update_job({**self._common(), "job_status": status, **fields})
            except ServerError as exc:
                log.warning("job %s: final report attempt %d failed: %s", self.panda_id, attempt, exc)
                await asyncio.sleep(min(2**attempt, 30))
                continue
            log.info("job %s reported %s (server says %s)", self.panda_id, status, answer.get("command"))
            return
        log.error("job %s: final report not sent; the server's watchdog will fail the job", self.panda_id)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _read_end(path: Path, limit: int) -> str:
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(size - limit, 0))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
