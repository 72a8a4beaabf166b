"""Running `bamboo serve`: the two listeners, worker processes and a clean shutdown.

One process serves plain HTTP and HTTPS from one event loop. With ``--workers N`` the parent binds
both ports once and forks N children that share the listening sockets; the parent only supervises
(restarting a child that dies) and forwards SIGTERM; children stop by themselves when the parent
dies without forwarding it (SIGKILL). SIGTERM makes every listener stop accepting,
lets in-flight requests finish, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
import uvloop
from cryptography.hazmat.primitives.serialization import Encoding
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bamboo import __version__
from bamboo.agents.runner import AGENTS, PROCESS_AGENTS, AgentContext, AgentRunner
from bamboo.api.app import create_app
from bamboo.api.state import build_state
from bamboo.api.tls import ClientCertificateProtocol
from bamboo.auth.x509 import TrustStore
from bamboo.config import Settings
from bamboo.db import migrate
from bamboo.db.engine import UNAVAILABLE_ERRORS, Database
from bamboo.home import Home, prepare_home
from bamboo.logic import machines, retry_rules
from bamboo.logic.catalog import LocalCatalog
from bamboo.logic.clock import SystemClock
from bamboo.worker.client import local_server_url

log = logging.getLogger("bamboo.server")

GRACEFUL_SHUTDOWN_SECONDS = 30
_RESTART_BACKOFF_SECONDS = 1.0
# How soon a worker notices that its supervisor died.
_ORPHAN_POLL_SECONDS = 0.5


class ServerStartError(Exception):
    """The server cannot start; the message says why and what to do."""


class RequestHeadDeadline(HttpToolsProtocol):
    """uvicorn's HTTP protocol, closing a connection whose next request head does not arrive in time.

    uvicorn times out only the idle gap after a response (``timeout_keep_alive``) and nothing
    else: a client that connects and stays silent, or sends its headers a byte at a time (each
    byte cancels the keep-alive timer), holds the connection forever, and enough of them exhaust
    the server's sockets (slowloris). So a deadline starts when the connection is made and again
    after each response, and only the end of a request's headers cancels it: one timer per
    connection, whatever the pace of the bytes. A request whose head is complete is not affected,
    however long its body or handler takes. On the HTTPS port the protocol starts once the TLS
    handshake is done; the event loop bounds the handshake itself (60 s).
    """

    head_timeout: float = 30.0
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_headers_complete(self) -> None:
        self._cancel_head_deadline()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._waiting_for_head():
            self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def _waiting_for_head(self) -> bool:
        # A pipelined request already parsed is in self.cycle and still running: not waiting.
        idle = self.cycle is None or self.cycle.response_complete
        return idle and not self.transport.is_closing()

    def _arm_head_deadline(self) -> None:
        self._cancel_head_deadline()
        self._head_deadline = self.loop.call_later(self.head_timeout, self._head_deadline_passed)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_deadline_passed(self) -> None:
        self._head_deadline = None
        if self._waiting_for_head():
            # Debug only: under a slowloris attack this line would come once per attacking connection.
            log.debug("closing a connection that sent no complete request head in %g s", self.head_timeout)
            self.transport.close()


def with_head_deadline(protocol: type[HttpToolsProtocol], seconds: float) -> type[HttpToolsProtocol]:
    """``protocol`` (HttpToolsProtocol or a subclass) with a request head deadline of ``seconds``."""
    return type(
        f"{protocol.__name__}WithHeadDeadline", (RequestHeadDeadline, protocol), {"head_timeout": seconds}
    )


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it every response waits 40 ms for the client's delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServerStartError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def client_auth_context(home: Home, settings: Settings) -> ssl.SSLContext:
    """TLS for the HTTPS port: optional client certificates, grid proxies allowed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(home.server_cert, home.server_key)
    context.verify_mode = ssl.CERT_OPTIONAL
    context.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS
    trust = TrustStore.from_paths([home.ca_file, *settings.ca_dirs])
    context.load_verify_locations(cadata="".join(cert.public_bytes(Encoding.PEM).decode() for cert in trust))
    return context


async def prepare_database(db: Database) -> None:
    """Migrate the embedded SQLite database; require an up-to-date schema anywhere else."""
    if db.is_sqlite:
        await migrate.upgrade(db)
    elif not await migrate.is_up_to_date(db):
        raise ServerStartError("the database schema is not up to date: run `bamboo db upgrade` first")


