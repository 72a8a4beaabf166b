"""The built-in worker's job runs against the real app and database (both backends): what it
reports when the payload succeeds, overruns its time limit, or the server kills the job."""

from __future__ import annotations

import asyncio
import tarfile
import zlib
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from bamboo.agents.runner import AgentRunner
from bamboo.db import jobs as jobs_db
from bamboo.logic import catalog
from bamboo.logic.clock import SystemClock
from bamboo.storage.datasets import DataStorage, adler32_of
from bamboo.worker import report
from bamboo.worker.client import WORKER_USER, PilotClient, TokenSource
from bamboo.worker.job import JobRun, WorkerIdentity
from tests.api.conftest import ApiServer
from tests.api.test_task_flow import submit, world
from tests.tasks import NO_INPUT_TASK, QUEUE, input_task

__all__ = ["world"]


def pilot_client(api: ApiServer) -> PilotClient:
    tokens = TokenSource(
        lambda lifetime: api.home.issuer.issue_token(
            user=WORKER_USER, vo="bamboo", role="production", lifetime=lifetime
        )
    )
    transport = httpx.ASGITransport(app=api.app, client=("127.0.0.1", 50000))
    return PilotClient("https://testserver", tokens, "bamboo.production", True, transport=transport)


async def run_one(
    world: tuple[ApiServer, AgentRunner],
    tmp_path: Path,
    command: str,
    heartbeat: float = 60,
    stopping: asyncio.Event | None = None,
    transformation: str | None = None,
    task: dict[str, Any] | None = None,
    **job: Any,
) -> tuple[dict[str, Any], DataStorage, dict[str, Any]]:
    """Submit a one-job task, give its job the payload ``/bin/sh -c '<command>'`` (or
    ``<transformation> <command>``) and the other ``job`` columns, run it with the worker, finalise it.

    Returns the job as the worker got it, the storage, and the job's row afterwards."""
    api, runner = world
    task_id = await submit(api, task or {**NO_INPUT_TASK, "nEvents": 1, "nEventsPerJob": 1})
    await runner.drain()
    async with api.state.db.transaction() as conn:
        (panda_id,) = await jobs_db.ids_of_task(conn, task_id)
        parameters = command if transformation else f"-c '{command}'"
        await jobs_db.update(
            conn, panda_id, transformation=transformation or "/bin/sh", jobParameters=parameters, **job
        )
    client = pilot_client(api)
    storage = DataStorage(tmp_path / "storage")
    with ThreadPoolExecutor(4) as executor:
        try:
            (acquired,) = await client.acquire_jobs(QUEUE, 1, "wn01")
            run = JobRun(
                acquired,
                client=client,
                storage=storage,
                work_dir=tmp_path / "work",
                identity=WorkerIdentity(QUEUE, "wn01", "bamboo-worker-test", heartbeat),
                executor=executor,
                stopping=stopping or asyncio.Event(),
            )
            await asyncio.wait_for(run.run(), 60)
        finally:
            await client.close()
    await runner.drain()
    async with api.state.db.transaction(write=False) as conn:
        row = (await jobs_db.get_many(conn, [acquired["PandaID"]]))[acquired["PandaID"]]
    return acquired, storage, row


async def test_a_finished_payload_leaves_its_log_tarball_registered(world, tmp_path: Path) -> None:
    job, storage, row = await run_one(world, tmp_path, "echo hello from the payload")
    assert (row["jobStatus"], row["pilotErrorCode"], row["transExitCode"]) == ("finished", 0, "0")
    assert row["stdout"] == "hello from the payload\n"
    assert "packing the log tarball" in row["pilot_log"]
    tarball = storage.path(job["scopeLog"], job["logFile"])
    with tarfile.open(tarball) as archive:
        stdout = archive.extractfile(f"tarball_PandaJob_{job['PandaID']}/payload.stdout")
        assert stdout is not None and stdout.read() == b"hello from the payload\n"
    api, _ = world
    async with api.state.db.transaction(write=False) as conn:
        (registered,) = await catalog.LocalCatalog().list_files(conn, NO_INPUT_TASK["log"]["dataset"]) or []
    assert registered.lfn == job["logFile"]
    assert (registered.fsize, registered.checksum) == (tarball.stat().st_size, f"ad:{adler32_of(tarball)}")
    assert registered.guid == job["logGUID"]
    assert not list((tmp_path / "work").iterdir())


async def test_a_failing_payload_reports_its_exit_code(world, tmp_path: Path) -> None:
    _, _, row = await run_one(world, tmp_path, "echo broken >&2; exit 7")
    assert (row["jobStatus"], row["transExitCode"], row["exeErrorCode"]) == ("failed", "7", 7)
    assert (row["pilotErrorCode"], row["pilotErrorDiag"]) == (
        report.PAYLOAD_FAILED,
        "payload exited with code 7",
    )


async def test_a_payload_past_its_walltime_is_killed(world, tmp_path: Path) -> None:
    _, _, row = await run_one(world, tmp_path, "sleep 60", maxWalltime=1)
    assert (row["jobStatus"], row["pilotErrorCode"]) == ("failed", report.REACHED_TIME_LIMIT)
    assert row["pilotErrorDiag"] == "payload ran past its time limit of 1 s"


@pytest.mark.parametrize("command", ["tobekilled", "softkill"])
async def test_the_server_command_stops_the_payload(world, tmp_path: Path, command: str) -> None:
    """The command is read from the heartbeat's answer; the payload is killed and the job failed
    with the pilot's "killed by panda server"."""
    api, _ = world

    async def order(panda_id: int) -> None:
        async with api.state.db.transaction() as conn:
            await jobs_db.update(conn, panda_id, commandToPilot=command)

    ordering = asyncio.create_task(when_running(api, order))
    _, _, row = await run_one(world, tmp_path, "sleep 60", heartbeat=0.2)
    await ordering
    assert (row["jobStatus"], row["pilotErrorCode"]) == ("failed", report.PANDA_KILL)
    assert command in row["pilotErrorDiag"]


