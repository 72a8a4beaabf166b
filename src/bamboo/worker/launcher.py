"""Starts one payload under its memory limit and makes sure it dies with the worker.

Run by the worker as ``python -m bamboo.worker.launcher <parent pid> <memory bytes> <command>``
in a new session (process group) of its own. It forks the payload, which sets ``RLIMIT_AS`` to
the job's memory (0: no limit) and runs the command through ``/bin/sh`` in the same process
group, then waits for it and exits with its status (128 + signal for a payload killed by a
signal), so the worker's ``wait4`` on the launcher sees the payload's exit and its resource use.

The limit is set in the forked child rather than in a ``preexec_fn`` of the worker, which is not
safe in a process with threads. ``PR_SET_PDEATHSIG`` sends the launcher SIGTERM when the worker
dies, even by SIGKILL; the launcher then kills its whole process group, so no payload outlives
its worker (the job is then failed by the server's heartbeat watchdog and retried).
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
from types import FrameType

_PR_SET_PDEATHSIG = 1


def _die_with_group(signum: int, _frame: FrameType | None) -> None:
    os.killpg(0, signal.SIGKILL)


def main(argv: list[str]) -> int:
    parent, memory, command = int(argv[0]), int(argv[1]), argv[2]
    signal.signal(signal.SIGTERM, _die_with_group)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        # The worker died before the death signal was armed.
        return 128 + signal.SIGTERM
    child = os.fork()
    if child == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if memory > 0:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        try:
            os.execv("/bin/sh", ["/bin/sh", "-c", command])  # noqa: S606 - the payload runs through the shell
        finally:
            os._exit(127)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
