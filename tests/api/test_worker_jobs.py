"""The built-in worker's job runs against the real app and database (both backends): what it
reports when the payload succeeds, overruns its time limit, or the server kills the job."""

from __future__ import annotations

import asyncio
import tarfile
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
from bamboo.storage.datasets import DataStorage, adler32_of
from bamboo.worker import report
from bamboo.worker.client import WORKER_USER, PilotClient, TokenSource
from bamboo.worker.job import JobRun, WorkerIdentity
from tests.api.conftest import ApiServer
from tests.api.test_task_flow import submit, world
from tests.tasks import NO_INPUT_TASK, QUEUE

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
    **job: Any,
) -> tuple[dict[str, Any], DataStorage, dict[str, Any]]:
    """Submit a one-job task whose payload is ``command``, run it with the worker, finalise it.

    Returns the job as the worker got it, the storage, and the job's row afterwards."""
    api, runner = world
    await submit(api, {**NO_INPUT_TASK, "nEvents": 1, "nEventsPerJob": 1})
    await runner.drain()
    client = pilot_client(api)
    storage = DataStorage(tmp_path / "storage")
    with ThreadPoolExecutor(4) as executor:
        try:
            (acquired,) = await client.acquire_jobs(QUEUE, 1, "wn01")
            async with api.state.db.transaction() as conn:
                await jobs_db.update(
                    conn,
                    acquired["PandaID"],
                    transformation="/bin/sh",
                    jobParameters=f"-c '{command}'",
                    **job,
                )
            acquired = {**acquired, "transformation": "/bin/sh", "jobPars": f"-c '{command}'", **job}
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