async def test_a_stopped_worker_kills_the_payload_and_reports_the_job_failed(world, tmp_path: Path) -> None:
    api, _ = world
    stopping = asyncio.Event()

    async def stop(_panda_id: int) -> None:
        stopping.set()

    stopper = asyncio.create_task(when_running(api, stop))
    _, _, row = await run_one(world, tmp_path, "sleep 60", stopping=stopping)
    await stopper
    assert (row["jobStatus"], row["pilotErrorCode"]) == ("failed", report.KILLED_BY_SIGTERM)
    assert row["pilotErrorDiag"] == "the worker was stopped (SIGTERM)"


async def when_running(api: ApiServer, action: Callable[[int], Awaitable[None]]) -> None:
    """Call ``action`` with the PandaID of the first job reported running."""
    while True:
        async with api.state.db.transaction(write=False) as conn:
            running = await jobs_db.with_status(conn, "running", 1)
        if running:
            await action(running[0]["PandaID"])
            return
        await asyncio.sleep(0.05)


def test_tokens_are_renewed_when_half_their_life_is_over(monkeypatch: pytest.MonkeyPatch) -> None:
    minted: list[timedelta] = []
    source = TokenSource(lambda lifetime: minted.append(lifetime) or f"token{len(minted)}")
    assert source.token() == source.token() == "token1"
    clock = [0.0]
    monkeypatch.setattr("bamboo.worker.client.time.monotonic", lambda: clock[0])
    source = TokenSource(lambda lifetime: minted.append(lifetime) or f"token{len(minted)}")
    assert source.token() == "token2"
    clock[0] = 6 * 3600 + 1
    assert source.token() == "token3"


async def test_a_url_transformation_is_downloaded_and_run_with_the_job_parameters(
    world, tmp_path: Path
) -> None:
    api, _ = world
    cache = api.state.settings.effective_cache_dir
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "echo-args.sh").write_text('#!/bin/sh\necho "args: $@"\n')
    url = "https://testserver/cache/echo-args.sh"
    job, _, row = await run_one(world, tmp_path, "one 'two three'", transformation=url)
    assert (job["transformation"], job["jobPars"]) == (url, "one 'two three'")
    assert (row["jobStatus"], row["stdout"]) == ("finished", "args: one two three\n")


async def test_a_transformation_that_cannot_be_downloaded_fails_the_job(world, tmp_path: Path) -> None:
    _, _, row = await run_one(world, tmp_path, "x", transformation="https://testserver/cache/missing.sh")
    assert (row["jobStatus"], row["pilotErrorCode"]) == ("failed", report.TRANSFORMATION_DOWNLOAD_FAILED)
    assert "HTTP 404" in row["pilotErrorDiag"]


INPUTS = "user.testuser.worker.inputs"


async def stored_inputs(api: ApiServer, tmp_path: Path, stored: dict[str, bytes]) -> None:
    """Register a.txt and b.txt (content a and b) and store ``stored`` under their names."""
    files = []
    for name, content in (("a.txt", b"a"), ("b.txt", b"b")):
        files.append(
            catalog.CatalogFile(lfn=name, guid=name, fsize=1, checksum=f"ad:{zlib.adler32(content):08x}")
        )
    async with api.state.db.transaction() as conn:
        await catalog.LocalCatalog().register_files(conn, SystemClock(), INPUTS, files)
    storage = DataStorage(tmp_path / "storage")
    for name, content in stored.items():
        source = tmp_path / name
        source.write_bytes(content)
        storage.put(source, "user.testuser", name)


@pytest.mark.parametrize(
    ("stored", "code", "diag"),
    [
        ({"a.txt": b"a"}, report.MISSING_INPUT_FILE, "user.testuser:b.txt is not in the local storage"),
        ({"a.txt": b"a", "b.txt": b"c"}, report.INPUT_CHECKSUM_MISMATCH, "b.txt: adler32 differs"),
        ({"a.txt": b"a", "b.txt": b"bb"}, report.STAGE_IN_FAILED, "b.txt: size differs"),
    ],
)
async def test_inputs_are_staged_in_only_as_the_catalog_describes_them(
    world, tmp_path: Path, stored: dict[str, bytes], code: int, diag: str
) -> None:
    api, _ = world
    await stored_inputs(api, tmp_path, stored)
    task = input_task(INPUTS, "user.testuser.worker.staging", n_files_per_job=2)
    _, _, row = await run_one(world, tmp_path, "true", task=task)
    assert (row["jobStatus"], row["pilotErrorCode"]) == ("failed", code)
    assert diag in row["pilotErrorDiag"]


async def test_an_output_the_payload_did_not_write_fails_the_job(world, tmp_path: Path) -> None:
    api, _ = world
    await stored_inputs(api, tmp_path, {"a.txt": b"a", "b.txt": b"b"})
    task = input_task(INPUTS, "user.testuser.worker.outputs", n_files_per_job=2)
    job, _, row = await run_one(world, tmp_path, "cat a.txt b.txt", task=task)
    assert (row["jobStatus"], row["pilotErrorCode"]) == ("failed", report.MISSING_OUTPUT_FILE)
    (output,) = [lfn for lfn in job["outFiles"].split(",") if lfn != job["logFile"]]
    assert row["pilotErrorDiag"] == f"output {output} was not produced"
    assert row["stdout"] == "ab"
