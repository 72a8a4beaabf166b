"""SIGKILL of a `bamboo serve --workers 2` supervisor: its workers stop too, the ports are freed.

Children left serving after their parent died would keep the listening sockets, and the server
restarted on the same ports would fail with "Address already in use".
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.fault.conftest import MakeDeployment
from tests.fault.harness import REQUEST_SECONDS, START_SECONDS, STOP_SECONDS, poll

pytestmark = pytest.mark.fault


def children_of(parent: int) -> list[int]:
    """The pids of the live processes whose parent is ``parent``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _parent_and_state(int(entry.name))[0] == parent:
            found.append(int(entry.name))
    return found


def _parent_and_state(pid: int) -> tuple[int | None, str]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None, "gone"
    # The command name in parentheses may hold spaces: the fields that follow come after the last ")".
    state, parent = stat.rsplit(")", 1)[1].split()[:2]
    return int(parent), state


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie waiting to be reaped."""
    _, state = _parent_and_state(pid)
    return state not in ("gone", "Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process parents from /proc")
async def test_workers_stop_with_a_killed_supervisor(make_deployment: MakeDeployment) -> None:
    deployment = await make_deployment("sqlite")
    server = deployment.server("--workers", "2")
    await server.start()
    supervisor = server.pid

    async def workers() -> list[int]:
        # Two API workers and the agents' process.
        found = children_of(supervisor)
        return found if len(found) == 3 else []

    children = await poll("the supervisor's three children", workers, START_SECONDS)
    try:
        await server.kill()

        async def all_gone() -> bool:
            return not any(alive(pid) for pid in children)

        await poll("the workers of the killed supervisor to stop", all_gone, STOP_SECONDS)
        await server.start()
        async with httpx.AsyncClient(timeout=REQUEST_SECONDS) as client:
            response = await client.get(f"{server.url}/api/v1/system/is_alive")
        assert response.status_code == 200 and response.json()["success"] is True, response.text
    finally:
        # Without the fix they would outlive the test: they are ours, end them by pid.
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
