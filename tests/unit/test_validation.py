"""The domain's validation of a send request, without any transport."""

from __future__ import annotations

import pytest

from notifier.domain.errors import ValidationFailed
from notifier.domain.model import Channel
from notifier.domain.validation import SendRequest, validate_send

NOW = 1_700_000_000_000
SID = "HX" + "0123456789abcdef" * 2


def violations(req: SendRequest) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as info:
        validate_send(req, NOW)
    return {v.field: v.description for v in info.value.violations}


def test_whatsapp_prefix_is_stripped_and_number_normalised() -> None:
    msg = validate_send(SendRequest(to=" whatsapp:+1 415 555 0100 ", body="hi"), NOW)
    assert msg.to == "+14155550100"
    assert msg.channel is Channel.WHATSAPP


def test_sms_number_without_prefix() -> None:
    msg = validate_send(SendRequest(to="+447911123456", channel=Channel.SMS, body="hi"), NOW)
    assert (msg.to, msg.channel) == ("+447911123456", Channel.SMS)


@pytest.mark.parametrize(
    ("to", "channel", "expected"),
    [
        ("", None, "is required"),
        ("4155550100", None, "E.164"),
        ("+1415", None, "not a valid phone number"),
        ("+abc", None, "not a phone number"),
        ("whatsapp:+14155550100", Channel.SMS, "whatsapp: prefix"),
    ],
)
def test_bad_recipients(to: str, channel: Channel | None, expected: str) -> None:
    assert expected in violations(SendRequest(to=to, channel=channel, body="hi"))["to"]


def test_every_violation_is_reported_at_once() -> None:
    found = violations(
        SendRequest(
            to="12",
            content_sid="HXnothex",
            media_urls=["http://example.com/a.png", "ftp://x"],
            tags=["ok", "bad tag!"],
            idempotency_key="k" * 256,
            validity_ms=10,
        )
    )
    assert set(found) == {
        "to",
        "content_sid",
        "media_urls",
        "media_urls[0]",
        "media_urls[1]",
        "tags[1]",
        "idempotency_key",
        "validity",
    }


def test_body_limits() -> None:
    assert validate_send(SendRequest(to="+14155550100", body="x" * 1600), NOW).body
    assert "1,601 characters" in violations(SendRequest(to="+14155550100", body="x" * 1601))["body"]
    assert "empty" in violations(SendRequest(to="+14155550100", body="  "))["body"]


def test_content_is_required_and_exclusive() -> None:
    assert "required" in violations(SendRequest(to="+14155550100"))["body"]
    both = violations(SendRequest(to="+14155550100", body="x", content_sid=SID))
    assert "not both" in both["content"]


def test_template_with_variables() -> None:
    msg = validate_send(
        SendRequest(to="+14155550100", content_sid=SID, variables={"1": "Ana", "2": "12:30"}), NOW
    )
    assert msg.content_sid == SID
    assert msg.variables == {"1": "Ana", "2": "12:30"}
    assert (
        "only with content_sid"
        in violations(SendRequest(to="+14155550100", body="x", variables={"1": "a"}))["variables"]
    )
    assert (
        "1,600"
        in violations(SendRequest(to="+14155550100", content_sid=SID, variables={"1": "v" * 1601}))[
            'variables["1"]'
        ]
    )


def test_media_only_message_and_whatsapp_media_limit() -> None:
    msg = validate_send(SendRequest(to="+14155550100", media_urls=["https://e.com/a.jpg"]), NOW)
    assert msg.media_urls == ("https://e.com/a.jpg",)
    two = ["https://e.com/a.jpg", "https://e.com/b.jpg"]
    assert "at most 1" in violations(SendRequest(to="+14155550100", media_urls=two))["media_urls"]
    sms = validate_send(SendRequest(to="+14155550100", channel=Channel.SMS, media_urls=two), NOW)
    assert len(sms.media_urls) == 2


def test_schedule_and_validity() -> None:
    later = NOW + 3_600_000
    msg = validate_send(
        SendRequest(to="+14155550100", body="x", send_at_ms=later, validity_ms=60_000), NOW
    )
    assert (msg.send_at_ms, msg.expires_at_ms) == (later, later + 60_000)
    past = validate_send(SendRequest(to="+14155550100", body="x", send_at_ms=NOW - 5), NOW)
    assert past.send_at_ms is None
    far = violations(SendRequest(to="+14155550100", body="x", send_at_ms=NOW + 400 * 86_400_000))
    assert "366 days" in far["send_at"]


def test_deadline_sets_expiry_only_without_validity() -> None:
    deadline = NOW + 5_000
    msg = validate_send(SendRequest(to="+14155550100", body="x", deadline_ms=deadline), NOW)
    assert msg.expires_at_ms == deadline
    explicit = validate_send(
        SendRequest(to="+14155550100", body="x", deadline_ms=deadline, validity_ms=60_000), NOW
    )
    assert explicit.expires_at_ms == NOW + 60_000


def test_idempotent_payload_ignores_deadline_and_tag_order() -> None:
    a = validate_send(
        SendRequest(to="+14155550100", body="x", tags=["a", "b"], deadline_ms=NOW + 1), NOW
    )
    b = validate_send(
        SendRequest(to="whatsapp:+14155550100", body="x", tags=["b", "a"], deadline_ms=NOW + 9), NOW
    )
    assert a.payload() == b.payload()


def test_no_waiting_for_a_scheduled_message() -> None:
    found = violations(
        SendRequest(to="+14155550100", body="x", send_at_ms=NOW + 60_000, wait_for_acceptance=True)
    )
    assert "scheduled" in found["wait_for_acceptance"]
