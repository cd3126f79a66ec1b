"""What every part of the repository shares: the database, the clock, and how it writes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import Select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from notifier.domain.clock import Clock, now_ms
from notifier.domain.fallback import FallbackPolicy
from notifier.domain.retry import RetryPolicy
from notifier.storage.engine import Database, storage_errors
from notifier.storage.group_commit import GroupCommit

T = TypeVar("T")


class Store:
    def __init__(self, db: Database, clock: Clock = now_ms) -> None:
        self._db = db
        self._clock = clock
        # SQLite's single writer commits the small writes of many callers together;
        # other databases take concurrent transactions on their own connections.
        self._group = GroupCommit(db.writer) if db.is_sqlite else None
        # What a failed WhatsApp message leaves behind (the Repository sets the
        # configured one).
        self._fallback = FallbackPolicy()
        # The backoff a status report that defers a send re-queues it with.
        self._retry = RetryPolicy()

    async def _write(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``work`` in a write transaction and return once it is committed.

        On SQLite it shares the transaction (and the fsync) with the writes queued
        beside it (storage/group_commit.py); a failure of ``work`` still undoes only
        its own changes.
        """
        async with storage_errors():
            if self._group is not None:
                return await self._group.run(work)
            async with self._db.writer.begin() as conn:
                return await work(conn)

    async def settle(self) -> None:
        """Wait for the group commit on its way (SQLite), so the engine is disposed with
        no statement of it still running on aiosqlite's thread."""
        if self._group is not None:
            await self._group.settled()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction of its own (not shared with others' writes)."""
        async with storage_errors(), self._db.writer.begin() as conn:
            yield conn

    @asynccontextmanager
    async def _autocommitted(self) -> AsyncIterator[AsyncConnection]:
        """A write that is one statement, committed by itself (Database.autocommitted),
        its driver errors mapped as every other write's."""
        async with storage_errors(), self._db.autocommitted() as conn:
            yield conn

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads. PostgreSQL: autocommitted. Under READ COMMITTED each
        statement takes its own snapshot inside a transaction too, so the BEGIN and the
        ROLLBACK around a read were two round trips that changed nothing (a
        dispatcher's claim reads opt-outs: 3 trips of ~15 a claim). A read that needs
        one snapshot for several statements sets REPEATABLE READ (storage/metrics.py).
        """
        async with storage_errors(), self._db.reader.connect() as conn:
            if not self._db.is_sqlite:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    def _locked(self, stmt: Select[Any]) -> Select[Any]:
        """``stmt`` (a SELECT) taking row locks on PostgreSQL; SQLite's single writer
        needs none. FOR NO KEY UPDATE: we never change a message's id, and the weaker
        lock does not wait for transactions that merely insert rows referencing the
        message (their foreign key check takes KEY SHARE)."""
        return stmt if self._db.is_sqlite else stmt.with_for_update(key_share=True)

    async def ping(self) -> None:
        """Check that a write can be made now.

        SQLite: write the header's user_version back unchanged. Taking the write lock
        alone still succeeds on storage that has turned read-only, and health said
        SERVING while every write failed with "disk I/O error".
        """
        async with self._transaction() as conn:
            if self._db.is_sqlite:
                version = int((await conn.execute(text("PRAGMA user_version"))).scalar_one())
                await conn.execute(text(f"PRAGMA user_version = {version}"))
            else:
                await conn.execute(text("SELECT 1"))
