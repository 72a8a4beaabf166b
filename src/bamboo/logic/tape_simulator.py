"""Staging backends: how the data carousel gets a tape-resident dataset onto disk.

:class:`StagingBackend` is the interface a DDM system implements; its four operations are the ones
a Rucio backend maps onto replication rules (``add_replication_rule`` with a source expression,
``get_replication_rule`` plus the dataset's lock states, ``delete_replication_rule`` / a short
lifetime, ``update_replication_rule`` for the lifetime and the source).

:class:`TapeSimulator` stands in for a tape system on a laptop and in tests. A rule recalls its
files one after the other: after ``delay`` seconds the first transfer starts, each attempt at a file
takes ``size / bandwidth`` seconds and fails with probability ``failure_rate``; a failed attempt is
retried at once, and a file whose ``max_attempts`` attempts all failed is stuck (given up). The
outcome of every attempt comes from a random generator seeded with (seed, rule, file, attempt), and
the rule's parameters are frozen when it is submitted, so the progress at any instant is a pure
function of the rule and the clock: deterministic under a FixedClock, nothing to lose when a process
dies. Files staged become disk copies in the catalog, as a real storage system's replicas appear.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.config import Settings
from bamboo.db import catalog as catalog_db
from bamboo.logic.catalog import LocalCatalog
from bamboo.logic.clock import Clock
from bamboo.logic.errors import BambooError

# Rule states, as Rucio names them.
REPLICATING = "REPLICATING"
OK = "OK"
STUCK = "STUCK"
_CANCELLED = "CANCELLED"
# A cancelled rule lingers this long before it is gone (domain.md §9.3: "expired in 5 s").
CANCEL_GRACE = timedelta(seconds=5)
_RULE_NAMESPACE = uuid.UUID("5b0f8a4e-63c4-4d55-9a55-2f3d51c0a7e1")


@dataclass(frozen=True, slots=True)
class RuleProgress:
    """Where a replication rule stands.

    Attributes:
        state: ``REPLICATING`` while a file is in flight, ``OK`` when every file is on disk,
            ``STUCK`` when every file is settled and some were given up.
        staged: LFNs with a disk copy at the destination (locks OK), in catalog order.
        stuck: LFNs whose transfers failed every attempt.
        failed_attempts: failed transfer attempts so far, retried ones included.
        staged_bytes: the size of the staged files.
    """

    state: str
    staged: tuple[str, ...]
    stuck: tuple[str, ...]
    failed_attempts: int
    staged_bytes: int


class StagingError(BambooError):
    """The staging backend refused an operation."""


class StagingBackend(Protocol):
    async def submit_rule(
        self,
        conn: AsyncConnection,
        clock: Clock,
        dataset: str,
        destination: str,
        source: str | None,
        lifetime: timedelta,
    ) -> str:
        """Ask for ``dataset`` to be copied from tape (``source``, or any copy when None) to the
        disk RSE ``destination``; returns the rule id."""
        ...

    async def poll_rule(self, conn: AsyncConnection, clock: Clock, rule_id: str) -> RuleProgress:
        """The rule's progress now."""
        ...

    async def cancel_rule(self, conn: AsyncConnection, clock: Clock, rule_id: str) -> None:
        """Stop the rule: no more transfers; its copies may be deleted."""
        ...

    async def extend_rule(
        self, conn: AsyncConnection, clock: Clock, rule_id: str, lifetime: timedelta
    ) -> None:
        """Keep the rule (and its disk copies) for ``lifetime`` from now."""
        ...

    async def change_source(
        self, conn: AsyncConnection, clock: Clock, rule_id: str, source: str | None, restart: bool
    ) -> None:
        """Recall from ``source`` (None: any copy) from now on; ``restart`` cancels the transfers in
        flight, which start again from the new source."""
        ...


@dataclass(frozen=True, slots=True)
class TapeParameters:
    """What a simulated rule is submitted with (frozen in the rule)."""

    delay_seconds: float
    bandwidth: float
    failure_rate: float
    max_attempts: int
    seed: int

    @classmethod
    def from_settings(cls, settings: Settings) -> TapeParameters:
        return cls(
            delay_seconds=settings.tape_staging_delay_seconds,
            bandwidth=settings.tape_bandwidth_bytes_per_second,
            failure_rate=settings.tape_failure_rate,
            max_attempts=settings.tape_max_attempts,
            seed=settings.tape_seed,
        )


