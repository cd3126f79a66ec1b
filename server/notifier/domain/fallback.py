"""When a failed WhatsApp message is sent again by SMS, and who is not on WhatsApp.

One rule for every way a failure is learned (Twilio's synchronous refusal, a status
callback, a fetch by the reconciler): storage asks ``fallback_reason`` in the
transaction that records the failure and inserts the SMS there, so a crash either
keeps both or neither. A failing 63024 also marks the number "not on WhatsApp" for a
while (``marks_not_on_whatsapp``): later WhatsApp sends to it skip WhatsApp
(``skips_whatsapp``) or are refused (``inbound.refusal``).
"""

from __future__ import annotations

from dataclasses import dataclass

from notifier.domain.model import Channel, NewMessage, Status

NOT_ON_WHATSAPP = 63024
DEFAULT_CODES = frozenset({63003, NOT_ON_WHATSAPP, 63032})
DEFAULT_TTL_MS = 30 * 24 * 3600 * 1000
NOT_ON_WHATSAPP_REASON = "not on WhatsApp"
_FAILED = frozenset({Status.FAILED, Status.UNDELIVERED})


@dataclass(frozen=True, slots=True)
class FallbackPolicy:
    """NOTIFIER_SMS_FALLBACK_CODES and NOTIFIER_NOT_ON_WHATSAPP_TTL."""

    codes: frozenset[int] = DEFAULT_CODES
    not_on_whatsapp_ttl_ms: int = DEFAULT_TTL_MS


@dataclass(frozen=True, slots=True)
class FailedSend:
    """A message whose status just became ``status``, as the rule needs to see it."""

    channel: Channel
    status: Status
    error_code: int | None
    wants_sms: bool  # the caller asked for an SMS fallback
    reached_device: bool = False  # DELIVERED or READ was ever reported
    has_fallback: bool = False  # an SMS already stands in for it (or it is one)
    opted_out: bool = False  # the recipient opted out, on either channel


def fallback_reason(send: FailedSend, policy: FallbackPolicy) -> str | None:
    """Why an SMS now stands in for this message ("error 63024"), or None for no SMS.

    Never after the message reached the device (a late failure does not undo that),
    never twice, never to someone who opted out, only for the configured codes.
    """
    if send.channel is not Channel.WHATSAPP or not send.wants_sms:
        return None
    if send.status not in _FAILED or send.error_code not in policy.codes:
        return None
    if send.reached_device or send.has_fallback or send.opted_out:
        return None
    return f"error {send.error_code}"


def marks_not_on_whatsapp(channel: Channel, status: Status, error_code: int | None) -> bool:
    """A WhatsApp send that failed with 63024: the number is not on WhatsApp."""
    return channel is Channel.WHATSAPP and status in _FAILED and error_code == NOT_ON_WHATSAPP


def marked(until_ms: int | None, now_ms: int) -> bool:
    """Whether a not-on-WhatsApp mark is still in force."""
    return until_ms is not None and until_ms > now_ms


def skips_whatsapp(message: NewMessage, not_on_whatsapp_until_ms: int | None, now_ms: int) -> bool:
    """A WhatsApp message with an SMS fallback to a number marked not on WhatsApp goes
    straight to SMS: Meta would refuse it again with 63024."""
    return (
        message.channel is Channel.WHATSAPP
        and message.fallback_sms
        and marked(not_on_whatsapp_until_ms, now_ms)
    )


def sms_body(body: str | None, fallback_body: str | None) -> str:
    """The SMS text: the caller's ``sms_body``, else the WhatsApp free text (validation
    makes sure one of them is there)."""
    return fallback_body or body or ""
