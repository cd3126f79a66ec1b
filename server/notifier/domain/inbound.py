"""Messages recipients send us, and what they mean for later sends.

An inbound message opens the recipient's 24-hour WhatsApp customer-service window; a
message that is exactly an opt-out keyword stops further sends to them until they
send an opt-in keyword.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from notifier.domain.errors import PreconditionFailed
from notifier.domain.fallback import marked
from notifier.domain.model import Channel, NewMessage

WINDOW_MS = 24 * 3600 * 1000


class Consent(enum.StrEnum):
    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"


@dataclass(frozen=True, slots=True)
class InboundMessage:
    message_sid: str
    from_addr: str  # E.164, without the channel prefix
    to_addr: str
    channel: str
    body: str
    media: tuple[tuple[str, str], ...] = ()  # (url, content type)
    profile_name: str | None = None
    wa_id: str | None = None


@dataclass(frozen=True, slots=True)
class Keywords:
    opt_out: frozenset[str] = field(default_factory=frozenset)
    opt_in: frozenset[str] = field(default_factory=frozenset)

    def consent(self, body: str) -> Consent | None:
        """A message that is just a keyword (any case, surrounding spaces and a final
        period ignored) changes consent; a keyword inside a sentence does not."""
        word = body.strip().rstrip(".!").strip().upper()
        if word in self.opt_out:
            return Consent.OPT_OUT
        if word in self.opt_in:
            return Consent.OPT_IN
        return None


@dataclass(frozen=True, slots=True)
class RecipientState:
    """What storage knows of a recipient on one channel."""

    opted_out: bool = False
    last_inbound_at_ms: int | None = None  # when they last wrote to us
    not_on_whatsapp_until_ms: int | None = None  # a 63024 marked them (WhatsApp row only)


def refusal(
    message: NewMessage, state: RecipientState | None, now_ms: int, *, window_only: bool
) -> PreconditionFailed | None:
    """Why ``message`` must not be accepted, if it must not: the recipient opted out, or
    (``window_only``: NOTIFIER_REFUSE_OUTSIDE_WINDOW) it is free-form WhatsApp text to
    someone who has not written in the last 24 hours, which only a template may reach."""
    state = state or RecipientState()
    if state.opted_out:
        return PreconditionFailed(
            message.to,
            "OPTED_OUT",
            f"{message.to} opted out (sent an opt-out keyword); "
            "nothing is sent until they opt in again",
        )
    if (
        message.channel is Channel.WHATSAPP
        and not message.fallback_sms
        and marked(state.not_on_whatsapp_until_ms, now_ms)
    ):
        return PreconditionFailed(
            message.to,
            "NOT_ON_WHATSAPP",
            f"{message.to} is not on WhatsApp (a send failed with Twilio error 63024); "
            "send by SMS, or ask for fallback.sms to go straight to SMS",
        )
    last = state.last_inbound_at_ms
    outside = last is None or now_ms - last >= WINDOW_MS
    if window_only and message.channel is Channel.WHATSAPP and message.body is not None and outside:
        return PreconditionFailed(
            message.to,
            "OUTSIDE_WINDOW",
            f"{message.to} has not written in the last 24 hours: WhatsApp only "
            "allows approved templates (content_sid) now (Twilio error 63016)",
        )
    return None