class TapeSimulator:
    """A tape system in Bamboo's database (see the module docstring)."""

    def __init__(self, parameters: TapeParameters) -> None:
        self.parameters = parameters
        self.catalog = LocalCatalog()

    async def submit_rule(
        self,
        conn: AsyncConnection,
        clock: Clock,
        dataset: str,
        destination: str,
        source: str | None,
        lifetime: timedelta,
    ) -> str:
        if not await catalog_db.dataset_exists(conn, dataset):
            raise StagingError(f"dataset {dataset} is unknown to the tape system")
        now = clock.now()
        present = await self._on_disk(conn, dataset)
        ordinal = await catalog_db.count_rules(conn, dataset)
        rule_id = uuid.uuid5(_RULE_NAMESPACE, f"{self.parameters.seed}/{dataset}/{ordinal}").hex
        params = self.parameters
        await catalog_db.insert_rule(
            conn,
            {
                "rule_id": rule_id,
                "dataset": dataset,
                "source_rse": source,
                "destination_rse": destination,
                "state": REPLICATING,
                "created_at": now,
                "started_at": now,
                "expires_at": now + lifetime,
                "parameters": orjson.dumps(
                    {
                        "delay_seconds": params.delay_seconds,
                        "bandwidth": params.bandwidth,
                        "failure_rate": params.failure_rate,
                        "max_attempts": params.max_attempts,
                        "seed": params.seed,
                        "present": present,
                    }
                ).decode(),
            },
        )
        return rule_id

    async def poll_rule(self, conn: AsyncConnection, clock: Clock, rule_id: str) -> RuleProgress:
        rule = await self._rule(conn, rule_id)
        files = await self.catalog.list_files(conn, rule["dataset"]) or []
        if rule["state"] == _CANCELLED:
            raise StagingError(f"rule {rule_id} is cancelled")
        frozen = orjson.loads(rule["parameters"])
        present = set(frozen.pop("present"))
        params = TapeParameters(**frozen)
        progress = simulate(
            rule_id,
            [(f.lfn, f.fsize or 0, f.lfn in present) for f in files],
            params,
            started=rule["started_at"],
            now=clock.now(),
        )
        await self.catalog.mark_on_disk(conn, rule["dataset"], progress.staged)
        if progress.state != rule["state"]:
            await catalog_db.update_rule(conn, rule_id, state=progress.state)
        return progress

    async def cancel_rule(self, conn: AsyncConnection, clock: Clock, rule_id: str) -> None:
        await self._rule(conn, rule_id)
        await catalog_db.update_rule(conn, rule_id, state=_CANCELLED, expires_at=clock.now() + CANCEL_GRACE)

    async def extend_rule(
        self, conn: AsyncConnection, clock: Clock, rule_id: str, lifetime: timedelta
    ) -> None:
        await self._rule(conn, rule_id)
        await catalog_db.update_rule(conn, rule_id, expires_at=clock.now() + lifetime)

    async def change_source(
        self, conn: AsyncConnection, clock: Clock, rule_id: str, source: str | None, restart: bool
    ) -> None:
        rule = await self._rule(conn, rule_id)
        values: dict[str, object] = {"source_rse": source}
        if restart and rule["state"] != _CANCELLED:
            # Files already staged stay on disk: the restarted rule recalls only the others.
            await self.poll_rule(conn, clock, rule_id)
            frozen = {
                **orjson.loads(rule["parameters"]),
                "present": await self._on_disk(conn, rule["dataset"]),
            }
            values.update(started_at=clock.now(), state=REPLICATING, parameters=orjson.dumps(frozen).decode())
        await catalog_db.update_rule(conn, rule_id, **values)

    async def _on_disk(self, conn: AsyncConnection, dataset: str) -> list[str]:
        """The dataset's files with a disk copy now: a rule starting now need not recall them."""
        return [f.lfn for f in await self.catalog.list_files(conn, dataset) or [] if f.on_disk]

    async def _rule(self, conn: AsyncConnection, rule_id: str) -> dict[str, Any]:
        rule = await catalog_db.rule(conn, rule_id)
        if rule is None:
            raise StagingError(f"rule {rule_id} not found")
        return rule


def attempt_fails(params: TapeParameters, rule_id: str, lfn: str, attempt: int) -> bool:
    """Whether the simulated transfer ``attempt`` (1, 2, ...) of ``lfn`` under ``rule_id`` fails."""
    if params.failure_rate <= 0:
        return False
    # A simulation, not security: the same inputs must give the same outcome.
    draw = random.Random(f"{params.seed}/{rule_id}/{lfn}/{attempt}").random()  # noqa: S311
    return draw < params.failure_rate


def simulate(
    rule_id: str,
    files: list[tuple[str, int, bool]],
    params: TapeParameters,
    *,
    started: datetime,
    now: datetime,
) -> RuleProgress:
    """The progress at ``now`` of a rule started at ``started`` over ``files`` (lfn, size, on disk when
    the rule started), recalled in catalog order by one drive."""
    clock_at = started + timedelta(seconds=params.delay_seconds)
    staged: list[str] = []
    stuck: list[str] = []
    failed_attempts = 0
    staged_bytes = 0
    in_flight = False
    for lfn, size, on_disk in files:
        if on_disk:
            staged.append(lfn)
            staged_bytes += size
            continue
        if in_flight:
            continue
        duration = timedelta(seconds=size / params.bandwidth)
        for attempt in range(1, params.max_attempts + 1):
            clock_at += duration
            if clock_at > now:
                in_flight = True
                break
            if attempt_fails(params, rule_id, lfn, attempt):
                failed_attempts += 1
                continue
            staged.append(lfn)
            staged_bytes += size
            break
        else:
            stuck.append(lfn)
    state = REPLICATING if in_flight else (STUCK if stuck else OK)
    return RuleProgress(state, tuple(staged), tuple(stuck), failed_attempts, staged_bytes)
