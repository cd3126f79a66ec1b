"""The status feed behind WatchDeliveryStatus: one shared poller per process.

Status events are written by this process (the API, the dispatcher) and by the webhook
sidecar, which may run in another process against the same database. So the feed reads
the ``status_events`` table itself instead of listening to anything in memory: one task
per process asks the database for events newer than its cursor and hands each one to the
watches it matches. Many watchers cost one query per poll, not one each.

Each watch has a bounded queue. A watcher that reads too slowly and lets its queue fill
is dropped with FellBehind (RESOURCE_EXHAUSTED "watch fell behind; reopen it"), so one
slow client can neither hold up the others nor make the server buffer without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from notifier.domain.errors import DomainError, NotFound, StorageUnavailable
from notifier.domain.ports import StatusEventStore
from notifier.domain.watch import FeedClosed, FellBehind, StatusChange, WatchSpec
from notifier.telemetry import untraced

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 1_000
DEFAULT_BATCH_SIZE = 500
# Missing ids behind the cursor tracked at most (more: the oldest are given up).
_MAX_GAPS = 10_000
# After an unexpected failure, poll no faster than this, so a persistent fault does
# not fill the log several times a second.
_FAILURE_PAUSE_SECONDS = 1.0


@dataclass(eq=False, slots=True)
class _Subscriber:
    spec: WatchSpec
    after_id: int
    """Events up to this id were stored before the watch opened: not news to it."""
    queue: asyncio.Queue[StatusChange | DomainError]
    seen: dict[str, int] = field(default_factory=dict)
    """Per message: events up to this id were already in the include_current snapshot."""


class StatusFeed:
    """Polls ``status_events`` while anyone watches, and fans events out to watches.

    The cursor is the id of the last event read. On SQLite, event ids are handed out
    under the single write lock (every process writes with ``BEGIN IMMEDIATE``), so rows
    become visible in id order and the cursor never skips one. On PostgreSQL, sequence
    values can commit out of order (a transaction that took id 7 may commit after the
    one that took id 8), so with ``gap_grace_seconds`` > 0 the feed remembers the ids it
    jumped over and asks for them again on each poll until they appear or the grace
    runs out (an id of a rolled-back insert never appears). No event is lost, and none
    is handed out twice.

    The sleep between polls ends early on ``wake()``: on PostgreSQL the LISTEN/NOTIFY
    listener calls it when events are stored, in any process, and the poll interval
    then only bounds the delay when a notification is lost.
    """

    def __init__(
        self,
        store: StatusEventStore,
        poll_seconds: float = 0.2,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        batch_size: int = DEFAULT_BATCH_SIZE,
        gap_grace_seconds: float = 0.0,
    ) -> None:
        self._store = store
        self.gap_grace_seconds = gap_grace_seconds
        self._gaps: dict[int, float] = {}  # id missing behind the cursor -> noticed at
        self.poll_seconds = poll_seconds
        self.queue_size = queue_size
        """Changes buffered per watch before it counts as fallen behind."""
        self.batch_size = batch_size
        self._cursor = 0
        self._subscribers: list[_Subscriber] = []
        self._by_id: dict[str, dict[_Subscriber, None]] = {}
        self._by_tag: dict[str, dict[_Subscriber, None]] = {}
        # Held while polling and fanning out, and while a watch joins: a joining watch
        # then sees exactly the events after the newest one when it joined.
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._active = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def wake(self) -> None:
        """Poll now instead of at the end of the interval (new events are known to exist)."""
        self._wake.set()

    async def watch(self, spec: WatchSpec) -> AsyncGenerator[StatusChange, None]:
        """The changes ``spec`` asks for, until the caller stops iterating.

        Raises NotFound before anything else when an id does not exist (ids are assigned
        by the server, so it cannot appear later), FellBehind when the caller's queue
        fills, FeedClosed when the server shuts down.
        """
        sub = await self._subscribe(spec)
        try:
            # Read after joining, so a change stored meanwhile is in the snapshot or in
            # the queue (or both: ``seen`` then drops the queued copy), never in neither.
            current = await self._store.current_states(spec.message_ids)
            # Another caller's message is unknown to this one, exactly like a missing id.
            current = [c for c in current if spec.visible(c.message)]
            found = {c.message.id for c in current}
            unknown = [m for m in spec.message_ids if m not in found]
            if unknown:
                raise NotFound("message" if len(unknown) == 1 else "messages", ", ".join(unknown))
            if spec.include_current:
                for change in current:
                    sub.seen[change.message.id] = change.event_id
                    yield change
            while True:
                item = await sub.queue.get()
                if isinstance(item, DomainError):
                    raise item
                if item.event_id > sub.seen.get(item.message.id, 0):
                    yield item
        finally:
            self._unsubscribe(sub)

    async def close(self) -> None:
        """End every watch with FeedClosed and stop polling; later watches are refused."""
        self._closed = True
        for sub in list(self._subscribers):
            self._drop(sub, FeedClosed())
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _subscribe(self, spec: WatchSpec) -> _Subscriber:
        if self._closed:
            raise FeedClosed()
        async with self._lock:
            after = await self._store.last_event_id()
            if not self._subscribers:
                self._cursor = after  # idle until now: nothing older is news to anyone
                self._gaps.clear()
            sub = _Subscriber(spec, after, asyncio.Queue(self.queue_size))
            self._subscribers.append(sub)
            for mid in spec.message_ids:
                self._by_id.setdefault(mid, {})[sub] = None
            if spec.tag is not None:
                self._by_tag.setdefault(spec.tag, {})[sub] = None
        self._active.set()
        if self._task is None:
            # Started by the first watch call, but polls for every watch: not in its trace.
            with untraced():
                self._task = asyncio.create_task(self._run(), name="status-feed")
        return sub

    def _unsubscribe(self, sub: _Subscriber) -> None:
        if sub not in self._subscribers:
            return  # dropped already
        self._subscribers.remove(sub)
        for index, keys in ((self._by_id, sub.spec.message_ids), (self._by_tag, (sub.spec.tag,))):
            for key in keys:
                if key is None:
                    continue
                subs = index.get(key)
                if subs is not None:
                    subs.pop(sub, None)
                    if not subs:
                        del index[key]

    def _drop(self, sub: _Subscriber, error: DomainError) -> None:
        """End ``sub``'s watch with ``error`` now: its undelivered changes are discarded."""
        self._unsubscribe(sub)
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(error)

    async def _run(self) -> None:
        while not self._closed:
            if not self._subscribers:
                self._active.clear()
                await self._active.wait()  # no query at all while nobody watches
                continue
            pause = self.poll_seconds
            try:
                async with self._lock:
                    more = await self._poll_once()
                if more:
                    continue  # a full batch: catch up before sleeping
            except StorageUnavailable as exc:
                log.warning("status feed: storage unavailable, retrying: %s", exc)
                pause = max(pause, _FAILURE_PAUSE_SECONDS)
            except Exception:
                log.exception("status feed: poll failed, retrying")
                pause = max(pause, _FAILURE_PAUSE_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), pause)
            self._wake.clear()

    async def _poll_once(self) -> bool:
        """Read one batch past the cursor and hand it out; True when the batch was full."""
        if not self._subscribers:
            return False
        late = await self._late_events()
        changes = await self._store.events_after(self._cursor, limit=self.batch_size)
        for change in late:
            self._hand_out(change)
        for change in changes:
            if self.gap_grace_seconds > 0 and change.event_id > self._cursor + 1:
                noticed = time.monotonic()
                for missing in range(
                    self._cursor + 1, min(change.event_id, self._cursor + 1 + _MAX_GAPS)
                ):
                    self._gaps[missing] = noticed
            self._cursor = max(self._cursor, change.event_id)
            self._hand_out(change)
        return len(changes) >= self.batch_size

    async def _late_events(self) -> list[StatusChange]:
        """Events that appeared behind the cursor since we jumped over their ids."""
        if not self._gaps:
            return []
        expired = time.monotonic() - self.gap_grace_seconds
        for event_id, noticed in list(self._gaps.items()):
            if noticed < expired:
                del self._gaps[event_id]
        if len(self._gaps) > _MAX_GAPS:
            for event_id in sorted(self._gaps)[: len(self._gaps) - _MAX_GAPS]:
                del self._gaps[event_id]
        if not self._gaps:
            return []
        found = await self._store.events_with_ids(sorted(self._gaps))
        for change in found:
            self._gaps.pop(change.event_id, None)
        return found

    def _hand_out(self, change: StatusChange) -> None:
        for sub in self._interested(change):
            if change.event_id <= sub.after_id:
                continue
            try:
                sub.queue.put_nowait(change)
            except asyncio.QueueFull:
                log.info(
                    "status feed: dropping a watch that fell behind (%d changes queued)",
                    sub.queue.qsize(),
                )
                self._drop(sub, FellBehind())

    def _interested(self, change: StatusChange) -> list[_Subscriber]:
        found: dict[_Subscriber, None] = dict(self._by_id.get(change.message.id, {}))
        for tag in change.message.tags:
            found.update(self._by_tag.get(tag, {}))
        # A tag watch without admin sees only its own caller's messages.
        return [sub for sub in found if sub.spec.visible(change.message)]
