"""Start the real `bamboo serve` process on free ports with a temporary home."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import create_postgres_database, drop_postgres_database

BAMBOO = [sys.executable, "-m", "bamboo.cli"]
_LISTENING = re.compile(r"listening on http://[^:]+:(\d+) and https://[^:]+:(\d+)")
STARTUP_SECONDS = 60


def bamboo(*args: str, env: dict[str, str] | None = None) -> str:
    """Run a bamboo admin command and return its standard output."""
    result = subprocess.run(
        [*BAMBOO, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert result.returncode == 0, f"bamboo {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@dataclass
class RunningServer:
    process: subprocess.Popen[str]
    home: Path
    database_url: str | None
    http_port: int
    https_port: int
    output: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def ca(self) -> str:
        return str(self.home / "ca.pem")

    def admin(self, *args: str) -> str:
        uses_database = args[0] in ("db", "queue", "user", "data", "task")
        extra = ["--database-url", self.database_url] if self.database_url and uses_database else []
        return bamboo(*args, "--home", str(self.home), *extra)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        if self.reader is not None:
            self.reader.join(timeout=10)
        return code


def start_server(
    home: Path, database_url: str | None, *extra: str, env: dict[str, str] | None = None
) -> RunningServer:
    command = [*BAMBOO, "serve", "--home", str(home), "--http-port", "0", "--https-port", "0", *extra]
    if database_url:
        command += ["--database-url", database_url]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    output: list[str] = []
    ports: list[tuple[int, int]] = []
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            match = _LISTENING.search(line)
            if match and not ports:
                ports.append((int(match.group(1)), int(match.group(2))))
                ready.set()
        ready.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    ready.wait(STARTUP_SECONDS)
    if not ports:
        process.kill()
        raise AssertionError("server did not start:\n" + "".join(output))
    http_port, https_port = ports[0]
    return RunningServer(process, home, database_url, http_port, https_port, output, reader)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None for the embedded default; a fresh, empty PostgreSQL database otherwise."""
    if request.param == "sqlite":
        yield None
        return
    url = asyncio.run(create_postgres_database())
    if url is None:
        pytest.skip("PostgreSQL not reachable (set BAMBOO_REQUIRE_POSTGRES=1 to fail)")
    yield url
    asyncio.run(drop_postgres_database(url))


@pytest.fixture
def server(tmp_path: Path, backend_url: str | None) -> Iterator[RunningServer]:
    home = tmp_path / "home"
    if backend_url:
        bamboo("db", "upgrade", "--home", str(home), "--database-url", backend_url)
    # Re-read the ban list on every request so a ban shows at once.
    running = start_server(home, backend_url, env={"BAMBOO_BAN_REFRESH_SECONDS": "0"})
    yield running
    running.stop()
