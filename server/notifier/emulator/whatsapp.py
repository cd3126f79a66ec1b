"""WhatsApp's own failures, per number (issue 17): what Meta does to a WhatsApp message
to a given number, while an SMS to the same number goes through.

``Faults.whatsapp_outcomes`` maps a number to a Twilio code:

- 63024 (not on WhatsApp), 63032 (Meta's marketing experiment) and 63003 (channel could
  not find the recipient): Twilio accepts the message, then its status callback (and a
  fetch) says ``failed`` with the code, as with real WhatsApp.
- 63049 (Meta held a marketing template back) and 63018 (channel rate limit): the create
  request is refused with the code (63018 as HTTP 429 with ``Retry-After``), so each
  retry meets it again until the number's outcome is cleared. With
  ``Faults.whatsapp_late_outcomes`` they come as real Twilio mostly reports them: the
  message is accepted, then fails with the code in its callback (and a fetch).

Only WhatsApp sends are affected: the fallback SMS to the number is delivered.
"""

from __future__ import annotations

from notifier.emulator.state import WHATSAPP, AcceptedMessage, bare_number

AFTER_ACCEPTANCE = frozenset({63003, 63024, 63032})
"""Codes a WhatsApp message meets after Twilio took it: a ``failed`` callback."""

AT_REQUEST = frozenset({63018, 63049})
"""Codes the create request itself is refused with."""

CODES = AFTER_ACCEPTANCE | AT_REQUEST

MESSAGES = {
    63003: "Channel could not find To address",
    63018: "Rate limit exceeded for Channel",
    63024: "Invalid message recipient",
    63032: "We cannot send this message to this user because of a WhatsApp limitation.",
    63049: "Meta chose not to deliver this WhatsApp marketing message.",
}


def refusal(to: str, outcomes: dict[str, int], late: bool = False) -> int | None:
    """The code a create request to ``to`` (as posted, with ``whatsapp:``) is refused with;
    none when ``late`` (every code then comes after acceptance)."""
    if late or not to.startswith(WHATSAPP):
        return None
    code = outcomes.get(bare_number(to))
    return code if code in AT_REQUEST else None


def failure(
    message: AcceptedMessage, outcomes: dict[str, int], late: bool = False
) -> tuple[str, int] | None:
    """The ``failed`` status an accepted WhatsApp message ends in, if its number has one;
    with ``late``, 63049 and 63018 too."""
    if not message.is_whatsapp:
        return None
    code = outcomes.get(bare_number(message.to))
    return ("failed", code) if code in (CODES if late else AFTER_ACCEPTANCE) else None
