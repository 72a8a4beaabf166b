"""Runs the background agents: each a loop of "do a batch of work in one transaction".

An agent that did work runs again at once; an idle one sleeps for its period or until woken. The
API wakes agents in the same process when it creates work (a submission wakes the refiner, a final
pilot report the finaliser), and agents wake the ones downstream of them, so a new task has
activated jobs well within a second. On PostgreSQL the same announcements reach agents in other
processes (``bamboo agents``, the agents process of a multi-worker server) through LISTEN/NOTIFY;
on SQLite those notice new work within their period. Everything they do is in
database rows, so several agent processes on PostgreSQL share the work through row locks.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from bamboo.config import Settings
from bamboo.db import notify
from bamboo.db.engine import UNAVAILABLE_ERRORS, Database
from bamboo.logic import (
    archive,
    async_requests,
    carousel,
    commands,
    event_picking,
    feeder,
    file_recovery,
    files,
    finaliser,
    finisher,
    generator,
    job_watchdog,
    machines,
    pilot_streaming,
    rebrokerage,
    refiner,
    task_watchdog,
    workflows,
)
from bamboo.logic.catalog import DataManagement
from bamboo.logic.clock import Clock
from bamboo.storage import StorageError, file_store

log = logging.getLogger(__name__)

ERROR_BACKOFF_SECONDS = 5.0
# Its rules count in minutes to days (domain.md §2.4).
TASK_WATCHDOG_PERIOD_SECONDS = 60.0


@dataclass
class AgentContext:
    db: Database
    clock: Clock
    dm: DataManagement
    rng: random.Random = field(default_factory=random.Random)
    # Read from the environment unless given: the job watchdog's timeouts and period come from it.
    settings: Settings = field(default_factory=Settings)
    # This process in the machines table; needed by the PROCESS_AGENTS only.
    machine: machines.Machine | None = None

    @property
    def this_machine(self) -> machines.Machine:
        if self.machine is None:
            raise RuntimeError("this agent needs the context's machine")
        return self.machine


@dataclass(frozen=True)
class Agent:
    """One background loop.

    Attributes:
        name: how logs and wake-ups refer to it.
        step: one batch of work in one transaction; returns how much it did.
        wakes: agents that may have work once this one did some.
        period: seconds an idle step waits before the next, when longer than the runner's period
            (time-based rules need not be looked at every second).
        period_setting: the Settings field holding that period, when it is configurable.
    """

    name: str
    step: Callable[[AgentContext], Awaitable[int]]
    wakes: tuple[str, ...] = ()
    period: float | None = None
    period_setting: str | None = None


async def _refine(ctx: AgentContext) -> int:
    async with ctx.db.transaction() as conn:
        return await refiner.refine_registered(conn, ctx.clock, ctx.dm, public_url=ctx.settings.public_url)


async def _generate(ctx: AgentContext) -> int:
    async with ctx.db.transaction() as conn:
        return await generator.generate(
            conn,
            ctx.clock,
            ctx.rng,
            pilot_activity=timedelta(hours=ctx.settings.brokerage_pilot_activity_hours),
        )


async def _finalise(ctx: AgentContext) -> int:
    async with ctx.db.transaction() as conn:
        return await finaliser.finalise(conn, ctx.clock, ctx.dm)


async def _finish(ctx: AgentContext) -> int:
    async with ctx.db.transaction() as conn:
        return await finisher.finish_tasks(conn, ctx.clock)


async def _execute_commands(ctx: AgentContext) -> int:
    async with ctx.db.transaction() as conn:
        return await commands.execute(conn, ctx.clock)


async def _feed(ctx: AgentContext) -> int:
    async with ctx.db.transaction() as conn:
        return await feeder.feed(conn, ctx.clock, ctx.dm)


async def _watch_tasks(ctx: AgentContext) -> int:
    async with ctx.db.transaction() as conn:
        return await task_watchdog.watch(conn, ctx.clock)


async def _watch_jobs(ctx: AgentContext) -> int:
    timeouts = job_watchdog.JobTimeouts.from_settings(ctx.settings)
    limits = rebrokerage.RebrokerageLimits.from_settings(ctx.settings)
    async with ctx.db.transaction() as conn:
        done = await job_watchdog.watch(conn, ctx.clock, timeouts)
        return done + await rebrokerage.watch(conn, ctx.clock, limits)


async def _archive(ctx: AgentContext) -> int:
    policy = archive.ArchivePolicy.from_settings(ctx.settings)
    async with ctx.db.transaction() as conn:
        return await archive.archive(conn, ctx.clock, policy)


async def _stage_inputs(ctx: AgentContext) -> int:
    backend = carousel.backend_for(ctx.settings)
    policy = carousel.CarouselPolicy.from_settings(ctx.settings)
    async with ctx.db.transaction() as conn:
        return await carousel.cycle(conn, ctx.clock, backend, policy)


async def _stream_pilots(ctx: AgentContext) -> int:
    period = timedelta(seconds=ctx.settings.pilot_streaming_period_seconds)
    async with ctx.db.transaction() as conn:
        return await pilot_streaming.stream(conn, ctx.clock, period)


async def _recover_files(ctx: AgentContext) -> int:
    async with ctx.db.transaction() as conn:
        result = await file_recovery.work(conn, ctx.clock)
    # Written once the step has committed, so a step rolled back leaves no lines of its own behind.
    for name, lines in result.log_lines.items():
        try:
            await file_recovery.append_jedilog(file_store(ctx.settings), name, lines)
        except (OSError, StorageError) as exc:
            log.warning("file recovery: cannot write log %s: %s", name, exc)
    return result.progress


async def _pick_events(ctx: AgentContext) -> int:
    async with ctx.db.transaction() as conn:
        return await event_picking.resolve(conn, ctx.clock, ctx.dm)


async def _heartbeat(ctx: AgentContext) -> int:
    limits = async_requests.AgentLimits.from_settings(ctx.settings)
    async with ctx.db.transaction() as conn:
        forget_after = timedelta(hours=ctx.settings.machine_forget_hours)
        await machines.heartbeat(conn, ctx.clock, ctx.this_machine, forget_after)
        await async_requests.purge(conn, ctx.clock, limits)
    # Never "did work": the next beat comes after the heartbeat period.
    return 0


async def _serve_async_requests(ctx: AgentContext) -> int:
    """Recover requests of dead machines, then run one request of this machine, if any.

    Running is outside any transaction (a sleep_echo may last a minute): the claim and the outcome
    are committed separately, and a process killed in between is recovered by the others.
    """
    machine = ctx.this_machine
    limits = async_requests.AgentLimits.from_settings(ctx.settings)
    async with ctx.db.transaction() as conn:
        recovered = await async_requests.recover_lost(conn, ctx.clock, limits)
        work = await async_requests.take_work(conn, ctx.clock, machine, limits)
    if work is None:
        return recovered
    outcome = await async_requests.perform(work, limits)
    async with ctx.db.transaction() as conn:
        await async_requests.record(conn, ctx.clock, machine, work, outcome)
    return 1


async def _advance_workflows(ctx: AgentContext) -> int:
    async with ctx.db.transaction() as conn:
        return await workflows.advance_batch(conn, ctx.clock)


async def _clean_file_cache(ctx: AgentContext) -> int:
    store = file_store(ctx.settings)
    policy = files.CleanerPolicy.from_settings(ctx.settings)
    async with ctx.db.transaction() as conn:
        batch = await files.expired(conn, store, ctx.clock, policy)
        forgotten = await files.forget(conn, batch)
    # The files go once their rows are gone: a crash in between leaves expired files, which the
    # next step finds again, never rows naming deleted files.
    return forgotten + await files.remove_files(store, batch, ctx.clock)


AGENTS: tuple[Agent, ...] = (
    Agent("refiner", _refine, wakes=("generator", "carousel")),
    Agent("feeder", _feed, wakes=("generator", "finisher")),
    Agent("generator", _generate),
    Agent("finaliser", _finalise, wakes=("generator", "finisher", "commando", "feeder")),
    Agent("finisher", _finish, wakes=("refiner", "feeder", "workflow")),
    Agent("commando", _execute_commands, wakes=("generator", "finisher", "feeder")),
    Agent(
        "task_watchdog", _watch_tasks, wakes=("generator", "commando"), period=TASK_WATCHDOG_PERIOD_SECONDS
    ),
    # Failed jobs wait in holding for the finaliser; killed jobs' inputs for the generator.
    Agent(
        "job_watchdog",
        _watch_jobs,
        wakes=("finaliser", "generator"),
        period_setting="job_watchdog_period_seconds",
    ),
    # Moves old final jobs out of the tables dispatch and heartbeats read; wakes nobody.
    Agent("archiver", _archive, period_setting="job_archive_period_seconds"),
    # Lost-file recovery reopens tasks; event picking submits them.
    Agent("file_recovery", _recover_files, wakes=("generator", "commando")),
    Agent("event_picking", _pick_events, wakes=("refiner",)),
    # Stages tape inputs (requests the refiner queued) and resumes their tasks as files arrive.
    Agent("carousel", _stage_inputs, wakes=("feeder", "generator"), period_setting="carousel_period_seconds"),
    # Tells Harvester how many workers to submit where jobs wait; wakes nobody.
    Agent("pilot_streaming", _stream_pilots, period_setting="pilot_streaming_period_seconds"),
    # Submits the steps of workflows whose dependencies ended; the finisher wakes it.
    Agent("workflow", _advance_workflows, wakes=("refiner",)),
    # Expires cache files, JEDI logs and HPO checkpoints with their registry rows; wakes nobody.
    Agent("file_cleaner", _clean_file_cache, period_setting="file_cache_clean_period_seconds"),
)


# Agents every live process runs, whether or not it runs AGENTS: its heartbeat in the machines
# table, and the async_process requests sent to it (logic/machines.py, logic/async_requests.py).
PROCESS_AGENTS: tuple[Agent, ...] = (
    Agent("machine_heartbeat", _heartbeat, period_setting="machine_heartbeat_seconds"),
    Agent(async_requests.AGENT, _serve_async_requests),
)


class AgentRunner:
    """Schedules the agents of one process."""

    def __init__(self, context: AgentContext, agents: Sequence[Agent] = AGENTS, period: float = 1.0) -> None:
        self.context = context
        self.agents = {agent.name: agent for agent in agents}
        self.period = period
        self._events = {name: asyncio.Event() for name in self.agents}
        self._tasks: list[asyncio.Task[None]] = []

    def wake(self, name: str) -> None:
        event = self._events.get(name)
        if event is not None:
            event.set()

    async def run_once(self, name: str) -> int:
        """One step of one agent, waking its downstream agents if it did work."""
        agent = self.agents[name]
        done = await agent.step(self.context)
        if done:
            for downstream in agent.wakes:
                self.wake(downstream)
        return done

    async def drain(self, max_rounds: int = 1000) -> None:
        """Run every agent until none has work left (tests drive the agents this way)."""
        for _ in range(max_rounds):
            progress = 0
            for name in self.agents:
                progress += await self.run_once(name)
            if not progress:
                return
        raise RuntimeError("agents still busy after the round limit")

    def start(self) -> None:
        for name in self.agents:
            self._tasks.append(asyncio.create_task(self._loop(name), name=f"agent-{name}"))
        if not self.context.db.is_sqlite:
            url = self.context.db.url.render_as_string(hide_password=False)
            self._tasks.append(asyncio.create_task(notify.listen(url, self.wake), name="agent-wakeups"))
        log.info("agents started: %s", ", ".join(self.agents))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _loop(self, name: str) -> None:
        event = self._events[name]
        agent = self.agents[name]
        configured = getattr(self.context.settings, agent.period_setting) if agent.period_setting else 0.0
        idle_period = max(self.period, agent.period or 0.0, configured)
        while True:
            event.clear()
            try:
                done = await self.run_once(name)
            except asyncio.CancelledError:
                raise
            except UNAVAILABLE_ERRORS as exc:
                log.warning(
                    "agent %s: database unavailable (%s); retrying in %.0f s",
                    name,
                    exc,
                    ERROR_BACKOFF_SECONDS,
                )
                await asyncio.sleep(ERROR_BACKOFF_SECONDS)
                continue
            except Exception:
                log.exception("agent %s failed; retrying in %.0f s", name, ERROR_BACKOFF_SECONDS)
                await asyncio.sleep(ERROR_BACKOFF_SECONDS)
                continue
            if done:
                continue
            try:
                await asyncio.wait_for(event.wait(), timeout=idle_period)
            except TimeoutError:
                pass
