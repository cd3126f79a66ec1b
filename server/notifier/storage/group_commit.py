"""Group commit: many small write transactions committed together, with one fsync.

SQLite has one writer, and with ``synchronous = FULL`` every commit waits for the disk
(about 1.5 ms here): one transaction per accepted message, per recorded attempt or per
status callback caps each of them at a few hundred a second, whatever the CPU. Here
writes that arrive while a commit is on its way queue up, and the next transaction runs
all of them, each inside its own SAVEPOINT, then commits once.

Durability is unchanged: a caller's ``run`` returns only after the transaction holding
its work is committed, so nothing is acknowledged (a message accepted, a send recorded,
a callback answered 200) before it is on disk. One piece of work that fails rolls back
to its savepoint and gets its own exception; the others commit. If the commit itself
fails, every caller in the group gets that error, as each would have alone. There is no
waiting for company: a write that finds nothing in progress starts at once, so a lone
write costs what it did before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

T = TypeVar("T")
Work = Callable[[AsyncConnection], Awaitable[Any]]

MAX_GROUP = 256
"""Pieces of work per transaction: bounds how long one commit holds the write lock."""


class GroupCommit:
    def __init__(self, engine: AsyncEngine, max_group: int = MAX_GROUP) -> None:
        self._engine = engine
        self._max_group = max_group
        self._queue: list[tuple[Work, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def run(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``work`` in a write transaction; return its result once it is committed."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((work, future))
        if self._flusher is None or self._flusher.done():
            # Its own task: a caller that gives up (deadline) must not cancel the
            # transaction it shares with others.
            self._flusher = asyncio.create_task(self._drain(), name="group-commit")
        return await future

    async def _drain(self) -> None:
        while self._queue:
            group = self._queue[: self._max_group]
            del self._queue[: self._max_group]
            await self._commit(group)

    async def _commit(self, group: list[tuple[Work, asyncio.Future[Any]]]) -> None:
        done: list[tuple[asyncio.Future[Any], BaseException | None, Any]] = []
        try:
            async with self._engine.begin() as conn:
                for work, future in group:
                    try:
                        async with conn.begin_nested():
                            value = await work(conn)
                    except Exception as exc:  # this caller's problem only
                        done.append((future, exc, None))
                    else:
                        done.append((future, None, value))
        except Exception as exc:  # the transaction (or its commit) failed: all of it did
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:
            for _, future in group:
                if not future.done():
                    future.cancel()
            raise
        for future, error, value in done:
            if future.done():
                continue  # its caller gave up; the work is committed all the same
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)
