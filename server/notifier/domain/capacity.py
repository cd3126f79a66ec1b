"""Backpressure: new messages are refused while the outbox is over its capacity.

When Twilio is down or slow for hours, callers keep sending and the outbox grows
without bound until the database fills and everything fails, old messages included.
A capacity (``NOTIFIER_OUTBOX_CAPACITY`` unsent messages: pending and scheduled) turns
that into a clear, retryable refusal (RESOURCE_EXHAUSTED with a retry delay) with
nothing stored, while the messages already accepted keep going out.

Counting a million rows on every call would itself load the database, so the count is
cached: read at most every ``refresh_seconds`` in the background, plus the messages
this process admitted since. How far over the capacity the outbox can get:

- one process: not at all. Room is reserved before the insert and counted until a
  count that started after the insert committed, so the estimate never runs low;
- several replicas: each learns of the others' messages only at its next count, so
  the outbox can exceed the capacity by about one refresh interval of the other
  replicas' intake (with a full outbox, the messages they accepted in that second).

The estimate errs high (replays and refused items count until the next count, and
the dispatcher's progress shows up only then), so it refuses a little early rather
than late.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from notifier.domain.errors import DomainError, StorageUnavailable

log = logging.getLogger(__name__)


class OutboxFull(DomainError):
    def __init__(self, capacity: int, retry_after_seconds: float) -> None:
        self.capacity = capacity
        self.retry_after_seconds = retry_after_seconds
        super().__init__(
            f"the outbox is full ({capacity:,} unsent messages, NOTIFIER_OUTBOX_CAPACITY): "
            f"nothing was stored; retry in {retry_after_seconds:g}s"
        )


class OutboxCapacity:
    """Admits new messages while the (cached) unsent count is under ``capacity``."""

    def __init__(
        self,
        count_unsent: Callable[[], Awaitable[int]],
        capacity: int,
        *,
        refresh_seconds: float = 1.0,
        retry_after_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._count_unsent = count_unsent
        self.capacity = capacity
        self.refresh_seconds = refresh_seconds
        self.retry_after_seconds = retry_after_seconds
        self._clock = clock
        self._counted: int | None = None
        self._counted_at = 0.0
        self._reserved = 0  # admitted, insert not finished yet
        self._inserted = 0  # insert finished since the count in _counted started
        self._first = asyncio.Lock()
        self._refreshing: asyncio.Task[None] | None = None

    @property
    def estimate(self) -> int | None:
        """Unsent messages as this process believes; None before the first count."""
        if self._counted is None:
            return None
        return self._counted + self._inserted + self._reserved

    async def _refresh(self) -> None:
        inserted_before = self._inserted
        counted = await self._count_unsent()
        # Inserts finished before the count started are in it; those that finished
        # during it may or may not be, so they stay added, as do unfinished ones.
        self._counted = counted
        self._inserted -= inserted_before
        self._counted_at = self._clock()

    async def _background_refresh(self) -> None:
        try:
            await self._refresh()
        except StorageUnavailable as exc:
            # The request path reports storage trouble; keep the last estimate.
            log.warning("cannot count the outbox: %s", exc)

    async def _fresh(self) -> None:
        if self._counted is None:
            async with self._first:
                if self._counted is None:
                    await self._refresh()
            return
        stale = self._clock() - self._counted_at >= self.refresh_seconds
        if stale and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.create_task(self._background_refresh())

    async def current(self) -> int | None:
        """The estimate, counted first if never counted and refreshed in the background
        once stale (metrics read it: never a count per scrape)."""
        await self._fresh()
        return self.estimate

    @contextlib.asynccontextmanager
    async def reserve(self, wanted: int, *, partial: bool = False) -> AsyncIterator[int]:
        """Room for ``wanted`` new messages while they are inserted; yields how many fit.

        All or nothing (OutboxFull) unless ``partial``, which grants what fits. Insert
        the granted messages inside the block.
        """
        await self._fresh()
        room = self.capacity - (self.estimate or 0)
        granted = max(0, min(wanted, room)) if partial else wanted
        if granted > room:
            raise self.full()
        self._reserved += granted
        try:
            yield granted
        finally:
            self._reserved -= granted
            self._inserted += granted

    def full(self) -> OutboxFull:
        return OutboxFull(self.capacity, self.retry_after_seconds)

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refreshing