def install_retry_rules(settings: Settings) -> None:
    """Load and check the retry-rule table (``retry_rules_file``, else the built-in one) and make
    it this process's; forked workers inherit it. A bad file stops the start with the reason."""
    try:
        retry_rules.install(retry_rules.load_table(settings.retry_rules_file))
    except retry_rules.RetryRulesError as exc:
        raise ServerStartError(str(exc)) from exc


def serve(settings: Settings) -> None:
    """Run the server until SIGTERM or SIGINT."""
    install_retry_rules(settings)
    home = prepare_home(settings)
    asyncio.run(_check_database(settings))
    listeners = [bind(settings.host, settings.http_port), bind(settings.host, settings.https_port)]
    http_port, https_port = (sock.getsockname()[1] for sock in listeners)
    print(
        f"Bamboo {__version__} listening on http://{settings.host}:{http_port} and "
        f"https://{settings.host}:{https_port} (CA {home.ca_file}; database {_redacted(settings)}; "
        f"{settings.workers} worker{'s' if settings.workers > 1 else ''})",
        flush=True,
    )
    worker = _start_local_worker(settings, https_port) if settings.local_worker else None
    # The local worker stops first, while the server still answers its final reports.
    stop_worker = None if worker is None else lambda: _stop_local_worker(worker)
    try:
        if settings.workers == 1:
            uvloop.run(
                _serve_process(
                    settings, home, listeners, with_agents=settings.agents, before_stop=stop_worker
                )
            )
            return
        children = [
            lambda: uvloop.run(_serve_process(settings, home, listeners, with_agents=False))
        ] * settings.workers
        if settings.agents:
            children.append(lambda: uvloop.run(run_agents(settings)))
        _supervise(children, before_stop=stop_worker)
    finally:
        if stop_worker is not None:
            stop_worker()


def _start_local_worker(settings: Settings, https_port: int) -> subprocess.Popen[bytes]:
    """`bamboo worker` for the local worker queue, as a child process talking HTTPS to this server.

    It gets this process's id and stops by itself when this process is gone, however it ended.
    """
    command = [
        sys.executable,
        "-m",
        "bamboo.cli",
        "worker",
        "--queue",
        settings.local_worker_queue,
        "--slots",
        str(settings.local_worker_slots),
        "--url",
        local_server_url(settings.host, https_port),
        "--home",
        str(settings.home.resolve()),
        "--parent-pid",
        str(os.getpid()),
    ]
    log.info("starting the local worker for queue %s", settings.local_worker_queue)
    return subprocess.Popen(command)  # noqa: S603 - our own command line


def _stop_local_worker(worker: subprocess.Popen[bytes]) -> None:
    """SIGTERM: the worker kills its payloads and reports their jobs failed before it exits."""
    if worker.poll() is None:
        worker.terminate()
    try:
        worker.wait(timeout=GRACEFUL_SHUTDOWN_SECONDS)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


async def _check_database(settings: Settings) -> None:
    db = Database(settings.effective_database_url, pool_size=settings.db_pool_size)
    try:
        await prepare_database(db)
    finally:
        await db.dispose()


