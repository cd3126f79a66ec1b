"""Messages and their statuses, as the rest of Notifier sees them."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

DEFAULT_SENDER = "default"  # the sender profile of TWILIO_WHATSAPP_FROM / _MESSAGING_SERVICE_SID


class Channel(enum.StrEnum):
    WHATSAPP = "whatsapp"
    SMS = "sms"


class Status(enum.StrEnum):
    """A message's status; values are Twilio's words where Twilio has one."""

    PENDING = "pending"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    ACCEPTED = "accepted"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    UNDELIVERED = "undelivered"
    CANCELED = "canceled"
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def with_twilio(self) -> bool:
        """Whether Twilio has the message (so it can no longer be canceled here)."""
        return self not in (Status.PENDING, Status.SCHEDULED, Status.CANCELED, Status.EXPIRED)


_TERMINAL = frozenset(
    {Status.READ, Status.FAILED, Status.UNDELIVERED, Status.CANCELED, Status.EXPIRED}
)

# How far along the success path a status is. A failure counts as far as delivery: it
# ends a message that was queued or sent, but never undoes a delivery.
_RANK = {
    Status.PENDING: 0,
    Status.SCHEDULED: 0,
    Status.QUEUED: 1,
    Status.ACCEPTED: 1,
    Status.SENDING: 2,
    Status.SENT: 3,
    Status.DELIVERED: 4,
    Status.FAILED: 4,
    Status.UNDELIVERED: 4,
    Status.READ: 5,
    Status.CANCELED: 6,
    Status.EXPIRED: 6,
}


def moves_forward(current: Status, new: Status) -> bool:
    """Whether a reported status may replace the current one: updates are monotonic,
    so a late or repeated callback never moves a message back (a late "sent" never
    undoes "read"), and nothing leaves a terminal status."""
    if current.is_terminal:
        return False
    return _RANK[new] > _RANK[current]


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A validated request to send one message, ready to be stored.

    Times are epoch milliseconds: exact, portable across databases, and cheap to
    compare in SQL.
    """

    to: str  # E.164, without any channel prefix
    channel: Channel
    body: str | None = None
    content_sid: str | None = None
    variables: dict[str, str] = field(default_factory=dict)
    media_urls: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    send_at_ms: int | None = None
    validity_ms: int | None = None
    expires_at_ms: int | None = None
    idempotency_key: str | None = None
    wait_for_acceptance: bool = False
    sender: str = DEFAULT_SENDER  # the sender profile: its From and its rate limit
    fallback_sms: bool = False  # send one SMS if WhatsApp fails with a fallback code
    fallback_body: str | None = None  # the SMS text; None reuses ``body``

    def payload(self) -> dict[str, object]:
        """What the caller asked for, for comparing idempotent replays.

        The expiry taken from a call's deadline is left out: a retry of the same
        call has a later deadline but asks for the same message.
        """
        return {
            "to": self.to,
            "channel": self.channel.value,
            "body": self.body,
            "content_sid": self.content_sid,
            "variables": dict(sorted(self.variables.items())),
            "media_urls": list(self.media_urls),
            "tags": sorted(self.tags),
            "send_at_ms": self.send_at_ms,
            "validity_ms": self.validity_ms,
            **({"sender": self.sender} if self.sender != DEFAULT_SENDER else {}),
            **(
                {"fallback": {"sms": True, "sms_body": self.fallback_body}}
                if self.fallback_sms
                else {}
            ),
        }


class EventSource(enum.StrEnum):
    """Who put a status event in a message's history (stored, and shown to callers)."""

    API = "api"  # SendMessage and friends stored it, or CancelMessage canceled it
    DISPATCHER = "dispatcher"  # an attempt to hand it to Twilio, or a decision not to try
    CALLBACK = "callback"  # Twilio's status callback about the message's current send
    OTHER_SEND = "callback-other"  # a callback about another Twilio message: history only
    OPERATOR = "operator"  # RetryMessages re-queued it: a new send begins
    RECONCILE = "reconcile"  # fetched from Twilio because its callbacks did not come
    FALLBACK = "fallback"  # an SMS fallback was created for a failed WhatsApp message
    DEFERRAL = "deferral"  # a report deferred the send (63049, 63018): a new send begins


@dataclass(frozen=True, slots=True)
class StatusEvent:
    status: Status
    occurred_at_ms: int
    source: EventSource
    error_code: int | None = None
    applied: bool = True
    actor: str | None = None  # the caller token's name, for an operator's action


