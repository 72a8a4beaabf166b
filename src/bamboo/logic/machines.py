"""Every live Bamboo process is a "machine": a row with a heartbeat, so work can be sent to it.

A process registers when it starts, renews its heartbeat every ``machine_heartbeat_seconds`` (the
``machine_heartbeat`` agent, which runs in every process) and deletes its row when it stops
cleanly. A machine whose heartbeat is older than ``machine_alive_seconds`` is not alive; its row
is deleted after ``machine_forget_hours``.

The machine name is ``<host name>:<pid>:<8 hex digits>``: the host tells an operator where it is,
the pid which process, and the random part keeps names unique where pids repeat (every container's
first process is pid 1) or are reused after a restart. A restarted process is a new machine.
The service name says what the process runs: ``bamboo-server`` for each `bamboo serve` process
(which also runs the agents when it is the only one), ``bamboo-agents`` for `bamboo agents` and
the agents process of a multi-worker server.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from bamboo.db import machines as machines_db
from bamboo.logic.clock import Clock

SERVER_SERVICE = "bamboo-server"
AGENTS_SERVICE = "bamboo-agents"
SERVICES = (SERVER_SERVICE, AGENTS_SERVICE)


@dataclass(frozen=True, slots=True)
class Machine:
    """This process as the machines table knows it."""

    name: str
    service: str
    host: str
    pid: int


def this_process(service: str) -> Machine:
    """A new machine identity for the calling process (call it after fork, in the process itself)."""
    host = socket.gethostname()
    pid = os.getpid()
    return Machine(name=f"{host}:{pid}:{uuid.uuid4().hex[:8]}", service=service, host=host, pid=pid)


async def register(conn: AsyncConnection, clock: Clock, machine: Machine) -> None:
    await machines_db.register(
        conn,
        machine_name=machine.name,
        service_name=machine.service,
        host_name=machine.host,
        pid=machine.pid,
        now=clock.now(),
    )


async def heartbeat(conn: AsyncConnection, clock: Clock, machine: Machine, forget_after: timedelta) -> None:
    """Renew this machine's heartbeat (its row again if it was forgotten) and delete long-silent rows."""
    now = clock.now()
    await register(conn, clock, machine)
    await machines_db.forget_silent(conn, now - forget_after)


async def unregister(conn: AsyncConnection, machine: Machine) -> None:
    await machines_db.delete(conn, machine.name)


def alive_since(clock: Clock, alive_for: timedelta) -> datetime:
    """The oldest heartbeat a live machine may have."""
    return clock.now() - alive_for


async def alive_machines(
    conn: AsyncConnection, clock: Clock, service: str, alive_for: timedelta
) -> list[str]:
    """Names of the live machines of ``service``."""
    return await machines_db.alive_names(conn, service, alive_since(clock, alive_for))