def _redacted(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    return make_url(settings.effective_database_url).render_as_string(hide_password=True)


def _agent_runner(
    settings: Settings, db: Database, machine: machines.Machine, *, with_agents: bool
) -> AgentRunner:
    """The agents of one process: every process registers as a machine and serves the async
    requests sent to it; ``with_agents`` adds the workload agents."""
    return AgentRunner(
        AgentContext(db, SystemClock(), LocalCatalog(), settings=settings, machine=machine),
        agents=(AGENTS if with_agents else ()) + PROCESS_AGENTS,
        period=settings.agent_period_seconds,
    )


async def _leave(db: Database, machine: machines.Machine) -> None:
    """Delete this process's machine row on a clean stop, so no request is sent to it meanwhile."""
    try:
        async with db.transaction() as conn:
            await machines.unregister(conn, machine)
    except UNAVAILABLE_ERRORS as exc:
        log.warning("could not delete machine %s (%s); it expires with its heartbeat", machine.name, exc)


async def run_agents(settings: Settings) -> None:
    """Run only the agents until SIGTERM/SIGINT (``bamboo agents`` and multi-worker servers)."""
    db = Database(settings.effective_database_url, pool_size=settings.db_pool_size)
    machine = machines.this_process(machines.AGENTS_SERVICE)
    runner = _agent_runner(settings, db, machine, with_agents=True)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    runner.start()
    try:
        await stopped.wait()
    finally:
        await runner.stop()
        await _leave(db, machine)
        await db.dispose()
    log.info("agents stopped")


async def _serve_process(
    settings: Settings,
    home: Home,
    listeners: list[socket.socket],
    *,
    with_agents: bool,
    before_stop: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT; ``before_stop`` (blocking, run in a thread) runs first then."""
    db = Database(settings.effective_database_url, pool_size=settings.db_pool_size)
    state = build_state(settings, home, db, SystemClock())
    machine = machines.this_process(machines.SERVER_SERVICE)
    runner = _agent_runner(settings, db, machine, with_agents=with_agents)
    state.wake = runner.wake
    app = create_app(state)
    head_timeout = settings.request_head_timeout_seconds
    # An idle kept-alive connection is closed by the request-head deadline; uvicorn's own idle
    # timeout (5 s by default) must not close it sooner. A server that closes idle connections
    # before the client's pool gives them up races with the client's next request on them (the
    # client sees "disconnected without a response"; requests/urllib3 keep idle connections with
    # no expiry and do not resend a POST), and the shorter the timeout, the likelier the race.
    keep_alive = math.ceil(head_timeout)
    http_config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        http=with_head_deadline(HttpToolsProtocol, head_timeout),
        timeout_keep_alive=keep_alive,
    )
    https_config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        http=with_head_deadline(ClientCertificateProtocol, head_timeout),
        timeout_keep_alive=keep_alive,
        ssl_context_factory=lambda _config, _default: client_auth_context(home, settings),
    )
    servers = []
    for config, sock in zip((http_config, https_config), listeners, strict=True):
        config.timeout_graceful_shutdown = GRACEFUL_SHUTDOWN_SECONDS
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        servers.append((server, sock))
    loop = asyncio.get_running_loop()

    def exit_servers() -> None:
        log.info("shutting down: no new connections, finishing requests in flight")
        for server, _ in servers:
            server.should_exit = True

    stopping: list[asyncio.Future[None]] = []

    def stop() -> None:
        if before_stop is None or stopping:
            exit_servers()
            return
        # A second signal does not wait for before_stop.
        stopping.append(loop.run_in_executor(None, before_stop))
        stopping[0].add_done_callback(lambda _: exit_servers())

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    try:
        for server, sock in servers:
            await server.startup(sockets=[sock])
        # The heartbeat agent's first step registers this process as a machine.
        runner.start()
        await asyncio.gather(*(server.main_loop() for server, _ in servers))
        await asyncio.gather(*(server.shutdown() for server, _ in servers))
    finally:
        await runner.stop()
        await _leave(db, machine)
        await db.dispose()
    log.info("stopped")


def _stop_when_orphaned(supervisor: int) -> None:
    """In a forked child: stop as on SIGTERM once the supervisor is gone, however it died.

    A supervisor killed with SIGKILL cannot forward anything; children left serving would keep the
    shared ports, and the restarted server would fail with "Address already in use". The child
    is re-parented when its parent dies, so a thread watches the parent pid and sends the child
    the SIGTERM the supervisor would have forwarded (its listeners close, requests in flight end).
    """

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(_ORPHAN_POLL_SECONDS)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def _supervise(jobs: list[Callable[[], Any]], before_stop: Callable[[], None] | None = None) -> None:
    """Fork one child per job and keep them running until SIGTERM/SIGINT, then stop them all
    (after ``before_stop``, when given)."""
    children: dict[int, int] = {}
    stopping = False
    supervisor = os.getpid()

    def spawn(slot: int) -> None:
        run_child = jobs[slot]
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            _stop_when_orphaned(supervisor)
            code = 0
            try:
                run_child()
            except BaseException:
                log.exception("worker %d crashed", slot)
                code = 1
            finally:
                os._exit(code)
        children[pid] = slot

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        first = not stopping
        stopping = True
        if first and before_stop is not None:
            before_stop()
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for slot in range(len(jobs)):
        spawn(slot)
    failed = False
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        slot = children.pop(pid)
        if stopping:
            failed |= os.waitstatus_to_exitcode(status) != 0
            continue
        log.error(
            "worker %d (pid %d) exited with %s; restarting", slot, pid, os.waitstatus_to_exitcode(status)
        )
        time.sleep(_RESTART_BACKOFF_SECONDS)
        spawn(slot)
    sys.exit(1 if failed else 0)
