"""`bamboo worker`: the built-in worker, running a queue's jobs on this machine (``bamboo.worker``)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Annotated

import typer

from bamboo.cli.options import HomeOption, fail, settings_for
from bamboo.worker.client import local_server_url
from bamboo.worker.loop import MAX_SLOTS, WorkerOptions, run_worker


def worker(
    queue: Annotated[str, typer.Option("--queue", help="The PanDA queue whose jobs to run.")] = "LOCAL",
    slots: Annotated[
        int, typer.Option("--slots", min=1, max=MAX_SLOTS, help="Jobs run at the same time.")
    ] = 1,
    work_dir: Annotated[
        Path | None, typer.Option("--work-dir", help="Where job sandboxes are made (default: <home>/work).")
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url", help="The server's HTTPS URL (default: https://127.0.0.1:<https port setting>)."
        ),
    ] = None,
    node: Annotated[
        str | None, typer.Option("--node", help="Node name reported (default: host name).")
    ] = None,
    parent_pid: Annotated[int | None, typer.Option("--parent-pid", hidden=True)] = None,
    home: HomeOption = None,
) -> None:
    """Run the jobs of a queue here, as a pilot does: over HTTPS with the v1 pilot calls, with the
    server's home for credentials and its local storage for files (stop with Ctrl-C or SIGTERM)."""
    import uvloop

    settings = settings_for(home, None)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not (settings.home / "ca.pem").exists():
        raise fail(f"no server home at {settings.home}: start `bamboo serve` there first (or give --home)")
    options = WorkerOptions(
        queue=queue,
        url=url or local_server_url(settings.host, settings.https_port),
        slots=slots,
        work_dir=(work_dir or settings.home / "work").resolve(),
        node=node or socket.gethostname(),
        parent_pid=parent_pid,
    )
    uvloop.run(run_worker(settings, options))
