"""Database engines and transactions, with the per-dialect settings each backend needs.

SQLite (embedded default) runs in WAL mode so readers never block the writer, with a busy
timeout for writers of other processes, and writes start with ``BEGIN IMMEDIATE`` behind an
in-process lock: SQLite has one writer at a time anyway, and taking the write lock up front avoids
the deadlock-and-retry dance of upgrading a read transaction. PostgreSQL goes through asyncpg with
a fixed pool. There is no pre-ping (it costs three round trips per transaction with asyncpg):
after a database restart a request meeting a stale pooled connection fails with 503, the pool
replaces its older connections, and clients retry. Errors of a server that is shutting down,
starting up or has ended the session are re-raised as ``OperationalError`` (see
:func:`_configure_postgresql`), so they too count as unavailable.
Connections go back to the pool without the usual extra ROLLBACK: every use is inside
:meth:`Database.transaction`, which always ends its transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

SQLITE_BUSY_TIMEOUT_MS = 30_000
_BEGIN_OPTION = "bamboo_sqlite_begin"

# Errors that mean "the database cannot be reached right now" rather than "this request is wrong":
# the API answers them with 503 and Retry-After so clients back off and retry.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    sa.exc.TimeoutError,
    ConnectionError,
    OSError,
)
# SQLSTATEs of PostgreSQL refusing or ending sessions: class 08 connection exceptions (asyncpg
# also uses 08003 for a session cut off mid-query) except 08P01, a protocol violation, which is a
# bug; 57P01 admin shutdown (session terminated, fast shutdown), 57P02 crash shutdown, 57P03
# cannot connect now (shutting down, starting up, in recovery).
_UNAVAILABLE_SQLSTATES = frozenset(
    {"08000", "08001", "08003", "08004", "08006", "08007", "57P01", "57P02", "57P03"}
)


class Database:
    """One engine plus the transaction discipline of the server."""

    def __init__(self, url: str, *, pool_size: int = 20, echo: bool = False) -> None:
        self.url = make_url(url)
        self.dialect = self.url.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise ValueError(
                f"unsupported database {self.dialect!r}: use sqlite+aiosqlite or postgresql+asyncpg"
            )
        self._write_lock = asyncio.Lock()
        self.engine: AsyncEngine
        if self.is_sqlite:
            self.engine = create_async_engine(
                self.url, echo=echo, pool_size=5, max_overflow=5, pool_reset_on_return=None
            )
            _configure_sqlite(self.engine)
        else:
            self.engine = create_async_engine(
                self.url,
                echo=echo,
                pool_size=pool_size,
                # A fixed pool: connections beyond it would be opened and closed per request under
                # load; waiting for a pooled one is cheaper and keeps PostgreSQL's session count flat.
                max_overflow=0,
                pool_timeout=30,
                pool_recycle=3600,
                pool_reset_on_return=None,
            )
            _configure_postgresql(self.engine)

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @asynccontextmanager
    async def transaction(self, *, write: bool = True) -> AsyncIterator[AsyncConnection]:
        """One transaction: committed when the block ends normally, rolled back on any exception.

        Args:
            write: whether the block may write. On SQLite writers are serialised in-process and
                take the database write lock when the transaction begins.
        """
        if self.is_sqlite and write:
            async with self._write_lock:
                async with self._begin("IMMEDIATE") as conn:
                    yield conn
        else:
            async with self._begin("DEFERRED") as conn:
                yield conn

    @asynccontextmanager
    async def _begin(self, sqlite_mode: str) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            if self.is_sqlite:
                await conn.execution_options(**{_BEGIN_OPTION: sqlite_mode})
            async with conn.begin():
                yield conn

    async def dispose(self) -> None:
        await self.engine.dispose()


def _configure_postgresql(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "handle_error")
    def _on_error(context: sa.engine.ExceptionContext) -> BaseException | None:
        # SQLAlchemy wraps these asyncpg errors in a bare DBAPIError, the type of any failed
        # statement, so without this they would answer 500 instead of 503. Also runs for failed
        # connection attempts.
        error = context.sqlalchemy_exception
        if not isinstance(error, sa.exc.DBAPIError) or isinstance(error, UNAVAILABLE_ERRORS):
            return None
        sqlstate = getattr(context.original_exception, "sqlstate", None)
        if not (context.is_disconnect or sqlstate in _UNAVAILABLE_SQLSTATES):
            return None
        return sa.exc.OperationalError(
            error.statement,
            error.params,
            error.orig,
            hide_parameters=error.hide_parameters,
            connection_invalidated=context.is_disconnect,
        )


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (the driver's implicit transactions
        # would always be DEFERRED).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")
