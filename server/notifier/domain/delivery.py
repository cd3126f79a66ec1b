"""What an answer from Twilio means for a message: one table, used everywhere.

Transient errors are retried with backoff, permanent ones fail the message at once
with Twilio's code and its meaning, and ambiguous ones (the request may have been
acted on) follow the configured policy: retry (at-least-once) or fail (at-most-once).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from notifier.domain.model import DEFAULT_SENDER


class ErrorKind(enum.StrEnum):
    TRANSIENT = "transient"
    RATE_LIMITED = "rate_limited"  # transient, and the answer says when to come back
    AMBIGUOUS = "ambiguous"
    PERMANENT = "permanent"
    DEFERRED = "deferred"  # transient, but worth trying again only after minutes


# Twilio error code -> (kind, meaning). Sources: Twilio's error dictionary and
# ../shared/twilio/README.md.
TWILIO_CODES: dict[int, tuple[ErrorKind, str]] = {
    20003: (ErrorKind.PERMANENT, "Authentication failed: check the account SID and token"),
    20404: (ErrorKind.PERMANENT, "The requested resource was not found"),
    20429: (ErrorKind.RATE_LIMITED, "Too many requests: Twilio asked to slow down"),
    20500: (ErrorKind.AMBIGUOUS, "Twilio internal error: the message may or may not be sent"),
    20503: (ErrorKind.TRANSIENT, "Twilio service temporarily unavailable"),
    21211: (ErrorKind.PERMANENT, "Invalid 'To' phone number"),
    21408: (ErrorKind.PERMANENT, "Permission to send to this region is not enabled"),
    21602: (ErrorKind.PERMANENT, "Message body is required"),
    21603: (ErrorKind.PERMANENT, "A 'From' phone number is required"),
    21604: (ErrorKind.PERMANENT, "A 'To' phone number is required"),
    21606: (ErrorKind.PERMANENT, "The 'From' number is not a valid sender for this account"),
    21608: (ErrorKind.PERMANENT, "Trial accounts can only send to verified numbers"),
    21610: (ErrorKind.PERMANENT, "The recipient unsubscribed (replied STOP)"),
    21611: (ErrorKind.TRANSIENT, "The sender's queue at Twilio is full"),
    21612: (ErrorKind.PERMANENT, "Twilio cannot route to this number"),
    21614: (ErrorKind.PERMANENT, "'To' is not a valid mobile or WhatsApp number"),
    21617: (ErrorKind.PERMANENT, "The message body exceeds 1,600 characters"),
    21658: (ErrorKind.PERMANENT, "A template variable exceeds the allowed length"),
    21910: (ErrorKind.PERMANENT, "'From' and 'To' are on different channels"),
    30001: (ErrorKind.TRANSIENT, "Queue overflow: too many messages queued at Twilio"),
    30002: (ErrorKind.PERMANENT, "The Twilio account is suspended"),
    30003: (ErrorKind.PERMANENT, "Unreachable destination handset"),
    30004: (ErrorKind.PERMANENT, "Message blocked by the recipient or carrier"),
    30005: (ErrorKind.PERMANENT, "Unknown destination handset"),
    30006: (ErrorKind.PERMANENT, "Landline or unreachable carrier"),
    30007: (ErrorKind.PERMANENT, "Message filtered by the carrier"),
    30008: (ErrorKind.PERMANENT, "Unknown delivery error"),
    30500: (ErrorKind.TRANSIENT, "Twilio internal error; safe to retry"),
    63003: (
        ErrorKind.PERMANENT,
        "The WhatsApp channel could not find the recipient (SMS fallback eligible)",
    ),
    63016: (
        ErrorKind.PERMANENT,
        "Outside the 24-hour WhatsApp window: only approved templates can be sent",
    ),
    63018: (
        ErrorKind.RATE_LIMITED,
        "WhatsApp rate limit for this sender exceeded: retried later under the sender's limit",
    ),
    63021: (ErrorKind.PERMANENT, "The template content is invalid"),
    63024: (
        ErrorKind.PERMANENT,
        "Invalid WhatsApp recipient: the number is not on WhatsApp (SMS fallback eligible; "
        "the number is marked not on WhatsApp)",
    ),
    63032: (
        ErrorKind.PERMANENT,
        "Meta does not deliver to this user now (WhatsApp's marketing experiment): every "
        "retry fails the same way, so none is made (SMS fallback eligible)",
    ),
    63049: (
        ErrorKind.DEFERRED,
        "Meta chose not to deliver this marketing template now (engagement limit): retried "
        "after minutes, up to the message's validity",
    ),
}


def meaning(code: int | None) -> str:
    if code is None:
        return ""
    known = TWILIO_CODES.get(code)
    return known[1] if known else f"Twilio error {code}"


def classify(http_status: int | None, code: int | None) -> ErrorKind:
    """The kind of a failed request, from Twilio's error code or else its HTTP status."""
    if code is not None and code in TWILIO_CODES:
        return TWILIO_CODES[code][0]
    if http_status == 429:
        return ErrorKind.RATE_LIMITED
    if http_status is not None and http_status >= 500:
        return ErrorKind.AMBIGUOUS if http_status == 500 else ErrorKind.TRANSIENT
    return ErrorKind.PERMANENT


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """What the provider needs to hand one message to Twilio."""

    message_id: str
    to: str
    channel: str
    body: str | None
    content_sid: str | None
    variables: dict[str, str]
    media_urls: tuple[str, ...]
    validity_seconds: int | None = None
    sender: str = DEFAULT_SENDER  # the sender profile: which From


@dataclass(frozen=True, slots=True)
class SendReceipt:
    """Twilio accepted the message."""

    sid: str
    status: str  # "queued", "accepted" or "scheduled"


class ProviderError(Exception):
    """Twilio refused, failed, or could not be reached."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        http_status: int | None = None,
        code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.http_status = http_status
        self.code = code
        self.retry_after = retry_after
