"""The use cases behind the API: what happens to a request once it is in domain terms."""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from notifier.domain.access import OPEN, Caller
from notifier.domain.capacity import OutboxCapacity
from notifier.domain.clock import Clock, now_ms
from notifier.domain.errors import PreconditionFailed, Unsupported, ValidationFailed, Violation
from notifier.domain.lifecycle import Erased
from notifier.domain.metrics import Metrics, MetricsRequest, validate_metrics
from notifier.domain.model import (
    DEFAULT_SENDER,
    Accepted,
    Delivery,
    MessageQuery,
    MessageRecord,
    Page,
    RetryOutcome,
)
from notifier.domain.notifications import (
    AdminNotified,
    AdminRequest,
    Alert,
    OrderRequest,
    settle,
    validate_admin_request,
    validate_order,
)
from notifier.domain.ports import MessageStore, TwilioCopies
from notifier.domain.preflight import TemplatePreflight
from notifier.domain.validation import (
    DEFAULT_RETRY_LIMIT,
    MAX_RETRY_LIMIT,
    MAX_VALIDITY_MS,
    MIN_VALIDITY_MS,
    QueryRequest,
    SendRequest,
    parse_recipient,
    validate_message_id,
    validate_page_size,
    validate_query,
    validate_send,
)


def payload_hash(payload: dict[str, object]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class AcceptanceWaiter(Protocol):
    async def wait_until_handed_over(self, message_id: str) -> None:
        """Return once Twilio accepted or refused the message."""


def _query_hash(query: MessageQuery) -> str:
    return payload_hash({"q": repr(query)})[:16]


def _encode_token(before_id: str, query: MessageQuery) -> str:
    raw = json.dumps({"b": before_id, "q": _query_hash(query)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, query: MessageQuery, bad: list[Violation]) -> str | None:
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        before, digest = str(data["b"]), str(data["q"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        bad.append(Violation("page_token", "is not a next_page_token from ListMessages"))
        return None
    if digest != _query_hash(query):
        bad.append(Violation("page_token", "belongs to a listing with a different filter"))
    return before


@dataclass(slots=True)
class MessageService:
    store: MessageStore
    idempotency_ttl_ms: int = 24 * 3600 * 1000
    clock: Clock = now_ms
    acceptance: AcceptanceWaiter | None = None
    on_accepted: Callable[[], None] = field(default=lambda: None)
    admins: tuple[str, ...] = ()  # E.164 recipients of NotifyOrder and NotifyAdmins
    capacity: OutboxCapacity | None = None  # None: no limit on unsent messages
    senders: frozenset[str] | None = None  # configured sender profiles; None: any name
    twilio: TwilioCopies | None = None  # None: no Twilio account (EraseRecipient at_twilio)
    templates: TemplatePreflight = field(default_factory=TemplatePreflight)

    def _room(self, wanted: int) -> contextlib.AbstractAsyncContextManager[int]:
        """Outbox room for ``wanted`` messages (OutboxFull when there is none)."""
        if self.capacity is None:
            return contextlib.nullcontext(wanted)
        return self.capacity.reserve(wanted)

    async def send(
        self, request: SendRequest, *, caller: Caller = OPEN, traceparent: str | None = None
    ) -> Accepted:
        """``traceparent``: the caller's W3C trace context, stored with the message so
        its send continues the caller's trace (the API layer reads it; the domain only
        carries the string)."""
        message = await self.templates.checked(
            lambda: validate_send(request, self.clock(), self.senders),
            request.content_sid,
            request.variables,
        )
        caller.check_sender(message.sender)
        if message.wait_for_acceptance and self.acceptance is None:
            raise Unsupported("wait_for_acceptance", "this server has no dispatcher to wait for")
        digest = payload_hash(message.payload()) if message.idempotency_key else None
        async with self._room(1):
            accepted = await self.store.add_message(
                message,
                caller=caller.owner,
                request_hash=digest,
                key_ttl_ms=self.idempotency_ttl_ms,
                traceparent=traceparent,
            )
        if not accepted.replayed and message.send_at_ms is None:
            self.on_accepted()
        if message.wait_for_acceptance and self.acceptance is not None:
            await self.acceptance.wait_until_handed_over(accepted.message.id)
            delivery = await self.store.get_delivery(message_id=accepted.message.id)
            return Accepted(delivery.message, accepted.replayed)
        return accepted

    async def delivery(
        self,
        *,
        message_id: str | None = None,
        twilio_sid: str | None = None,
        caller: Caller = OPEN,
    ) -> Delivery:
        """Another caller's message is NotFound to a caller without admin, exactly as a
        message that does not exist: an id reveals nothing."""
        if not message_id and not twilio_sid:
            raise ValidationFailed([Violation("ref", "set message_id or twilio_sid")])
        return await self.store.get_delivery(
            message_id=message_id or None,
            twilio_sid=twilio_sid or None,
            owner=caller.visible_owner,
        )

    async def list_messages(
        self, request: QueryRequest, page_size: int, page_token: str, caller: Caller = OPEN
    ) -> Page:
        bad: list[Violation] = []
        query = validate_query(request, "filter.", bad, self.senders)
        query = replace(query, owner=caller.visible_owner)
        size = validate_page_size(page_size, bad)
        before = _decode_token(page_token, query, bad)
        if bad:
            raise ValidationFailed(bad)
        rows = await self.store.list_messages(query, limit=size + 1, before_id=before)
        page, more = rows[:size], len(rows) > size
        token = _encode_token(page[-1].id, query) if more else None
        return Page(tuple(page), token)

    async def metrics(self, request: MetricsRequest, caller: Caller = OPEN) -> Metrics:
        """One clock reading places the default window and dates the "now" figures, so
        an answer never mixes two different nows."""
        now = self.clock()
        query = replace(validate_metrics(request, now, self.senders), owner=caller.visible_owner)
        return await self.store.metrics(query, now_ms=now)

    async def erase_recipient(self, to: str, *, at_twilio: bool) -> Erased:
        """EraseRecipient: one number's data, both channels (SPEC §12)."""
        number, _, problem = parse_recipient(to, None)
        if problem is not None:
            raise ValidationFailed([Violation("to", problem)])
        deleted = redacted = 0
        if at_twilio:
            if self.twilio is None:
                raise PreconditionFailed(
                    "at_twilio", "NO_TWILIO_ACCOUNT", "this server has no Twilio account to ask"
                )
            # Twilio first: if it fails, nothing is erased here and a retry still
            # knows every SID. Twilio, not our last status, knows whether it is done
            # with a message: ask to delete, and redact what it refuses as in flight.
            for sid, _ in await self.store.twilio_copies(number):
                if not await self.twilio.delete_message(sid):
                    await self.twilio.redact_message(sid)
                    redacted += 1
                else:
                    deleted += 1
        erased = await self.store.erase_recipient(number)
        return dataclasses.replace(erased, twilio_deleted=deleted, twilio_redacted=redacted)

    async def cancel(self, message_id: str, caller: Caller = OPEN) -> MessageRecord:
        bad: list[Violation] = []
        validate_message_id(message_id, "message_id", bad)
        if bad:
            raise ValidationFailed(bad)
        return await self.store.cancel(
            message_id, owner=caller.visible_owner, actor=caller.name or None
        )

    async def retry(
        self,
        message_ids: list[str],
        request: QueryRequest | None,
        limit: int,
        validity_ms: int | None,
        caller: Caller = OPEN,
    ) -> RetryOutcome:
        bad: list[Violation] = []
        if bool(message_ids) == (request is not None):
            bad.append(Violation("message_ids", "give either message_ids or a filter"))
        for i, mid in enumerate(message_ids):
            validate_message_id(mid, f"message_ids[{i}]", bad)
        if len(message_ids) > MAX_RETRY_LIMIT:
            bad.append(Violation("message_ids", f"at most {MAX_RETRY_LIMIT:,} ids"))
        query = (
            validate_query(request, "filter.", bad, self.senders) if request is not None else None
        )
        if not 0 <= limit <= MAX_RETRY_LIMIT:
            bad.append(Violation("limit", f"must be between 1 and {MAX_RETRY_LIMIT:,}"))
        if validity_ms is not None and not MIN_VALIDITY_MS <= validity_ms <= MAX_VALIDITY_MS:
            bad.append(Violation("validity", "must be between 1 second and 30 days"))
        if bad:
            raise ValidationFailed(bad)
        if query is None:
            query = MessageQuery(message_ids=tuple(dict.fromkeys(message_ids)))
        outcome = await self.store.requeue(
            replace(query, owner=caller.visible_owner),
            limit=limit or DEFAULT_RETRY_LIMIT,
            validity_ms=validity_ms,
            actor=caller.name or None,
        )
        if outcome.requeued:
            self.on_accepted()
        return outcome

    async def notify_order(
        self, request: OrderRequest, *, caller: Caller = OPEN, traceparent: str | None = None
    ) -> AdminNotified:
        """Send the new-order alert to every admin; idempotent per order id.

        Each admin's message has the key ``order:{order_id}:{admin}`` and the hash of
        the whole validated order, so a retried order event gets the first result
        (``replayed``) and sends nothing, and the same order id with other contents
        is ALREADY_EXISTS. Partial refusals are handled by ``settle``.
        """
        alert = await self.templates.checked(
            lambda: validate_order(request), request.content_sid, request.variables
        )
        return await self._notify(alert, caller, traceparent)

    async def notify_admins(
        self, request: AdminRequest, *, caller: Caller = OPEN, traceparent: str | None = None
    ) -> AdminNotified:
        """Booking, low stock, event capacity or custom alert to every admin, keyed
        ``admin:{kind}:{key}:{admin}`` (key: idempotency_key or the natural id)."""
        alert = await self.templates.checked(
            lambda: validate_admin_request(request), request.content_sid, request.variables
        )
        return await self._notify(alert, caller, traceparent)

    async def _notify(self, alert: Alert, caller: Caller, traceparent: str | None) -> AdminNotified:
        """All admins' messages go into one transaction: either every admin's copy is
        stored or none is, so a crash never leaves an order half-notified and a retry
        finds all of them. The input is checked before the configuration, so a caller
        learns about a bad request even on a server without admins."""
        caller.check_sender(DEFAULT_SENDER)  # admin alerts go out from the default sender
        admins = tuple(dict.fromkeys(self.admins))
        if not admins:
            raise PreconditionFailed(
                subject="ADMIN_WHATSAPP_NUMBERS",
                kind="NO_ADMINS",
                description="no admin recipients configured: set ADMIN_WHATSAPP_NUMBERS",
            )
        digest = payload_hash(alert.payload) if alert.key is not None else None
        async with self._room(len(admins)):  # every admin's copy or none
            results = await self.store.add_messages(
                [(alert.message_to(admin), digest) for admin in admins],
                caller=caller.owner,
                key_ttl_ms=self.idempotency_ttl_ms,
                traceparent=traceparent,
            )
        notified = settle(admins, results)
        if not notified.replayed:
            self.on_accepted()
        return notified
