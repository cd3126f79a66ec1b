"""SendBulk: many recipients in one stream, committed in batches, answered per item.

Flow control is real because nothing here buffers without bound: the reader takes the
next request from the caller only while fewer than ``max_pending`` items wait to be
committed, so a slow database stops the reading, gRPC's window fills, and the caller's
writes wait. A bad item gets its own error result and never ends the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from notifier.domain.access import OPEN, Caller, SenderNotAllowed
from notifier.domain.capacity import OutboxCapacity, OutboxFull
from notifier.domain.clock import Clock, now_ms
from notifier.domain.errors import (
    DomainError,
    IdempotencyConflict,
    PreconditionFailed,
    ValidationFailed,
    Violation,
)
from notifier.domain.model import Accepted, Channel
from notifier.domain.ports import MessageStore
from notifier.domain.preflight import TemplatePreflight
from notifier.domain.validation import SendRequest, validate_send


@dataclass(frozen=True, slots=True)
class BulkDefaults:
    channel: Channel | None = None
    body: str | None = None
    content_sid: str | None = None
    variables: Mapping[str, str] = field(default_factory=dict)
    media_urls: Sequence[str] = ()
    tags: Sequence[str] = ()
    send_at_ms: int | None = None
    validity_ms: int | None = None
    sender: str = ""
    fallback_sms: bool = False  # every item's SMS fallback (SendMessageRequest.fallback)
    fallback_body: str = ""


@dataclass(frozen=True, slots=True)
class BulkItem:
    correlation_id: str
    to: str
    variables: Mapping[str, str] = field(default_factory=dict)
    body: str | None = None
    content_sid: str | None = None
    media_urls: Sequence[str] = ()
    idempotency_key: str = ""
    tags: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class BulkRequest:
    """One message of the caller's stream: new defaults (or None) and some items."""

    defaults: BulkDefaults | None
    items: Sequence[BulkItem]


@dataclass(frozen=True, slots=True)
class ItemFailure:
    code: str  # a gRPC status code name
    message: str
    violations: tuple[Violation, ...] = ()


@dataclass(frozen=True, slots=True)
class BulkResult:
    correlation_id: str
    index: int
    outcome: Accepted | ItemFailure


def merge(defaults: BulkDefaults, item: BulkItem) -> SendRequest:
    """The item's own content replaces the shared one; its variables and tags add to it."""
    own = item.body is not None or item.content_sid is not None
    content_sid = item.content_sid if own else defaults.content_sid
    # Shared variables belong to the shared template; an item's own text takes none.
    shared = defaults.variables if content_sid is not None else {}
    return SendRequest(
        to=item.to,
        channel=defaults.channel,
        body=item.body if own else defaults.body,
        content_sid=content_sid,
        variables={**shared, **item.variables},
        media_urls=list(item.media_urls or ([] if own else defaults.media_urls)),
        idempotency_key=item.idempotency_key,
        tags=[*defaults.tags, *item.tags],
        send_at_ms=defaults.send_at_ms,
        validity_ms=defaults.validity_ms,
        sender=defaults.sender,
        fallback_sms=defaults.fallback_sms,
        fallback_body=defaults.fallback_body,
    )


def failure(error: DomainError) -> ItemFailure:
    if isinstance(error, ValidationFailed):
        return ItemFailure("INVALID_ARGUMENT", str(error), tuple(error.violations))
    if isinstance(error, IdempotencyConflict):
        return ItemFailure("ALREADY_EXISTS", str(error))
    if isinstance(error, PreconditionFailed):
        return ItemFailure("FAILED_PRECONDITION", str(error))
    if isinstance(error, OutboxFull):
        return ItemFailure("RESOURCE_EXHAUSTED", str(error))
    if isinstance(error, SenderNotAllowed):
        return ItemFailure("PERMISSION_DENIED", str(error))
    return ItemFailure("FAILED_PRECONDITION", str(error))


_END = object()
# Bulk messages queue behind single sends (priority 0): a 10,000-recipient campaign goes
# out at the rate limit without making an OTP sent meanwhile wait for all of it.
BULK_PRIORITY = 1


