"""Records finished sends in batches: one write for every send that ended meanwhile.

Each send ends with a write (its attempt, its new status, its lease given back). One
transaction per send caps dispatch at what the database commits per second (SQLite:
a few hundred fsyncs). The recorder hands a batch to the store as soon as the previous
one is committed, so under load a commit carries every send that finished while the
last one was on its way, and a lone send is written at once.

The semantics are those of one write per send: ``record`` returns only after the
batch holding the result is committed, and only then is the message done (its waiters
told, its slot freed). A crash loses only results not yet committed; their leases run
out and the messages are sent again, exactly as when a crash came before a lone write.
If the write fails, every caller in the batch gets the error and retries on its own.
"""

from __future__ import annotations

import asyncio

from notifier.domain.model import AttemptRecord, Transition
from notifier.domain.ports import AttemptStore

Result = tuple[str, AttemptRecord | None, Transition]

MAX_BATCH = 256


class AttemptRecorder:
    def __init__(self, store: AttemptStore, max_batch: int = MAX_BATCH) -> None:
        self._store = store
        self._max_batch = max_batch
        self._queue: list[tuple[Result, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(
        self, message_id: str, attempt: AttemptRecord | None, transition: Transition
    ) -> None:
        """Return once this result is committed (raises what the write raised)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(((message_id, attempt, transition), done))
        if self._writer is None or self._writer.done():
            # Its own task: a send cancelled at shutdown must not cancel the others' write.
            self._writer = asyncio.create_task(self._drain(), name="attempt-recorder")
        await done

    async def _drain(self) -> None:
        while self._queue:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            try:
                await self._store.record_attempts([result for result, _ in batch])
            except Exception as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)
