"""The built-in worker's pure parts: payload command lines and limits, the output report as the
finaliser reads it, checksums, the local storage layout, and the payload launcher's limits."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from bamboo.logic.finaliser import output_metadata, parse_output_report
from bamboo.storage import UnsafeName
from bamboo.storage.datasets import DataStorage, adler32_of
from bamboo.worker import payload, report
from bamboo.worker.client import local_server_url


def test_a_plain_transformation_is_a_command_followed_by_the_job_parameters() -> None:
    job = {"transformation": "/bin/sh", "jobPars": """-c 'cat "$@" > "$0"' out.txt a b"""}
    assert payload.command_line(job) == """/bin/sh -c 'cat "$@" > "$0"' out.txt a b"""
    assert payload.command_line({"transformation": "hostname", "jobPars": ""}) == "hostname"


def test_a_url_transformation_runs_as_the_downloaded_file_in_the_sandbox() -> None:
    job = {"transformation": "https://127.0.0.1:25443/trf/user/runGen-00-00-02", "jobPars": "-j '' -p x"}
    assert payload.is_url(job["transformation"])
    assert payload.command_line(job) == "./runGen-00-00-02 -j '' -p x"


@pytest.mark.parametrize("transformation", ["", "NULL", None])
def test_a_job_without_transformation_has_no_command(transformation: str | None) -> None:
    with pytest.raises(ValueError, match="no transformation"):
        payload.command_line({"transformation": transformation, "jobPars": "x"})


@pytest.mark.parametrize("url", ["https://host/", "https://host/trf/..", "http://host/a%00b/.hidden"])
def test_a_transformation_url_must_end_in_a_safe_file_name(url: str) -> None:
    with pytest.raises(UnsafeName):
        payload.transformation_file_name(url)


def test_the_time_limit_is_the_walltime_else_the_cpu_time() -> None:
    assert payload.time_limit_seconds({"maxWalltime": 600, "maxCpuCount": 60}) == 600
    assert payload.time_limit_seconds({"maxWalltime": 0, "maxCpuCount": 60}) == 60
    assert payload.time_limit_seconds({"maxWalltime": "NULL", "maxCpuCount": -5}) is None


def test_the_memory_limit_is_min_ram_count_in_megabytes() -> None:
    assert payload.memory_limit_bytes({"minRamCount": 2000}) == 2000 * 1024 * 1024
    assert payload.memory_limit_bytes({"minRamCount": 0}) == 0
    assert payload.memory_limit_bytes({}) == 0


def test_the_payload_gets_no_bamboo_setting_but_the_job_it_runs() -> None:
    env = payload.payload_environment(
        {"PATH": "/bin", "BAMBOO_SECRETS_KEY": "k", "BAMBOO_DATABASE_URL": "postgresql://u:p@h/db"},
        {"PandaID": 7, "taskID": 10000001},
        "LOCAL",
    )
    assert env == {"PATH": "/bin", "PandaID": "7", "PanDA_TaskID": "10000001", "PANDA_RESOURCE": "LOCAL"}


def test_the_output_report_is_what_the_finaliser_registers() -> None:
    files = [
        report.FileReport(lfn="out.txt", guid="g-1", fsize=12, adler32="0a0b0c0d"),
        report.FileReport(lfn="job.log.tgz", guid="g-2", fsize=300, adler32="00000001"),
    ]
    text = report.output_report(files)
    assert json.loads(text)["out.txt"] == {"guid": "g-1", "fsize": 12, "adler32": "0a0b0c0d"}
    outputs = [
        {"row_ID": 1, "lfn": "out.txt", "GUID": None, "fsize": None, "checksum": None},
        {"row_ID": 2, "lfn": "job.log.tgz", "GUID": "g-2", "fsize": None, "checksum": None},
    ]
    assert output_metadata(outputs, parse_output_report(text)) == {
        1: {"GUID": "g-1", "fsize": 12, "checksum": "ad:0a0b0c0d"},
        2: {"GUID": "g-2", "fsize": 300, "checksum": "ad:00000001"},
    }


def test_described_files_carry_their_real_size_and_adler32(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"hello" * 300_000)
    described = report.describe(path, "data", "guid")
    assert described.fsize == 1_500_000
    assert described.adler32 == f"{zlib.adler32(b'hello' * 300_000):08x}"


def test_adler32_has_eight_hex_digits(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert adler32_of(empty) == "00000001"
    short = tmp_path / "short"
    short.write_bytes(b"a")
    assert adler32_of(short) == "00620062"


def test_exit_statuses_are_reported_as_the_pilot_reports_payload_failures() -> None:
    assert report.payload_failure(0) is None
    assert report.payload_failure(3) == report.Failure(1305, "payload exited with code 3")
    assert report.payload_failure(137) == report.Failure(1305, "payload killed by SIGKILL")


def test_storage_paths_are_scope_then_file_and_stay_inside(tmp_path: Path) -> None:
    storage = DataStorage(tmp_path)
    assert storage.path("user.jdoe", "a.root") == tmp_path / "user.jdoe" / "a.root"
    for scope, lfn in [("..", "a"), ("user.jdoe", "../../etc/passwd"), ("user.jdoe", ".hidden"), ("", "a")]:
        with pytest.raises(UnsafeName):
            storage.path(scope, lfn)


def test_a_stored_file_is_replaced_whole(tmp_path: Path) -> None:
    storage = DataStorage(tmp_path / "storage")
    source = tmp_path / "source"
    source.write_text("first")
    stored = storage.put(source, "user.jdoe", "f.txt")
    source.write_text("second version")
    assert storage.put(source, "user.jdoe", "f.txt") == stored
    assert stored.read_text() == "second version"
    assert [path.name for path in stored.parent.iterdir()] == ["f.txt"]


def _launch(command: str, memory: int) -> int:
    argv = payload.launcher_argv(command, memory)
    return subprocess.run(argv, check=False, timeout=60).returncode


def test_the_launcher_returns_the_payload_exit_code_and_signals() -> None:
    assert _launch("exit 3", 0) == 3
    assert _launch("kill -9 $$", 0) == 128 + 9


def test_the_launcher_limits_the_payload_address_space() -> None:
    allocate = f"{sys.executable} -c 'bytes(400 * 1024 * 1024)'"
    assert _launch(allocate, 0) == 0
    assert _launch(allocate, 200 * 1024 * 1024) == 1


def test_a_server_on_a_wildcard_address_is_reached_on_loopback() -> None:
    assert local_server_url("0.0.0.0", 25443) == "https://127.0.0.1:25443"
    assert local_server_url("::", 8443) == "https://[::1]:8443"
    assert local_server_url("10.0.0.5", 8443) == "https://10.0.0.5:8443"
