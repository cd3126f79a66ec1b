"""The narrow interface the domain needs from storage."""

from __future__ import annotations

from typing import Protocol

from notifier.domain.model import (
    Accepted,
    Delivery,
    MessageQuery,
    MessageRecord,
    NewMessage,
    RetryOutcome,
)


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
