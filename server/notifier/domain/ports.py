"""Every interface the service needs from storage, one narrow protocol per consumer.

The repository (``notifier.storage``) implements the stores, the status feed implements
``StatusWatch``; each consumer names only what it calls, so a fake for a test needs
only those methods:

- ``MessageStore``: the use cases (``domain.service``, ``domain.bulk``)
- ``StorageProbe``: the health checks (``health.StorageHealth``, the sidecar's /readyz)
- ``StatusEventStore``: the status feed (``status_feed.StatusFeed``)
- ``StatusWatch``: what WatchDeliveryStatus reads (``api.service``), the feed's side
- ``AttemptStore``: the attempt recorder (``dispatch.recorder``)
- ``OutboxStore``: the dispatcher (``dispatch.dispatcher``): claims, leases, attempts
- ``SlotStore``: the rate limit shared by replicas (``dispatch.rate_limit``)
- ``CallbackStore``: the webhook sidecar (``webhooks.app``)
- ``ReconcileStore``: the reconciler (``dispatch.reconciler``)
- ``TemplateSource``: the template pre-flight (``domain.preflight``), Twilio's Content API

Nothing here knows of gRPC, SQL or HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from notifier.domain.errors import DomainError
from notifier.domain.inbound import Consent, InboundMessage
from notifier.domain.lifecycle import Erased, Purged
from notifier.domain.metrics import Metrics, MetricsQuery
from notifier.domain.model import (
    Accepted,
    AttemptRecord,
    CallbackResult,
    Delivery,
    MessageQuery,
    MessageRecord,
    NewMessage,
    RetryOutcome,
    Status,
    StatusReport,
    Transition,
)
from notifier.domain.reconcile import Candidate, FetchState
from notifier.domain.templates import Template
from notifier.domain.watch import StatusChange, WatchSpec

# One finished send: the message, its attempt (None: never sent, e.g. expired) and what
# becomes of the message.
AttemptResult = tuple[str, AttemptRecord | None, Transition]


class TwilioCopies(Protocol):
    """Twilio's own copies of our messages (dispatch/twilio.py), for EraseRecipient."""

    async def delete_message(self, sid: str) -> bool:
        """True once Twilio has no copy; False: still in flight there, redact instead."""

    async def redact_message(self, sid: str) -> None:
        """Blank the message's body at Twilio."""


class LifecycleStore(Protocol):
    """The data lifecycle's batches (storage/lifecycle.py). Each is a short transaction
    of its own; a batch that finds another replica purging does nothing."""

    async def redact_batch(self, cutoff_ms: int, limit: int) -> Purged: ...

    async def purge_batch(self, cutoff_ms: int, limit: int) -> Purged: ...

    async def fold_rollups(self, limit: int) -> int:
        """Move metric changes from the journal into the rollups; rows moved."""


class StorageProbe(Protocol):
    async def ping(self) -> None:
        """Raise StorageUnavailable unless storage can take a write now."""


class MessageStore(StorageProbe, Protocol):
    async def erase_recipient(self, to: str) -> Erased:
        """Everything about one E.164 number (storage/lifecycle.py); PreconditionFailed
        while a send to it is in flight."""

    async def twilio_copies(self, to: str) -> list[tuple[str, Status]]:
        """(Twilio SID, our status) of every message Twilio has for ``to``;
        PreconditionFailed while a send to it is in flight."""

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
        self,
        *,
        message_id: str | None = None,
        twilio_sid: str | None = None,
        owner: str | None = None,
    ) -> Delivery:
        """The message with its history; raises NotFound (also for a message of another
        owner than ``owner``, when given)."""

    async def list_messages(
        self, query: MessageQuery, *, limit: int, before_id: str | None
    ) -> list[MessageRecord]:
        """Matching messages, newest first, older than ``before_id`` when given."""

    async def cancel(
        self, message_id: str, *, owner: str | None = None, actor: str | None = None
    ) -> MessageRecord:
        """Cancel a message Twilio does not have yet; raises NotFound, PreconditionFailed.
        ``owner``: only that caller's message; ``actor``: who canceled it, for the history."""

    async def requeue(
        self,
        query: MessageQuery,
        *,
        limit: int,
        validity_ms: int | None,
        actor: str | None = None,
    ) -> RetryOutcome:
        """Put failed, undelivered and expired messages back in the outbox (only
        ``query.owner``'s when set); ``actor`` goes into the history."""

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


