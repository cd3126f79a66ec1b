"""Group commit: many small write transactions committed together, with one fsync.

SQLite has one writer, and with ``synchronous = FULL`` every commit waits for the disk
(about 1.5 ms here): one transaction per accepted message, per recorded attempt or per
status callback caps each of them at a few hundred a second, whatever the CPU. Here
writes that arrive while a commit is on its way queue up (``notifier.batching``), and
the next transaction runs all of them, each inside its own SAVEPOINT, then commits once.

Durability is unchanged: a caller's ``run`` returns only after the transaction holding
its work is committed, so nothing is acknowledged (a message accepted, a send recorded,
a callback answered 200) before it is on disk. One piece of work that fails rolls back
to its savepoint and gets its own exception; the others commit. If the commit itself
fails, every caller in the group gets that error, as each would have alone.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from notifier.batching import MAX_BATCH, Coalescer, Failed

T = TypeVar("T")
Work = Callable[[AsyncConnection], Awaitable[Any]]
# A caller's work and the context it was submitted in (its trace, or none).
Item = tuple[Work, contextvars.Context]


class GroupCommit(Coalescer[Item, Any]):
    def __init__(self, engine: AsyncEngine, max_group: int = MAX_BATCH) -> None:
        super().__init__("group-commit", max_group)
        self._engine = engine

    async def run(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``work`` in a write transaction; return its result once it is committed."""
        return cast(T, await self.submit((work, contextvars.copy_context())))

    async def flush(self, items: list[Item]) -> Sequence[Any]:
        if len(items) == 1:
            # Alone in its transaction: a failure rolls back only its own changes
            # anyway, so no SAVEPOINT (two statements, two thread hops to SQLite).
            # Raising fails the one caller with its own error, as a Failed would.
            async with self._engine.begin() as conn:
                return [await _in_its_context(items[0], conn)]
        outcomes: list[Any] = []
        async with self._engine.begin() as conn:
            for item in items:
                try:
                    async with conn.begin_nested():
                        outcomes.append(await _in_its_context(item, conn))
                except Exception as exc:  # this caller's problem only
                    outcomes.append(Failed(exc))
        return outcomes

    def retry_alone(self, error: Exception) -> bool:
        # Savepoints already keep each piece of work apart; what failed here is the
        # shared transaction or its commit, which each would have met alone.
        return False


async def _in_its_context(item: Item, conn: AsyncConnection) -> Any:
    """Run the work in the context its caller submitted it from, not the group's (that
    of whoever started the group): its statements are traced under its own caller's
    span (a send's record under the send), and the dispatcher's untraced claim stays
    untraced, whatever else shares the commit."""
    work, context = item

    async def run() -> Any:
        return await work(conn)

    return await asyncio.create_task(run(), context=context)
