"""Records finished sends in batches: one write for every send that ended meanwhile.

Each send ends with a write (its attempt, its new status, its lease given back). One
transaction per send caps dispatch at what the database commits per second (SQLite:
a few hundred fsyncs). The recorder hands a batch to the store as soon as the previous
one is committed (``notifier.batching``), so under load a commit carries every send that
finished while the last one was on its way, and a lone send is written at once.

The semantics are those of one write per send: ``record`` returns only after the
batch holding the result is committed, and only then is the message done (its waiters
told, its slot freed). A crash loses only results not yet committed; their leases run
out and the messages are sent again, exactly as when a crash came before a lone write.
If a batch fails for a reason other than storage being away, each result is written on
its own, so one result the database refuses does not fail the others.
"""

from __future__ import annotations

from collections.abc import Sequence

from notifier.batching import MAX_BATCH, Coalescer
from notifier.domain.errors import StorageUnavailable
from notifier.domain.model import AttemptRecord, Transition
from notifier.domain.ports import AttemptStore

Result = tuple[str, AttemptRecord | None, Transition]


class AttemptRecorder(Coalescer[Result, None]):
    def __init__(self, store: AttemptStore, max_batch: int = MAX_BATCH) -> None:
        super().__init__("attempt-recorder", max_batch)
        self._store = store

    async def record(
        self, message_id: str, attempt: AttemptRecord | None, transition: Transition
    ) -> None:
        """Return once this result is committed (raises what the write raised)."""
        await self.submit((message_id, attempt, transition))

    async def flush(self, items: list[Result]) -> Sequence[None]:
        await self._store.record_attempts(items)
        return [None] * len(items)

    def retry_alone(self, error: Exception) -> bool:
        return not isinstance(error, StorageUnavailable)
