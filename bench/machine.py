"""What the benchmark ran on, and CPU counters of the machine and of a process tree (Linux /proc).

Where /proc is missing the counters read as None and the report leaves the CPU columns empty.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")
_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
REPO_ROOT = Path(__file__).resolve().parent.parent


def cpu_count() -> int:
    """CPUs this process may run on (what `nproc` prints)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cpu_model() -> str | None:
    try:
        for line in (_PROC / "cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def git_commit() -> str | None:
    """HEAD of the repository the harness lives in, or None without git."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        result = subprocess.run(  # noqa: S603 - a fixed command, no shell
            [git, "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def machine_info() -> dict[str, object]:
    return {
        "nproc": cpu_count(),
        "cpu_model": _cpu_model(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }


@dataclass(frozen=True)
class CpuSample:
    """Busy CPU seconds of the whole machine and of the server's process tree at one moment."""

    machine_busy: float | None
    server: float | None


def _machine_busy_seconds() -> float | None:
    try:
        first = (_PROC / "stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    # user nice system idle iowait irq softirq steal ...: idle and iowait are the not-busy ones.
    ticks = [int(value) for value in first[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICKS_PER_SECOND


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, CPU ticks used) for every process we can read."""
    table: dict[int, tuple[int, int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue  # the process ended while we looked
        # The command name may hold spaces and parentheses: the fields start after the last ")".
        fields = raw.rsplit(")", 1)[1].split()
        table[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return table


def processes_cpu_seconds(pids: list[int]) -> dict[int, float]:
    """CPU seconds used so far by each of these processes that is still alive."""
    table = _process_table() if _PROC.is_dir() else {}
    return {pid: table[pid][1] / _TICKS_PER_SECOND for pid in pids if pid in table}


def tree_cpu_seconds(root: int) -> float | None:
    """CPU seconds used so far by a process and all its live descendants."""
    if not _PROC.is_dir():
        return None
    table = _process_table()
    if root not in table:
        return None
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        total += table[pid][1]
        pending.extend(children.get(pid, ()))
    return total / _TICKS_PER_SECOND


def sample(server_pid: int) -> CpuSample:
    return CpuSample(_machine_busy_seconds(), tree_cpu_seconds(server_pid))


def cores_used(before: CpuSample, after: CpuSample, seconds: float) -> tuple[float | None, float | None]:
    """(machine, server) busy cores between two samples taken ``seconds`` apart."""

    def rate(start: float | None, end: float | None) -> float | None:
        return None if start is None or end is None or seconds <= 0 else (end - start) / seconds

    return rate(before.machine_busy, after.machine_busy), rate(before.server, after.server)
