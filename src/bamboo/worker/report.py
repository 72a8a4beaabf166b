"""What the worker reports about a job: the output report and the pilot's error codes.

The output report is the JSON ``job_output_report`` of pilot/update_job that the finaliser reads
(``bamboo.logic.finaliser.parse_output_report``): ``{lfn: {"guid", "fsize", "adler32"}}`` for
every output and the log tarball. Error codes and their meaning are the pilot's
(``pilot/common/errorcodes.py`` of PanDA's pilot 3), so monitoring and the retry rules read them
as they read a real pilot's.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bamboo.storage.datasets import adler32_of

STAGE_IN_FAILED = 1099
MISSING_OUTPUT_FILE = 1165
STAGE_OUT_FAILED = 1137
PANDA_KILL = 1144
TRANSFORMATION_DOWNLOAD_FAILED = 1149
INPUT_CHECKSUM_MISMATCH = 1171
KILLED_BY_SIGTERM = 1201
REACHED_TIME_LIMIT = 1213
PAYLOAD_FAILED = 1305
LOG_CREATION_FAILED = 1320
MISSING_INPUT_FILE = 1331


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a job failed, as the pilot reports it."""

    code: int
    diag: str


@dataclass(frozen=True, slots=True)
class FileReport:
    lfn: str
    guid: str
    fsize: int
    adler32: str


def describe(path: Path, lfn: str, guid: str) -> FileReport:
    """Size and checksum of a file about to be staged out."""
    return FileReport(lfn=lfn, guid=guid, fsize=path.stat().st_size, adler32=adler32_of(path))


def output_report(files: Iterable[FileReport]) -> str:
    return json.dumps(
        {item.lfn: {"guid": item.guid, "fsize": item.fsize, "adler32": item.adler32} for item in files},
        sort_keys=True,
    )


def payload_failure(exit_code: int) -> Failure | None:
    """The failure a payload's exit status means (None for success); a status above 128 is a
    signal, as the launcher reports it."""
    if exit_code == 0:
        return None
    if exit_code > 128:
        try:
            name = signal.Signals(exit_code - 128).name
        except ValueError:
            name = f"signal {exit_code - 128}"
        return Failure(PAYLOAD_FAILED, f"payload killed by {name}")
    return Failure(PAYLOAD_FAILED, f"payload exited with code {exit_code}")
