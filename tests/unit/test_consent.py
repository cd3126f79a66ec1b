"""domain.inbound.refusal: opt-outs and WhatsApp's 24-hour window, as a table."""

from __future__ import annotations

import pytest

from notifier.domain.inbound import WINDOW_MS, RecipientState, refusal
from notifier.domain.model import Channel, NewMessage

NOW = 10 * WINDOW_MS
TEXT = NewMessage(to="+14155550100", channel=Channel.WHATSAPP, body="hi")
TEMPLATE = NewMessage(to="+14155550100", channel=Channel.WHATSAPP, content_sid="HX" + "0" * 32)
SMS = NewMessage(to="+14155550100", channel=Channel.SMS, body="hi")
WROTE_RECENTLY = RecipientState(last_inbound_at_ms=NOW - WINDOW_MS + 1)
WROTE_LONG_AGO = RecipientState(last_inbound_at_ms=NOW - WINDOW_MS)


@pytest.mark.parametrize(
    ("message", "state", "window_only", "expected"),
    [
        (TEXT, None, False, None),
        (TEXT, RecipientState(opted_out=True), False, "OPTED_OUT"),
        (TEMPLATE, RecipientState(opted_out=True), True, "OPTED_OUT"),
        (SMS, RecipientState(opted_out=True), False, "OPTED_OUT"),
        (TEXT, None, True, "OUTSIDE_WINDOW"),  # never wrote
        (TEXT, WROTE_LONG_AGO, True, "OUTSIDE_WINDOW"),  # exactly 24 h ago: closed
        (TEXT, WROTE_RECENTLY, True, None),
        (TEMPLATE, None, True, None),  # templates may open a conversation
        (SMS, None, True, None),  # the window is WhatsApp's
        (TEXT, WROTE_LONG_AGO, False, None),  # the window check is opt-in
    ],
)
def test_refusal(
    message: NewMessage, state: RecipientState | None, window_only: bool, expected: str | None
) -> None:
    refused = refusal(message, state, NOW, window_only=window_only)
    assert (refused.kind if refused is not None else None) == expected
    if refused is not None:
        assert refused.subject == message.to
