"""Messages recipients send us, and what they mean for later sends.

An inbound message opens the recipient's 24-hour WhatsApp customer-service window; a
message that is exactly an opt-out keyword stops further sends to them until they
send an opt-in keyword.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

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
