"""The data lifecycle's background loop: redaction and retention in small batches.

Every ``Lifecycle.interval_ms`` (half the allowed overshoot: a tenth of the tightest
limit or one second, whichever is more, capped at an hour) it redacts, then deletes,
batch after batch until a batch comes back short, resting after each batch as long as
the batch took, so requests on this process and its writes go on. Storage trouble is
logged and the next round tries again; nothing here can fail a request.

Beside it, every second, it folds GetMetrics' journal into the rollups
(storage/rollups.py): writers only append to the journal, so none of them waits on a
shared hourly row, and the journal GetMetrics reads beside the rollups stays short.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from notifier.domain.clock import Clock, now_ms
from notifier.domain.errors import StorageUnavailable
from notifier.domain.lifecycle import Lifecycle, Purged
from notifier.domain.ports import LifecycleStore

log = logging.getLogger(__name__)

BATCH = 200  # rows per transaction: a few milliseconds of write lock
FOLD_BATCH = 2000  # journal rows per fold transaction (per table)
FOLD_INTERVAL = 1.0  # seconds between folds


class Purger:
    def __init__(
        self,
        store: LifecycleStore,
        lifecycle: Lifecycle,
        *,
        clock: Clock = now_ms,
        batch: int = BATCH,
    ) -> None:
        self._store = store
        self.lifecycle = lifecycle
        self._clock = clock
        self._batch = batch
        self._task: asyncio.Task[None] | None = None
        self._folder: asyncio.Task[None] | None = None
        self.total = Purged()  # everything this process purged, updated per batch

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="purger")
            self._folder = asyncio.create_task(self._fold_loop(), name="rollup-folder")

    async def close(self) -> None:
        """Stop between batches or mid-batch: a batch is one transaction, so a cancel
        leaves it either committed or rolled back."""
        tasks = [t for t in (self._task, self._folder) if t is not None]
        self._task = self._folder = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def fold(self) -> int:
        """Fold the whole journal into the rollups, batch by batch; rows moved."""
        moved = 0
        while True:
            got = await self._store.fold_rollups(FOLD_BATCH)
            moved += got
            if got < FOLD_BATCH:
                return moved

    async def run_once(self) -> Purged:
        """One round: redact, then delete, until nothing old enough is left."""
        now = self._clock()
        done = Purged()
        if self.lifecycle.redact_after_ms is not None:
            cutoff = now - self.lifecycle.redact_after_ms
            done = _add(done, await self._drain(self._store.redact_batch, cutoff))
        cutoff = now - self.lifecycle.retention_ms
        done = _add(done, await self._drain(self._store.purge_batch, cutoff))
        return done

    async def _drain(self, run: Callable[[int, int], Awaitable[Purged]], cutoff: int) -> Purged:
        """``run`` (redact_batch or purge_batch) until a batch comes back short."""
        done = Purged()
        while True:
            began = time.monotonic()
            got = await run(cutoff, self._batch)
            done = _add(done, got)
            self.total = _add(self.total, got)  # since start, batch by batch
            if max(got.messages, got.redacted, got.inbound) < self._batch:
                return done
            # Rest as long as the batch took: the purge takes at most half the writer
            # (SQLite's single write lock, this event loop), so SendMessage's commits
            # never queue behind more than one batch.
            await asyncio.sleep(min(time.monotonic() - began, 1.0))

    async def _loop(self) -> None:
        while True:
            # First wait, then purge: a starting process leaves its first moments (and
            # SQLite's single writer) to the requests, and within one interval anyway.
            await asyncio.sleep(self.lifecycle.interval_ms / 1000)
            try:
                done = await self.run_once()
                if done.rows or done.redacted:
                    log.info(
                        "lifecycle: redacted %d, deleted %d messages (%d rows), %d inbound",
                        done.redacted,
                        done.messages,
                        done.rows,
                        done.inbound,
                    )
            except StorageUnavailable as exc:
                log.warning("lifecycle purge postponed: %s", exc)

    async def _fold_loop(self) -> None:
        while True:
            await asyncio.sleep(FOLD_INTERVAL)
            try:
                await self.fold()
            except StorageUnavailable as exc:
                log.warning("rollup fold postponed: %s", exc)


def _add(a: Purged, b: Purged) -> Purged:
    return Purged(
        messages=a.messages + b.messages,
        rows=a.rows + b.rows,
        inbound=a.inbound + b.inbound,
        redacted=a.redacted + b.redacted,
    )
