"""Twilio's signature check (webhooks/forms.py::signed_by_twilio), table-driven: the
one-HMAC fast path over the configured URL, and the SDK's two port forms behind it."""

from __future__ import annotations

import pytest
from starlette.datastructures import ImmutableMultiDict
from twilio.request_validator import RequestValidator

from notifier.webhooks.forms import signed_by_twilio

URL = "https://hooks.example.com/api/v1/whatsapp/status?m=01ABC"
WITH_PORT = "https://hooks.example.com:443/api/v1/whatsapp/status?m=01ABC"
TOKEN, OLD = "t" * 32, "o" * 32
PARAMS = ImmutableMultiDict([("MessageSid", "SM" + "a" * 32), ("MessageStatus", "sent")])


def _sign(url: str, token: str = TOKEN, params: ImmutableMultiDict[str, str] = PARAMS) -> str:
    return str(RequestValidator(token).compute_signature(url, params))


@pytest.mark.parametrize(
    ("signature", "tokens", "valid"),
    [
        (_sign(URL), [TOKEN], True),  # the URL Twilio called: one HMAC
        (_sign(WITH_PORT), [TOKEN], True),  # signed with the default port: the SDK's forms
        (_sign(URL, OLD), [TOKEN, OLD], True),  # during a token rotation
        (_sign(URL, OLD), [TOKEN], False),  # a retired token
        (_sign(URL, params=ImmutableMultiDict([("MessageStatus", "read")])), [TOKEN], False),
        (_sign("https://evil.example.com/api/v1/whatsapp/status?m=01ABC"), [TOKEN], False),
        ("", [TOKEN], False),
        (None, [TOKEN], False),
        (_sign(URL), [], False),  # no token configured: nothing is trusted
        ("sïgnature", [TOKEN], False),  # not base64 or ASCII: refused, not raised
    ],
)
def test_signed_by_twilio(signature: str | None, tokens: list[str], valid: bool) -> None:
    assert signed_by_twilio(URL, PARAMS, signature, tokens) is valid
