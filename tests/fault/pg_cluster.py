"""A throwaway PostgreSQL cluster that a fault test may stop and start at will.

The machine's own PostgreSQL (127.0.0.1:5432) is shared with every other test run, so outage tests
never touch it: they ``initdb`` a private cluster into a temporary directory, listening on
127.0.0.1 on a free port with its unix socket in that directory, and remove it all afterwards.
PostgreSQL refuses to run as root, so when the tests run as root (CI) the server programs run as
the ``postgres`` account, which then owns the directory.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Ports of the machine's shared services; a private server never takes one of them.
RESERVED_PORTS = frozenset({5432, 6379, 5672, 1883, 4222})
SERVICE_ACCOUNT = "postgres"
COMMAND_SECONDS = 120
STOP_MODES = ("smart", "fast", "immediate")


def postgres_bindir() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``: the newest Debian install, else the PATH."""
    installs = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if installs:
        return installs[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and that no shared service uses."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port


class PostgresCluster:
    """One private PostgreSQL server in a temporary directory, created, started and stopped on demand.

    Use it through :func:`private_cluster`, which always removes it.
    """

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self._as_service = os.geteuid() == 0
        # Under /tmp rather than $TMPDIR: the postgres account must reach it, and a unix socket
        # path must stay under about 100 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="bamboo-pg-", dir="/tmp" if Path("/tmp").is_dir() else None))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        if self._as_service:
            account = pwd.getpwnam(SERVICE_ACCOUNT)
            os.chown(self.root, account.pw_uid, account.pw_gid)

    def create(self) -> None:
        """``initdb`` the cluster: trust authentication, superuser ``postgres``."""
        self._run(
            "initdb",
            "--pgdata",
            str(self.data),
            "--username",
            "postgres",
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
        )

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the cluster's ``postgres`` database."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"

    def dsn(self, name: str = "postgres") -> str:
        """asyncpg DSN of one of the cluster's databases."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def start(self, *, standby: bool = False) -> None:
        """Start the server and return once it accepts connections.

        With ``standby`` it starts as a standby that refuses every session (hot standby off), as a
        server still starting up does, until :meth:`promote`.
        """
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
            # Only a machine crash needs these; a killed server still finds its WAL in the page
            # cache. Commits stay synchronous: an acknowledged one must survive an immediate stop.
            "-c fsync=off -c full_page_writes=off"
        )
        if standby:
            self._run("touch", str(self.data / "standby.signal"), program_path=False)
            options += " -c hot_standby=off"
        self._run(
            "pg_ctl", "start", "--pgdata", str(self.data), "--log", str(self.log), "--wait",
            "--timeout", str(COMMAND_SECONDS), "--options", options,
        )  # fmt: skip

    def stop(self, mode: str = "fast", *, wait: bool = True) -> None:
        """Stop the server: ``fast`` ends sessions cleanly, ``immediate`` kills them (a crash).

        Without ``wait`` the shutdown is only begun (``smart`` then waits for the last session).
        """
        if mode not in STOP_MODES:
            raise ValueError(f"unknown stop mode {mode!r}")
        self._run(
            "pg_ctl", "stop", "--pgdata", str(self.data), "--mode", mode,
            "--wait" if wait else "--no-wait", "--timeout", str(COMMAND_SECONDS),
        )  # fmt: skip

    def promote(self) -> None:
        """End a standby's recovery: it becomes a primary accepting sessions."""
        self._run(
            "pg_ctl", "promote", "--pgdata", str(self.data), "--wait", "--timeout", str(COMMAND_SECONDS)
        )

    def is_running(self) -> bool:
        status = self._run("pg_ctl", "status", "--pgdata", str(self.data), check=False)
        return status.returncode == 0

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def remove(self) -> None:
        """Kill the server if it still runs and delete every file of the cluster."""
        try:
            if self.data.exists() and self.is_running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _run(
        self, program: str, *args: str, check: bool = True, program_path: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL program (or, without ``program_path``, a system one) as the cluster's owner."""
        command = [str(self.bindir / program) if program_path else program, *args]
        if self._as_service:
            command = ["runuser", "-u", SERVICE_ACCOUNT, "--", *command]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=COMMAND_SECONDS,
            cwd=self.root,
            # The caller's PG* variables (PGDATA, PGPORT...) must not steer the programs.
            env={key: value for key, value in os.environ.items() if not re.match(r"PG[A-Z]", key)},
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{program} {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}\n{self.log_text()[-4000:]}"
            )
        return result


@contextmanager
def private_cluster() -> Iterator[PostgresCluster]:
    """A started private cluster, stopped and deleted when the block ends, whatever happened."""
    bindir = postgres_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL server programs (initdb, pg_ctl) not found")
    cluster = PostgresCluster(bindir)
    try:
        cluster.create()
        cluster.start()
        yield cluster
    finally:
        cluster.remove()
