"""The server under test: a real `bamboo serve` process on loopback, its admin commands and its database.

The server is started exactly as an operator would, with ``BAMBOO_TOKEN_OVER_HTTP=true`` so bearer
tokens are accepted on the plain-HTTP port: the benchmark then measures Bamboo, not TLS.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg

LOOPBACK = "127.0.0.1"
BAMBOO = [sys.executable, "-m", "bamboo.cli"]
POSTGRES_ADMIN_DSN = f"postgresql://postgres@{LOOPBACK}:5432/postgres"
STARTUP_SECONDS = 60
ADMIN_SECONDS = 120
STOP_SECONDS = 60
_LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+) and https://127\.0\.0\.1:(\d+)")
# Commands that act on the database and so must be told which one.
_DATABASE_COMMANDS = ("db", "queue", "user", "share")


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


def child_environment() -> dict[str, str]:
    """The environment of every bamboo process we start."""
    env = {**os.environ, "BAMBOO_TOKEN_OVER_HTTP": "true"}
    # A database or home from the caller's environment would make the benchmark write into it:
    # every command gets --home and, where needed, --database-url explicitly instead.
    for name in ("BAMBOO_DATABASE_URL", "BAMBOO_HOME", "BAMBOO_HOST"):
        env.pop(name, None)
    return env


def run_admin(*args: str) -> str:
    """Run one `bamboo` admin command and return its standard output."""
    try:
        result = subprocess.run(  # noqa: S603 - our own bamboo command, no shell
            [*BAMBOO, *args],
            capture_output=True,
            text=True,
            timeout=ADMIN_SECONDS,
            env=child_environment(),
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"bamboo {args[0]} did not finish within {ADMIN_SECONDS} s") from exc
    if result.returncode != 0:
        raise BenchError(f"bamboo {' '.join(args[:2])} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


@dataclass
class Server:
    """A running `bamboo serve` and what the benchmark needs to talk to it."""

    process: subprocess.Popen[bytes]
    home: Path
    database_url: str | None
    http_port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    def admin(self, *args: str) -> str:
        database = ["--database-url", self.database_url] if self.database_url else []
        extra = database if args[0] in _DATABASE_COMMANDS else []
        return run_admin(*args, "--home", str(self.home), *extra)

    def token(self, user: str, role: str | None = None) -> str:
        return self.admin("token", "issue", "--user", user, *(["--role", role] if role else [])).strip()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> int:
        """SIGTERM, as an operator would; the server finishes requests in flight and exits."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=STOP_SECONDS)


def start_server(home: Path, database_url: str | None, workers: int) -> Server:
    """Start `bamboo serve` on free loopback ports and wait until it listens."""
    command = [
        *BAMBOO,
        "serve",
        "--home",
        str(home),
        "--host",
        LOOPBACK,
        "--http-port",
        "0",
        "--https-port",
        "0",
        "--workers",
        str(workers),
    ]
    if database_url:
        command += ["--database-url", database_url]
    home.parent.mkdir(parents=True, exist_ok=True)
    log_path = home.parent / "server.log"
    # The log goes to a file, not a pipe: reading access-log lines in Python would cost the
    # benchmark machine CPU time that belongs to neither the client nor the server.
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own bamboo command, no shell
            command, stdout=log, stderr=subprocess.STDOUT, env=child_environment()
        )
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        match = _LISTENING.search(log_path.read_bytes())
        if match:
            return Server(process, home, database_url, int(match.group(1)), log_path)
        if process.poll() is not None:
            break
        time.sleep(0.1)
    if process.poll() is None:
        process.kill()
        process.wait(timeout=STOP_SECONDS)
    raise BenchError("the server did not start:\n" + log_path.read_text(errors="replace")[-4000:])


async def create_postgres_database() -> tuple[str, str]:
    """Create an empty database for this run; return its SQLAlchemy URL and the server version."""
    name = f"bamboo_bench_{uuid.uuid4().hex[:12]}"
    try:
        connection = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        raise BenchError(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_DSN}: {exc}") from exc
    try:
        version = await connection.fetchval("SHOW server_version")
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return f"postgresql+asyncpg://postgres@{LOOPBACK}:5432/{name}", str(version)


async def drop_postgres_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    connection = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()
