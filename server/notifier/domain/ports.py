"""The narrow interface the domain needs from storage."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Protocol

from notifier.domain.errors import DomainError
from notifier.domain.metrics import Metrics, MetricsQuery
from notifier.domain.model import (
    Accepted,
    Delivery,
    MessageQuery,
    MessageRecord,
    NewMessage,
    RetryOutcome,
)
from notifier.domain.watch import StatusChange, WatchSpec


class MessageStore(Protocol):
    async def ping(self) -> None:
        """Raise StorageUnavailable unless storage can take a write now."""

    async def add_message(
        self,
        message: NewMessage,
        *,
        caller: str,
        request_hash: str | None,
        key_ttl_ms: int,
        traceparent: str | None = None,
    ) -> Accepted:
        """Store ``message`` (or return the one its idempotency key already names).

        Raises IdempotencyConflict when the key names a message with another hash.
        """

    async def add_messages(
        self,
        items: Sequence[tuple[NewMessage, str | None]],
        *,
        caller: str,
        key_ttl_ms: int,
        traceparent: str | None = None,
        priority: int = 0,
    ) -> list[Accepted | DomainError]:
        """Store many messages in one transaction; one result (or error) per item."""

    async def get_delivery(
        self, *, message_id: str | None = None, twilio_sid: str | None = None
    ) -> Delivery:
        """The message with its history; raises NotFound."""

    async def list_messages(
        self, query: MessageQuery, *, limit: int, before_id: str | None
    ) -> list[MessageRecord]:
        """Matching messages, newest first, older than ``before_id`` when given."""

    async def cancel(self, message_id: str) -> MessageRecord:
        """Cancel a message Twilio does not have yet; raises NotFound, PreconditionFailed."""

    async def requeue(
        self, query: MessageQuery, *, limit: int, validity_ms: int | None
    ) -> RetryOutcome:
        """Put failed, undelivered and expired messages back in the outbox."""

    async def metrics(self, query: MetricsQuery, *, now_ms: int) -> Metrics:
        """The figures of ``query``'s window, aggregated by the database.

        ``now_ms`` is the caller's clock reading, the same one that placed the default
        window, for the "now" figures (queue depth, oldest pending age).
        """


class StatusEventStore(Protocol):
    """What a status feed reads: the status events table, in the order rows were stored."""

    async def last_event_id(self) -> int:
        """The id of the newest status event (0 when there is none)."""

    async def events_after(
        self,
        after_id: int,
        *,
        limit: int,
        message_ids: Sequence[str] = (),
        tag: str | None = None,
    ) -> list[StatusChange]:
        """Events with id > ``after_id``, oldest first, each with its message (and tags).

        Without ``message_ids`` or ``tag`` every event; with them, events of those
        messages or of messages carrying the tag.
        """

    async def events_with_ids(self, event_ids: Sequence[int]) -> list[StatusChange]:
        """Those of ``event_ids`` that exist now, oldest first (ids a feed jumped over
        because their transactions had not committed yet)."""

    async def current_states(self, message_ids: Sequence[str]) -> list[StatusChange]:
        """Each existing message of ``message_ids`` with its latest event, in the order
        given; unknown ids are left out."""


class StatusWatch(Protocol):
    """A stream of status changes for one watch (WatchDeliveryStatus)."""

    def watch(self, spec: WatchSpec) -> AsyncGenerator[StatusChange, None]:
        """Raise NotFound for unknown ids before the first change; then (with
        include_current) the current state of each id, then every matching change in
        the order stored, until the caller stops iterating. Raises FellBehind when the
        caller reads too slowly, FeedClosed when the server shuts down."""
