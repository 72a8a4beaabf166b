"""The worker's main loop: keep every slot busy with a job of the queue, until told to stop.

A free slot asks pilot/acquire_jobs for as many jobs as there are free slots; when the server has
none, the loop waits ``worker_poll_seconds`` or until a job ends, whichever comes first. SIGTERM or
SIGINT stops asking, kills the running payloads and reports their jobs failed (pilot error 1201),
then the worker exits. A worker killed with SIGKILL reports nothing: its payloads die with it
(``launcher.py``) and the server's heartbeat watchdog fails its jobs, which are retried.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bamboo import __version__
from bamboo.config import Settings
from bamboo.storage.datasets import DataStorage
from bamboo.worker.client import WORKER_USER, PilotClient, ServerError, TokenSource
from bamboo.worker.job import JobRun, WorkerIdentity

log = logging.getLogger("bamboo.worker")

MAX_SLOTS = 64
# How often a worker started by `bamboo serve --local-worker` checks that its server still runs.
_PARENT_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class WorkerOptions:
    queue: str
    url: str
    slots: int
    work_dir: Path
    node: str
    # Stop when this process (the server that started the worker) is gone.
    parent_pid: int | None = None


def _client(settings: Settings, url: str) -> PilotClient:
    from bamboo.home import prepare_home

    home = prepare_home(settings)
    vo = settings.local_token_vos[0]
    tokens = TokenSource(
        lambda lifetime: home.issuer.issue_token(
            user=WORKER_USER, vo=vo, role="production", lifetime=lifetime
        )
    )
    # The system's CAs as well as the home's: a transformation may come from a public web server.
    verify = ssl.create_default_context()
    verify.load_verify_locations(cafile=str(home.ca_file))
    return PilotClient(url, tokens, f"{vo}.production", verify)


async def run_worker(settings: Settings, options: WorkerOptions) -> None:
    """Run jobs of ``options.queue`` until SIGTERM or SIGINT (or the parent server's end)."""
    options.work_dir.mkdir(parents=True, exist_ok=True)
    client = _client(settings, options.url)
    storage = DataStorage(settings.effective_storage_dir)
    identity = WorkerIdentity(
        queue=options.queue,
        node=options.node,
        pilot_id=f"bamboo-worker-{os.getpid()}|local|bamboo|{__version__}",
        heartbeat_seconds=settings.worker_heartbeat_seconds,
    )
    # One thread per slot waits for its payload; the others copy files and compute checksums.
    executor = ThreadPoolExecutor(max_workers=2 * options.slots + 2, thread_name_prefix="worker")
    stopping = asyncio.Event()
    slot_freed = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    watcher = asyncio.create_task(_watch_parent(options.parent_pid, stopping)) if options.parent_pid else None
    running: set[asyncio.Task[None]] = set()

    def ended(task: asyncio.Task[None]) -> None:
        running.discard(task)
        slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("a job run crashed", exc_info=task.exception())

    log.info(
        "worker for queue %s on %s with %d slots, server %s",
        options.queue,
        options.node,
        options.slots,
        options.url,
    )
    try:
        while not stopping.is_set():
            free = options.slots - len(running)
            got = 0
            if free > 0:
                try:
                    jobs = await client.acquire_jobs(options.queue, free, options.node)
                except ServerError as exc:
                    log.warning("no jobs fetched: %s", exc)
                    jobs = []
                got = len(jobs)
                for job in jobs:
                    log.info("job %s acquired (attempt %s)", job["PandaID"], job.get("attemptNr"))
                    run = JobRun(
                        job,
                        client=client,
                        storage=storage,
                        work_dir=options.work_dir,
                        identity=identity,
                        executor=executor,
                        stopping=stopping,
                    )
                    task = asyncio.create_task(run.run())
                    running.add(task)
                    task.add_done_callback(ended)
            if got and got == free:
                continue
            slot_freed.clear()
            await _first(stopping.wait(), slot_freed.wait(), seconds=settings.worker_poll_seconds)
        log.info("stopping: %d running jobs are killed and reported failed", len(running))
        if running:
            await asyncio.gather(*running, return_exceptions=True)
    finally:
        if watcher is not None:
            watcher.cancel()
        await client.close()
        executor.shutdown(wait=False, cancel_futures=True)
    log.info("worker stopped")


async def _first(*waits: Coroutine[Any, Any, Any], seconds: float) -> None:
    """Until one of ``waits`` is over or ``seconds`` have passed."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


async def _watch_parent(parent_pid: int, stopping: asyncio.Event) -> None:
    # Nothing signals a parent's end to a process but its parent pid changing: polled.
    while os.getppid() == parent_pid:  # noqa: ASYNC110
        await asyncio.sleep(_PARENT_POLL_SECONDS)
    log.info("the server that started this worker is gone")
    stopping.set()