@dataclass(slots=True)
class BulkSender:
    store: MessageStore
    payload_hash: Callable[[dict[str, object]], str]
    idempotency_ttl_ms: int
    on_accepted: Callable[[], None]
    clock: Clock = now_ms
    batch_size: int = 500
    max_pending: int = 2000
    linger_seconds: float = 0.005
    # Items over the outbox capacity get their own RESOURCE_EXHAUSTED result and the
    # stream goes on: the caller knows exactly which items to send again later, where
    # ending the stream would leave the fate of the items in flight unknown.
    capacity: OutboxCapacity | None = None
    senders: frozenset[str] | None = None  # configured sender profiles; None: any name
    templates: TemplatePreflight = field(default_factory=TemplatePreflight)

    async def run(
        self,
        requests: AsyncIterator[BulkRequest],
        caller: Caller = OPEN,
        traceparent: str | None = None,
    ) -> AsyncIterator[list[BulkResult]]:
        """Yield the results of each committed batch, items in the order they came.

        Every message of the stream stores ``traceparent`` (the stream's trace context),
        so all their sends belong to the trace of the call that enqueued them.
        """
        # The queue itself is unbounded so the end marker can always be put without
        # waiting; ``slots`` is what bounds the items waiting for storage.
        queue: asyncio.Queue[object] = asyncio.Queue()
        slots = asyncio.Semaphore(self.max_pending)
        reader = asyncio.create_task(self._read(requests, queue, slots))
        try:
            while batch := await self._next_batch(queue, slots):
                yield await self._commit(batch, caller, traceparent)
            await reader  # surface a broken request stream
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read(
        self,
        requests: AsyncIterator[BulkRequest],
        queue: asyncio.Queue[object],
        slots: asyncio.Semaphore,
    ) -> None:
        defaults = BulkDefaults()
        index = 0
        try:
            async for request in requests:
                if request.defaults is not None:
                    defaults = request.defaults
                for item in request.items:
                    await slots.acquire()  # waits while max_pending items wait for storage
                    queue.put_nowait((index, item, defaults))
                    index += 1
        finally:
            queue.put_nowait(_END)  # never blocks, even on cancellation or a broken stream

    async def _next_batch(
        self, queue: asyncio.Queue[object], slots: asyncio.Semaphore
    ) -> list[tuple[int, BulkItem, BulkDefaults]]:
        batch: list[tuple[int, BulkItem, BulkDefaults]] = []
        first = await queue.get()
        if first is _END:
            return batch
        batch.append(first)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.linger_seconds
        while len(batch) < self.batch_size:
            try:
                entry = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    entry = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            if entry is _END:
                queue.put_nowait(_END)  # seen again by the next call, which ends the run
                break
            batch.append(entry)  # type: ignore[arg-type]
        for _ in batch:
            slots.release()
        return batch

    async def _commit(
        self,
        batch: list[tuple[int, BulkItem, BulkDefaults]],
        caller: Caller,
        traceparent: str | None,
    ) -> list[BulkResult]:
        now = self.clock()
        outcomes: list[Accepted | ItemFailure | None] = []
        valid = []
        positions = []  # where each valid item's outcome goes
        for _, item, defaults in batch:
            request = merge(defaults, item)
            try:
                message = await self.templates.checked(
                    functools.partial(validate_send, request, now, self.senders),
                    request.content_sid,
                    request.variables,
                )
                caller.check_sender(message.sender)
            except (ValidationFailed, SenderNotAllowed) as exc:
                outcomes.append(failure(exc))
                continue
            digest = self.payload_hash(message.payload()) if message.idempotency_key else None
            valid.append((message, digest))
            positions.append(len(outcomes))
            outcomes.append(None)
        room: contextlib.AbstractAsyncContextManager[int] = contextlib.nullcontext(len(valid))
        if valid and self.capacity is not None:
            room = self.capacity.reserve(len(valid), partial=True)
        async with room as granted:
            if granted < len(valid):
                assert self.capacity is not None
                full = failure(self.capacity.full())
                for position in positions[granted:]:
                    outcomes[position] = full
                valid = valid[:granted]
            stored = iter(
                await self.store.add_messages(
                    valid,
                    caller=caller.owner,
                    key_ttl_ms=self.idempotency_ttl_ms,
                    traceparent=traceparent,
                    priority=BULK_PRIORITY,
                )
                if valid
                else []
            )
        results = []
        for (index, item, _), outcome in zip(batch, outcomes, strict=True):
            if outcome is None:
                done = next(stored)
                outcome = failure(done) if isinstance(done, DomainError) else done
            results.append(BulkResult(item.correlation_id, index, outcome))
        if valid:
            self.on_accepted()
        return results