class AttemptStore(Protocol):
    async def record_attempts(self, results: Sequence[AttemptResult]) -> None:
        """Store many attempts and their effects on their messages in one transaction."""


class OutboxStore(AttemptStore, Protocol):
    """What the dispatcher needs: claim due messages under a lease, record the sends."""

    async def claim_due(
        self, owner: str, *, limit: int, lease_ms: int, max_claims: int | None = None
    ) -> list[MessageRecord]:
        """Lease up to ``limit`` due messages to ``owner``, oldest due first; with
        ``max_claims``, fail (and return as FAILED) those claimed that often already
        without an outcome (``domain.poison``)."""

    async def release(self, owner: str, ids: list[str]) -> int:
        """Give back leases that were never used, so another worker takes them now."""

    async def attempts_of(self, message_id: str) -> tuple[Status, int]:
        """The message's status and how many attempts it has had."""

    async def opted_out_among(self, pairs: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (channel, address) pairs opted out."""


class SlotStore(Protocol):
    async def take_slots(
        self, sender: str, spacing_us: int, count: int, lead_us: int, restart_us: int
    ) -> tuple[int | None, int, int, list[tuple[int, int]]]:
        """Take ``count`` consecutive slots of the sender if the next one is due within
        ``lead_us``; the sender's next slot then comes one spacing after the last of
        them; a next slot earlier than ``restart_us`` from now first moves on along its grid
        to the first place at least that far ahead.
        Returns (first slot or None when not granted, the next slot, now, the delays
        of the slots taken as (place, not before), removed from the store), all on the
        store's clock in microseconds."""

    async def clock_us(self) -> int:
        """The store's clock, in microseconds."""

    async def delay_slots(self, sender: str, delays: Sequence[tuple[int, int]]) -> None:
        """The slots at these places start no earlier than given (place, not before):
        a replica used the slot N before each late."""


class CallbackStore(StorageProbe, Protocol):
    """What the webhook sidecar needs: Twilio's reports and inbound messages, figures."""

    async def apply_report(self, report: StatusReport) -> tuple[CallbackResult, str | None]:
        """Record a status Twilio reported; move the message only forward. Returns the
        outcome and the message's id (None when the SID is unknown)."""

    async def record_inbound(self, inbound: InboundMessage, consent: Consent | None) -> bool:
        """Store an inbound message and update its sender's window and consent; False
        for a repeat of a message already stored (Twilio retries)."""

    async def status_counts(self) -> tuple[dict[str, int], int, int | None]:
        """(messages per status, due PENDING messages, oldest due PENDING creation time)."""


class ReconcileStore(Protocol):
    """What the reconciler needs: its turn, the messages waiting for news, their fetch
    state, and the callbacks' own path for what a fetch learns."""

    def reconcile_turn(self) -> AbstractAsyncContextManager[bool]:
        """Whether this process may reconcile now (one replica at a time), held for the
        block."""

    async def reconcile_candidates(
        self, *, now_ms: int, after_ms: int, limit: int
    ) -> list[Candidate]:
        """Messages Twilio holds, outcome unknown, no news for ``after_ms``, due a fetch."""

    async def give_up_reconciling(self, *, now_ms: int, give_up_ms: int) -> int:
        """Count the messages without news for ``give_up_ms`` as unconfirmed; how many."""

    async def record_fetches(self, states: Sequence[FetchState]) -> None:
        """Store each fetched message's fetch state."""

    async def apply_report(self, report: StatusReport) -> tuple[CallbackResult, str | None]:
        """Apply what a fetch found exactly as a status callback (``CallbackStore``)."""


class TemplateSource(Protocol):
    async def template(self, content_sid: str) -> Template | None:
        """The template, or None when there is no such template (a 404). Raises
        TemplateUnavailable when the source cannot tell (unreachable, 5xx, 401)."""
