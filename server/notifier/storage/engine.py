"""Engines for SQLite and PostgreSQL.

PostgreSQL gets one ordinary pool for reads and writes: it runs writers side by side
(READ COMMITTED), and the repository takes the row locks a read-modify-write needs.

SQLite allows one writer at a time. Giving writes their own single connection that
starts every transaction with ``BEGIN IMMEDIATE`` makes them queue inside the process
instead of failing with "database is locked" on a read-to-write upgrade, while reads
use a pool of their own that WAL lets run beside the writer.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.util import await_

from notifier.domain.errors import StorageUnavailable

SQLITE_BUSY_TIMEOUT_MS = 5_000

# At DEBUG, aiosqlite logs every statement with its parameters, and SQLAlchemy the rows
# it fetches: phone numbers and message bodies. Pinned, whatever level the service logs
# at (SQLAlchemy's own default is WARNING; pinning it keeps it so).
logging.getLogger("aiosqlite").setLevel(logging.INFO)
logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)

# LISTEN/NOTIFY channels (PostgreSQL): "messages became due" and "status events stored".
DUE_CHANNEL = "notifier_due"
EVENTS_CHANNEL = "notifier_events"

# PostgreSQL SQLSTATEs that say "not now" rather than "wrong": the same work may succeed
# when tried again. asyncpg's errors reach us as plain DBAPIError, so the class of the
# code decides: 08 connection exception, 53 insufficient resources (53300 too many
# connections), 57P0x shutdown / cannot connect now, 40001 serialization failure,
# 40P01 deadlock detected, 55P03 lock not available.
_TRANSIENT_SQLSTATE_CLASSES = ("08", "53")
_TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "40001", "40P01", "55P03"})


def is_transient(exc: sa_exc.DBAPIError) -> bool:
    """Whether a driver error says "try again later" (see the SQLSTATEs above)."""
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if not isinstance(code, str):
        return False
    return code.startswith(_TRANSIENT_SQLSTATE_CLASSES) or code in _TRANSIENT_SQLSTATES


@asynccontextmanager
async def storage_errors() -> AsyncIterator[None]:
    """The one place driver errors are mapped: "cannot reach the database" becomes
    StorageUnavailable (callers answer UNAVAILABLE and retry); real bugs go through."""
    try:
        yield
    except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, OSError) as exc:
        raise StorageUnavailable(str(exc).splitlines()[0]) from exc
    except sa_exc.DBAPIError as exc:
        if exc.connection_invalidated or is_transient(exc):
            raise StorageUnavailable(str(exc).splitlines()[0]) from exc
        raise


async def notify(conn: AsyncConnection, *channels: str) -> None:
    """PostgreSQL: wake the listeners of ``channels`` when this transaction commits.

    NOTIFY is transactional: it is delivered on commit and dropped on rollback, so a
    listener never wakes for rows it cannot see yet. SQLite has no NOTIFY; its readers
    poll. Identical notifications within one transaction are folded into one.
    """
    if conn.dialect.name != "postgresql" or not channels:
        return
    # One statement (one round trip) for every channel.
    calls = ", ".join(f"pg_notify(:c{i}, '')" for i in range(len(channels)))
    await conn.execute(text(f"SELECT {calls}"), {f"c{i}": c for i, c in enumerate(channels)})


@dataclass(frozen=True, slots=True)
class Database:
    writer: AsyncEngine
    reader: AsyncEngine

    @property
    def is_sqlite(self) -> bool:
        return self.writer.dialect.name == "sqlite"

    @property
    def is_postgresql(self) -> bool:
        return self.writer.dialect.name == "postgresql"

    @asynccontextmanager
    async def autocommitted(self) -> AsyncIterator[AsyncConnection]:
        """A writer's connection whose statements commit one by one (PostgreSQL), for
        a write that is one statement, atomic by itself: no BEGIN and COMMIT round
        trips, which count at hundreds of claims and slot grants a second."""
        async with self.writer.connect() as conn:
            yield await conn.execution_options(isolation_level="AUTOCOMMIT")

    def asyncpg_dsn(self) -> str:
        """The plain ``postgresql://`` URL, for a connection of our own outside the pool
        (LISTEN needs one that stays open and is never handed to anyone else)."""
        url = self.writer.url.set(drivername="postgresql")
        return url.render_as_string(hide_password=False)

    async def dispose(self) -> None:
        await self.writer.dispose()
        if self.reader is not self.writer:
            await self.reader.dispose()


def _sqlite_engine(url: str, *, immediate: bool, pool_size: int) -> AsyncEngine:
    engine = create_async_engine(
        url, pool_size=pool_size, max_overflow=0, pool_timeout=30, hide_parameters=True
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit is on disk before we acknowledge it, even across power loss.
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        # Deleted and redacted content is overwritten, not left in free space (issue 15).
        cursor.execute("PRAGMA secure_delete = ON")
        cursor.close()

    begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"
    dialect = engine.sync_engine.dialect
    commit, rollback = dialect.do_commit, dialect.do_rollback

    def _do_begin(dbapi_conn: Any) -> None:
        # Owed, not sent: it goes to aiosqlite's thread with the transaction's first
        # statement, in the same hop (storage/driver.py, or _begin_owed below). Sent
        # alone it was a hop of its own, a thread switch there and back and a wait for
        # the event loop: a fifth of a recorded batch's hops.
        _OWED[dbapi_conn.driver_connection] = begin

    def _do_commit(dbapi_conn: Any) -> None:
        if _OWED.pop(dbapi_conn.driver_connection, None) is None:  # else nothing ran
            commit(dbapi_conn)

    def _do_rollback(dbapi_conn: Any) -> None:
        # The pool rolls back every connection given back to it, a committed writer
        # and a reader that only read included: a thread hop each time to undo nothing.
        # SQLite says whether a transaction is open (a flag, read without the thread);
        # only then is there anything to undo.
        _OWED.pop(dbapi_conn.driver_connection, None)
        if dbapi_conn.driver_connection._conn.in_transaction:
            rollback(dbapi_conn)

    def _begin_owed(cursor: Any) -> None:
        """A statement through SQLAlchemy's cursor: the BEGIN owed first, in a hop of
        its own (as before). SQLAlchemy calls this inside its error handling, so a
        failure (SQLITE_BUSY, a read-only disk) reaches us as an OperationalError."""
        owed = _OWED.pop(cursor._connection, None)
        if owed is not None:
            try:
                await_(cursor._connection.execute(owed))
            except Exception as error:
                cursor._adapt_connection._handle_exception(error)

    def _begun(execute: Callable[..., None]) -> Callable[..., None]:
        def run(cursor: Any, *args: Any, **kwargs: Any) -> None:
            _begin_owed(cursor)
            execute(cursor, *args, **kwargs)

        return run

    dialect.do_begin = _do_begin  # type: ignore[method-assign,assignment]
    dialect.do_commit = _do_commit  # type: ignore[method-assign,assignment]
    dialect.do_rollback = _do_rollback  # type: ignore[method-assign,assignment]
    dialect.do_execute = _begun(dialect.do_execute)  # type: ignore[method-assign]
    dialect.do_executemany = _begun(dialect.do_executemany)  # type: ignore[method-assign]
    dialect.do_execute_no_params = _begun(dialect.do_execute_no_params)  # type: ignore[method-assign]
    return engine


# SQLite: the aiosqlite connections whose transaction SQLAlchemy has begun and that have
# not run a statement yet, with the BEGIN they owe.
_OWED: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def owed_begin(driver_connection: Any) -> str | None:
    """The BEGIN ``driver_connection`` (aiosqlite's) owes, now taken: the caller sends it
    ahead of its statement, on the same trip to the thread."""
    return _OWED.pop(driver_connection, None)


def create_database(url: str) -> Database:
    if url.startswith("sqlite"):
        writer = _sqlite_engine(url, immediate=True, pool_size=1)
        reader = _sqlite_engine(url, immediate=False, pool_size=4)
        return Database(writer=writer, reader=reader)
    # hide_parameters: SQL errors must not carry message bodies or phone numbers to logs.
    # No pre-ping: a round trip on every checkout was a fifth of a write's cost. A dead
    # connection shows up as an error instead: SQLAlchemy invalidates the pool (every
    # connection from before the failure is replaced on its next checkout) and
    # storage_errors answers StorageUnavailable, which callers retry.
    engine = create_async_engine(url, pool_size=10, max_overflow=10, hide_parameters=True)
    return Database(writer=engine, reader=engine)