@dataclass(frozen=True, slots=True)
class Attempt:
    number: int
    started_at_ms: int
    finished_at_ms: int | None
    outcome: str
    http_status: int | None = None
    error_code: int | None = None
    error_message: str | None = None


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """A stored message, with what Notifier learned about its delivery."""

    id: str
    to: str
    channel: Channel
    status: Status
    created_at_ms: int
    updated_at_ms: int
    body: str | None = None
    content_sid: str | None = None
    variables: dict[str, str] = field(default_factory=dict)
    media_urls: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    twilio_sid: str | None = None
    attempts: int = 0
    error_code: int | None = None
    error_message: str | None = None
    send_at_ms: int | None = None
    expires_at_ms: int | None = None
    next_attempt_at_ms: int | None = None
    traceparent: str | None = None  # W3C trace context of the request that enqueued it
    claims: int = 0  # claims since its last recorded outcome, this one included
    owner: str = ""  # the caller that stored it (per-caller visibility)
    sender: str = DEFAULT_SENDER  # the sender profile it goes out from
    redacted: bool = False  # body, variables and media cleared (NOTIFIER_REDACT_AFTER)
    fallback_sms: bool = False  # the caller asked for an SMS fallback
    fallback_body: str | None = None
    fallback_of: str | None = None  # on a fallback SMS: the WhatsApp message's id
    fallback_reason: str | None = None  # on a fallback SMS: why it was sent
    fallback_id: str | None = None  # on the original: its fallback SMS, once created
    fallback_status: Status | None = None  # ... and that SMS's status


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message with its full history, as GetDeliveryStatus reports it."""

    message: MessageRecord
    events: tuple[StatusEvent, ...] = ()
    attempts: tuple[Attempt, ...] = ()

    def current_send(self) -> tuple[StatusEvent, ...]:
        """The events of the message's current send: from the last RetryMessages on
        (which re-queues it for a new Twilio message), without callbacks about another
        Twilio message. The history keeps them all; step times must not mix sends."""
        start = max(
            (i for i, e in enumerate(self.events) if e.source is EventSource.OPERATOR), default=0
        )
        return tuple(e for e in self.events[start:] if e.source is not EventSource.OTHER_SEND)

    def first_reached(self) -> dict[Status, int]:
        """When each status was first reached in the current send; out-of-order events
        count too (the step happened, even if the status had already moved on)."""
        times: dict[Status, int] = {}
        for event in self.current_send():
            times.setdefault(event.status, event.occurred_at_ms)
        return times

    @property
    def delivery_time_ms(self) -> int | None:
        times = self.first_reached()
        sent, delivered = times.get(Status.SENT), times.get(Status.DELIVERED)
        if sent is None or delivered is None:
            return None
        return max(0, delivered - sent)


@dataclass(frozen=True, slots=True)
class Accepted:
    """The outcome of storing a message."""

    message: MessageRecord
    replayed: bool


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One request to Twilio, as the dispatcher saw it."""

    started_at_ms: int
    finished_at_ms: int
    outcome: str  # "accepted" or an ErrorKind value
    http_status: int | None = None
    error_code: int | None = None
    error_message: str | None = None
    twilio_sid: str | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """What an attempt (or a decision not to try) does to a message.

    ``status`` PENDING with ``retry_at_ms`` puts it back in the outbox for later.
    """

    status: Status
    retry_at_ms: int | None = None
    twilio_sid: str | None = None
    error_code: int | None = None
    error_message: str | None = None


@dataclass(frozen=True, slots=True)
class StatusReport:
    """A status Twilio reported for a message: a status callback, or what a fetch of the
    message from Twilio found (``source`` RECONCILE) when its callbacks did not come."""

    status: Status
    twilio_sid: str
    message_id: str | None = None  # from our StatusCallback URL, when present
    error_code: int | None = None
    error_message: str | None = None
    source: EventSource = EventSource.CALLBACK  # CALLBACK or RECONCILE
    occurred_at_ms: int | None = None  # when it happened, if Twilio said (else: received)


class CallbackResult(enum.StrEnum):
    APPLIED = "applied"  # the message moved to the reported status
    RECORDED = "recorded"  # kept in the history, but out of order: status unchanged
    DUPLICATE = "duplicate"  # this status was already reported for this message
    UNKNOWN = "unknown"  # no such message here


@dataclass(frozen=True, slots=True)
class MessageQuery:
    """Which messages ListMessages, RetryMessages and GetMetrics look at."""

    statuses: tuple[Status, ...] = ()
    to: str | None = None
    tag: str | None = None
    channel: Channel | None = None
    created_after_ms: int | None = None
    created_before_ms: int | None = None
    message_ids: tuple[str, ...] = ()
    sender: str | None = None
    owner: str | None = None  # only this caller's messages; None: every caller's


@dataclass(frozen=True, slots=True)
class Page:
    messages: tuple[MessageRecord, ...]
    next_token: str | None


@dataclass(frozen=True, slots=True)
class RetryOutcome:
    requeued: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]  # (message id, reason)
