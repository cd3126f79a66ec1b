"""Data lifecycle rules (SPEC §12): how long message data lives, and how often the purge
must run for nothing to outlive its limit by much.

Pure functions; the purge itself is storage/lifecycle.py, its loop notifier/purger.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from notifier.domain.model import Status

_UNITS_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"^([1-9][0-9]{0,9})([smhd])$")
HOUR_MS = 3_600_000

# Messages whose content and rows the lifecycle may remove once their last change is old
# enough: every terminal status, and DELIVERED, which is final for SMS and for WhatsApp
# recipients with read receipts off (a later "read" would still be a change, and would
# restart the clock).
ENDED = (
    Status.DELIVERED,
    Status.READ,
    Status.FAILED,
    Status.UNDELIVERED,
    Status.CANCELED,
    Status.EXPIRED,
)


def parse_duration(text: str, *, allow_off: bool = False) -> int | None:
    """Milliseconds of "90d", "12h", "15m" or "30s"; None for "off" when allowed.

    Raises ValueError with the accepted forms (the caller names the variable)."""
    value = text.strip().lower()
    if allow_off and value == "off":
        return None
    match = _DURATION.match(value)
    if match is None:
        forms = "a whole number and a unit s, m, h or d, e.g. 90d, 12h, 30s"
        raise ValueError(f"must be {forms}{' or off' if allow_off else ''}")
    return int(match.group(1)) * _UNITS_MS[match.group(2)]


def allowed_overshoot_ms(limit_ms: int) -> int:
    """How long past its limit data may linger: a tenth of the limit or one second,
    whichever is more, capped at one hour."""
    return min(max(limit_ms // 10, 1_000), HOUR_MS)


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """Both limits (``redact_after_ms`` None: redaction off)."""

    retention_ms: int
    redact_after_ms: int | None

    @property
    def interval_ms(self) -> int:
        """Time between purge rounds: half the tightest allowed overshoot, so a row that
        crosses its limit just after a round is handled (the next round, plus that
        round's own run time) before the overshoot is used up."""
        limits = [self.retention_ms]
        if self.redact_after_ms is not None:
            limits.append(self.redact_after_ms)
        return min(allowed_overshoot_ms(limit) for limit in limits) // 2


@dataclass(frozen=True, slots=True)
class Purged:
    """Rows one purge batch removed or redacted."""

    messages: int = 0  # deleted
    rows: int = 0  # deleted, messages and everything hanging off them, inbound included
    inbound: int = 0  # inbound messages deleted
    redacted: int = 0


@dataclass(frozen=True, slots=True)
class Erased:
    """What EraseRecipient removed, per kind of data."""

    messages: int = 0
    status_events: int = 0
    attempts: int = 0
    inbound_messages: int = 0
    recipient_states: int = 0
    canceled: int = 0
    twilio_deleted: int = 0
    twilio_redacted: int = 0
