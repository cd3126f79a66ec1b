"""Group commit: many small write transactions committed together, with one fsync.

SQLite has one writer, and with ``synchronous = FULL`` every commit waits for the disk
(about 1.5 ms here): one transaction per accepted message, per recorded attempt or per
status callback caps each of them at a few hundred a second, whatever the CPU. Here
writes that arrive while a commit is on its way queue up (``notifier.batching``), and
the next transaction runs all of them, then commits once.

Durability is unchanged: a caller's ``run`` returns only after the transaction holding
its work is committed, so nothing is acknowledged (a message accepted, a send recorded,
a callback answered 200) before it is on disk. One piece of work that fails gets its
own exception and the others commit: the group is rolled back and each runs again in a
transaction of its own. If the commit itself fails, every caller in the group gets
that error, as each would have alone.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from notifier.batching import MAX_BATCH, Coalescer

T = TypeVar("T")
Work = Callable[[AsyncConnection], Awaitable[Any]]
# A caller's work and the context it was submitted in (its trace, or none).
Item = tuple[Work, contextvars.Context]


class GroupCommit(Coalescer[Item, Any]):
    # The coalescers in front of this one (the recorder's batches, the accepted
    # messages) submit their next batch as soon as their last is committed. Without a
    # turn of the event loop in between, a transaction already waiting (a claim) was
    # taken alone, and that next batch went alone after it: two commits, and twice the
    # fixed hops a transaction costs, where one does.
    turn_between_batches = True

    def __init__(self, engine: AsyncEngine, max_group: int = MAX_BATCH) -> None:
        super().__init__("group-commit", max_group)
        self._engine = engine

    async def run(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``work`` in a write transaction; return its result once it is committed."""
        return cast(T, await self.submit((work, contextvars.copy_context())))

    async def flush(self, items: list[Item]) -> Sequence[Any]:
        """Every item's work in one transaction, committed once. If one raises, the
        transaction is rolled back and each item runs again in one of its own
        (``retry_alone``, ``Coalescer.flush_one``), so the failing one fails alone.

        No SAVEPOINT around each: two more statements an item (SAVEPOINT, RELEASE),
        each a thread hop to SQLite, made a shared commit cost more hops than the
        transactions it saved. Work that raises is rare (storage going away, a bug: a
        caller's own refusals are results, not exceptions), and running it again is
        safe: its first run was rolled back with everything else.
        """
        async with self._engine.begin() as conn:
            outcomes: list[Any] = []
            for item in items:
                try:
                    outcomes.append(await _in_its_context(item, conn))
                except Exception as exc:
                    if len(items) == 1:
                        raise  # its own error, as it would have met it alone
                    raise _OneFailed from exc  # rolls the group back
        return outcomes

    def retry_alone(self, error: Exception) -> bool:
        # Only an item's own failure; what else fails here is the shared transaction or
        # its commit, which each would have met alone.
        return isinstance(error, _OneFailed)


class _OneFailed(Exception):
    """One item of a group raised: the group is rolled back and each runs alone."""


async def _in_its_context(item: Item, conn: AsyncConnection) -> Any:
    """Run the work in the context its caller submitted it from, not the group's (that
    of whoever started the group): its statements are traced under its own caller's
    span (a send's record under the send), and the dispatcher's untraced claim stays
    untraced, whatever else shares the commit."""
    work, context = item

    async def run() -> Any:
        return await work(conn)

    return await asyncio.create_task(run(), context=context)
