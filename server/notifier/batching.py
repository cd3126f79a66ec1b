"""One batching primitive: items submitted while a batch is on its way go in the next one.

Every hot write in Notifier (accepting a message, recording what Twilio answered,
applying a status callback, committing a transaction on SQLite) costs mostly a fixed
price per transaction: a commit, an fsync, round trips. A ``Coalescer`` lets the
callers that arrive while one batch is being flushed share the next flush. It never
waits for company: an item that finds nothing in progress is flushed at once, so a lone
caller pays what it would alone.

The semantics are those of one flush per item:

- ``submit`` returns only once the batch holding the item has been flushed (for storage:
  committed), with that item's own result or error.
- A flush that fails as a whole may be retried item by item (``retry_alone``), so one
  bad item fails only itself.
- The flush runs in a task of its own: a caller that gives up (a deadline, a cancelled
  send) does not cancel the batch it shares with others, and a result that was committed
  stays committed whether or not anyone is still waiting for it.

Subclasses say how a batch is flushed (``flush``), how one item is flushed alone
(``flush_one``) and which failures are worth retrying alone (``retry_alone``).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

MAX_BATCH = 256
"""Items per flush: bounds how long one transaction holds its locks."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The outcome of an item that failed on its own while the rest of its batch did not."""

    error: Exception


class Coalescer(ABC, Generic[ItemT, ResultT]):
    # Whether to let the event loop turn once before taking the next batch, so that
    # the callers the last flush answered run first and what they submit at once shares
    # the next flush (see GroupCommit).
    turn_between_batches = False

    def __init__(self, name: str, max_batch: int = MAX_BATCH) -> None:
        self._name = name
        self._max_batch = max_batch
        self._queue: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, item: ItemT) -> ResultT:
        """Flush ``item`` with whatever else is waiting; its result once flushed."""
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._drain(), name=self._name)
        return await future

    async def settled(self) -> None:
        """Return once no batch is on its way (one a caller gave up on still runs to
        its end): before the resources its flush uses are closed."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.wait([self._flusher])

    @abstractmethod
    async def flush(self, items: list[ItemT]) -> Sequence[ResultT | Failed]:
        """Flush ``items`` together: one outcome per item, in order. Raising fails them
        all (and, where ``retry_alone`` agrees, sends each to ``flush_one``)."""

    async def flush_one(self, item: ItemT) -> ResultT:
        """Flush ``item`` on its own, after its batch failed."""
        (outcome,) = await self.flush([item])
        if isinstance(outcome, Failed):
            raise outcome.error
        return outcome

    def retry_alone(self, error: Exception) -> bool:
        """Whether a batch that failed with ``error`` is worth retrying item by item."""
        return True

    async def _drain(self) -> None:
        while self._queue:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            await self._flush_batch(batch)
            if self.turn_between_batches:
                await asyncio.sleep(0)

    async def _flush_batch(self, batch: list[tuple[ItemT, asyncio.Future[ResultT]]]) -> None:
        try:
            outcomes = await self.flush([item for item, _ in batch])
        except Exception as exc:
            if self.retry_alone(exc):
                await asyncio.gather(*(self._alone(item, future) for item, future in batch))
            else:
                for _, future in batch:
                    _settle(future, Failed(exc))
            return
        except BaseException:
            for _, future in batch:
                if not future.done():
                    future.cancel()  # nobody may wait for an outcome that will never come
            raise
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            _settle(future, outcome)

    async def _alone(self, item: ItemT, future: asyncio.Future[ResultT]) -> None:
        try:
            result = await self.flush_one(item)
        except Exception as exc:
            _settle(future, Failed(exc))
        else:
            _settle(future, result)


def _settle(future: asyncio.Future[ResultT], outcome: ResultT | Failed) -> None:
    if future.done():
        return  # its caller gave up; what was flushed stays flushed
    if isinstance(outcome, Failed):
        future.set_exception(outcome.error)
    else:
        future.set_result(outcome)
