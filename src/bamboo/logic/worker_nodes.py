"""The worker-node catalog (pilot/update_worker_node, update_worker_node_gpu; api-v1.md §2.3).

Pilots describe the node they run on (CPU model and topology, memory, disk, GPUs) and the queue
they serve; the catalog keeps one row per (site, host, CPU model) and per GPU model of a host,
with when it was first and last reported. Reports are upserts: a node seen again only gets its
``last_seen`` refreshed, a GPU seen again its count, framework and ``last_seen``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import worker_nodes as nodes_db
from bamboo.logic.clock import Clock
from bamboo.logic.errors import InvalidInput

NODE_INSERTED = "Inserted new worker node."
GPU_INSERTED = "Inserted new worker node GPU."
GPU_UPDATED = "Updated existing worker node GPU."
MAX_LISTED = 10_000

# Column lengths of the catalog tables (db/schema.py).
_NODE_TEXT = {
    "site": 128,
    "host_name": 128,
    "cpu_model": 128,
    "panda_queue": 128,
    "cpu_architecture": 20,
    "cpu_architecture_level": 20,
}
_NODE_COUNTS = ("n_logical_cpus", "n_sockets", "cores_per_socket", "threads_per_core")
_NODE_SIZES = ("total_memory", "total_local_disk")
_GPU_TEXT = {
    "site": 128,
    "host_name": 128,
    "vendor": 64,
    "model": 128,
    "architecture": 64,
    "framework": 64,
    "framework_version": 64,
    "driver_version": 64,
}
_REQUIRED = ("site", "host_name", "cpu_model", "vendor", "model")
_INT32 = 2**31 - 1
_INT64 = 2**63 - 1

# Marketing noise in CPU model strings: trademarks, the words CPU/Processor, the "@ 2.40GHz"
# nominal frequency and "64-Core" counts, so the same chip reads the same from every node.
_CPU_NOISE = re.compile(r"\((?:R|TM|tm|r)\)|\bCPU\b|\bProcessor\b|@\s*[\d.]+\s*[GM]Hz|\b\d+-Core\b")


def normalized_cpu_model(model: str) -> str:
    """The CPU model without trademarks, frequency and core count, blanks collapsed."""
    return " ".join(_CPU_NOISE.sub(" ", model).split())[:128]


def host_without_slot(host_name: str) -> str:
    """A host name as batch systems report a slot (``slot1_2@wn.example.org``), without the slot."""
    return host_name.rpartition("@")[2]


def _text(values: dict[str, Any], limits: Mapping[str, int]) -> None:
    for name, limit in limits.items():
        value = values.get(name)
        if value is None:
            continue
        value = value.strip()
        if name in _REQUIRED and not value:
            raise InvalidInput(f"{name} must not be empty")
        if len(value) > limit or not value.isprintable():
            raise InvalidInput(f"{name} must be at most {limit} printable characters")
        values[name] = value


def _non_negative(values: dict[str, Any], names: tuple[str, ...], most: int) -> None:
    for name in names:
        value = values.get(name)
        if value is not None and not 0 <= value <= most:
            raise InvalidInput(f"{name} must be between 0 and {most}")


@dataclass(frozen=True, slots=True)
class NodeReport:
    """What pilot/update_worker_node sends (api-v1.md §2.3); sizes in MB as the pilot reports them."""

    site: str
    host_name: str
    cpu_model: str
    panda_queue: str | None = None
    n_logical_cpus: int | None = None
    n_sockets: int | None = None
    cores_per_socket: int | None = None
    threads_per_core: int | None = None
    cpu_architecture: str | None = None
    cpu_architecture_level: str | None = None
    clock_speed: float | None = None
    total_memory: int | None = None
    total_local_disk: int | None = None


@dataclass(frozen=True, slots=True)
class GpuReport:
    """What pilot/update_worker_node_gpu sends (api-v1.md §2.3)."""

    site: str
    host_name: str
    vendor: str
    model: str
    count: int
    vram: int | None = None
    architecture: str | None = None
    framework: str | None = None
    framework_version: str | None = None
    driver_version: str | None = None


async def report_node(conn: AsyncConnection, clock: Clock, report: NodeReport) -> str:
    """Register a node or refresh it, and its queue when given; the answer's message.

    Raises:
        InvalidInput: a value that does not fit the catalog, naming the parameter.
    """
    values = {name: getattr(report, name) for name in NodeReport.__dataclass_fields__}
    _text(values, _NODE_TEXT)
    values["host_name"] = host_without_slot(values["host_name"])
    if not values["host_name"]:
        raise InvalidInput("host_name must name a host")
    _non_negative(values, _NODE_COUNTS, _INT32)
    _non_negative(values, _NODE_SIZES, _INT64)
    speed = values["clock_speed"]
    if speed is not None and not (math.isfinite(speed) and speed >= 0):
        raise InvalidInput("clock_speed must be a non-negative number")
    now = clock.now()
    queue = values.pop("panda_queue")
    row = {**values, "cpu_model_normalized": normalized_cpu_model(values["cpu_model"])}
    await nodes_db.upsert_node(conn, {**row, "first_seen": now, "last_seen": now})
    if queue:
        await nodes_db.upsert_node_queue(conn, values["site"], values["host_name"], queue, now)
    return NODE_INSERTED


async def report_gpu(conn: AsyncConnection, clock: Clock, report: GpuReport) -> str:
    """Register a node's GPU or refresh it; the answer's message.

    Raises:
        InvalidInput: a value that does not fit the catalog, naming the parameter.
    """
    values = {name: getattr(report, name) for name in GpuReport.__dataclass_fields__}
    _text(values, _GPU_TEXT)
    values["host_name"] = host_without_slot(values["host_name"])
    if not values["host_name"]:
        raise InvalidInput("host_name must name a host")
    _non_negative(values, ("count",), _INT32)
    _non_negative(values, ("vram",), _INT64)
    now = clock.now()
    inserted = await nodes_db.upsert_gpu(conn, {**values, "first_seen": now, "last_seen": now})
    return GPU_INSERTED if inserted else GPU_UPDATED


async def list_nodes(
    conn: AsyncConnection, site: str | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    """The catalog, most recently seen nodes first, each with its queues and GPUs."""
    nodes = await nodes_db.list_nodes(conn, site, max(1, min(limit, MAX_LISTED)))
    hosts = sorted({(node["site"], node["host_name"]) for node in nodes})
    queues = await nodes_db.queues_of(conn, hosts)
    gpus = await nodes_db.gpus_of(conn, hosts)
    for node in nodes:
        host = (node["site"], node["host_name"])
        node["queues"] = queues[host]
        node["gpus"] = gpus[host]
    return nodes
