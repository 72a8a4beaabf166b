"""How a job's payload is run: its command line, limits and environment (pure functions).

As the pilot does: a ``transformation`` that is an http(s) URL is downloaded into the sandbox
and run as ``./<name> <jobPars>`` (it needs its own ``#!`` line); any other transformation is a
command, run as ``<transformation> <jobPars>``. Either way the line goes through ``/bin/sh``, so
the quoting in ``jobPars`` means what it means to the pilot.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from bamboo.storage import check_segment

MEGABYTE = 1024 * 1024
# Environment variables never handed to a payload: the server's and worker's own settings, which
# may hold keys (BAMBOO_SECRETS_KEY) or database credentials (BAMBOO_DATABASE_URL).
_PRIVATE_PREFIXES = ("BAMBOO_",)


def is_url(transformation: str) -> bool:
    return urlsplit(transformation).scheme in ("http", "https")


def transformation_file_name(url: str) -> str:
    """The file name a downloaded transformation gets in the sandbox: the URL's last path part."""
    return check_segment(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])


def command_line(job: Mapping[str, Any]) -> str:
    """The shell command line of the job's payload."""
    transformation = str(job.get("transformation") or "").strip()
    if not transformation or transformation == "NULL":
        raise ValueError("the job names no transformation")
    program = f"./{transformation_file_name(transformation)}" if is_url(transformation) else transformation
    parameters = str(job.get("jobPars") or "").strip()
    return f"{program} {parameters}" if parameters else program


def _positive_int(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return 0
    return max(number, 0)


def time_limit_seconds(job: Mapping[str, Any]) -> int | None:
    """The payload's time limit: ``maxWalltime``, else ``maxCpuCount`` (seconds); None when
    neither is set."""
    return _positive_int(job.get("maxWalltime")) or _positive_int(job.get("maxCpuCount")) or None


def memory_limit_bytes(job: Mapping[str, Any]) -> int:
    """The payload's address-space limit from ``minRamCount`` (MB); 0 when the job sets none."""
    return _positive_int(job.get("minRamCount")) * MEGABYTE


def launcher_argv(command: str, memory_bytes: int) -> list[str]:
    """The argv that starts ``command`` under ``bamboo.worker.launcher`` from this process."""
    return [sys.executable, "-m", "bamboo.worker.launcher", str(os.getpid()), str(memory_bytes), command]


def payload_environment(base: Mapping[str, str], job: Mapping[str, Any], queue: str) -> dict[str, str]:
    """The payload's environment: the worker's without Bamboo's settings, plus what the pilot
    exports about the job."""
    env = {key: value for key, value in base.items() if not key.startswith(_PRIVATE_PREFIXES)}
    env.update(
        {
            "PandaID": str(job["PandaID"]),
            "PanDA_TaskID": str(job.get("taskID", "NULL")),
            "PANDA_RESOURCE": queue,
        }
    )
    return env
