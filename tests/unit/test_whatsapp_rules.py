"""Issue 17's rules as tables: when a failed WhatsApp message gets its SMS, who is not
on WhatsApp, and what Twilio's newer WhatsApp codes mean for retries."""

from __future__ import annotations

import pytest

from notifier.domain.delivery import ErrorKind, classify, meaning
from notifier.domain.errors import PreconditionFailed, ValidationFailed
from notifier.domain.fallback import (
    FailedSend,
    FallbackPolicy,
    fallback_reason,
    marks_not_on_whatsapp,
    skips_whatsapp,
    sms_body,
)
from notifier.domain.inbound import RecipientState, refusal
from notifier.domain.model import Channel, NewMessage, Status
from notifier.domain.retry import RetryPolicy, after_failure
from notifier.domain.validation import SendRequest, validate_send

W, S = Channel.WHATSAPP, Channel.SMS
F, U, D = Status.FAILED, Status.UNDELIVERED, Status.DELIVERED
POLICY = FallbackPolicy()


@pytest.mark.parametrize(
    ("send", "reason"),
    [
        (FailedSend(W, F, 63024, wants_sms=True), "error 63024"),
        (FailedSend(W, U, 63003, wants_sms=True), "error 63003"),
        (FailedSend(W, F, 63032, wants_sms=True), "error 63032"),
        (FailedSend(W, F, 63024, wants_sms=False), None),  # not asked for
        (FailedSend(W, F, 63016, wants_sms=True), None),  # not a fallback code
        (FailedSend(W, F, None, wants_sms=True), None),  # no code at all
        (FailedSend(W, D, 63024, wants_sms=True), None),  # not a failure
        (FailedSend(W, F, 63024, wants_sms=True, reached_device=True), None),  # after DELIVERED
        (FailedSend(W, F, 63024, wants_sms=True, has_fallback=True), None),  # never twice
        (FailedSend(W, F, 63024, wants_sms=True, opted_out=True), None),  # opted out
        (FailedSend(S, F, 63024, wants_sms=True), None),  # an SMS never falls back
    ],
)
def test_fallback_decision(send: FailedSend, reason: str | None) -> None:
    assert fallback_reason(send, POLICY) == reason


def test_fallback_codes_are_configurable() -> None:
    only_63003 = FallbackPolicy(codes=frozenset({63003}))
    assert fallback_reason(FailedSend(W, F, 63024, wants_sms=True), only_63003) is None
    assert fallback_reason(FailedSend(W, F, 63003, wants_sms=True), only_63003) == "error 63003"


@pytest.mark.parametrize(
    ("channel", "status", "code", "marks"),
    [(W, F, 63024, True), (W, U, 63024, True), (W, F, 63003, False), (S, F, 63024, False)],
)
def test_who_is_marked_not_on_whatsapp(
    channel: Channel, status: Status, code: int, marks: bool
) -> None:
    assert marks_not_on_whatsapp(channel, status, code) is marks


def _msg(fallback: bool, channel: Channel = W) -> NewMessage:
    return NewMessage(to="+14155550100", channel=channel, body="hi", fallback_sms=fallback)


@pytest.mark.parametrize(
    ("message", "until", "skips", "refused"),
    [
        (_msg(True), 2_000, True, None),  # marked, fallback: straight to SMS
        (_msg(False), 2_000, False, "NOT_ON_WHATSAPP"),  # marked, no fallback: refused
        (_msg(False), 1_000, False, None),  # the mark ran out at 1,000
        (_msg(False), None, False, None),  # never marked
        (_msg(False, S), 2_000, False, None),  # an SMS is not concerned
    ],
)
def test_a_marked_number(
    message: NewMessage, until: int | None, skips: bool, refused: str | None
) -> None:
    state = RecipientState(not_on_whatsapp_until_ms=until)
    assert skips_whatsapp(message, until, 1_000) is skips
    error = refusal(message, state, 1_000, window_only=False)
    assert (error.kind if isinstance(error, PreconditionFailed) else None) == refused


def test_the_sms_text_is_the_callers_else_the_free_text() -> None:
    assert sms_body("hi", None) == "hi"
    assert sms_body(None, "Your code is 1234") == "Your code is 1234"
    assert sms_body("hi", "other") == "other"


TEMPLATE = "HX" + "a" * 32


@pytest.mark.parametrize(
    ("kw", "fields"),
    [
        ({"body": "hi", "fallback_sms": True}, []),
        ({"content_sid": TEMPLATE, "fallback_sms": True, "fallback_body": "code 1"}, []),
        ({"content_sid": TEMPLATE, "fallback_sms": True}, ["fallback.sms_body"]),
        ({"body": "hi", "fallback_body": "x"}, ["fallback.sms_body"]),
        ({"body": "hi", "fallback_sms": True, "channel": S}, ["fallback.sms"]),
        ({"body": "hi", "fallback_sms": True, "fallback_body": "x" * 1601}, ["fallback.sms_body"]),
        ({"body": "hi", "fallback_sms": True, "fallback_body": "   "}, ["fallback.sms_body"]),
    ],
)
def test_fallback_validation(kw: dict[str, object], fields: list[str]) -> None:
    request = SendRequest(to="+14155550100", **kw)  # type: ignore[arg-type]
    if not fields:
        assert validate_send(request, 0).fallback_sms
        return
    with pytest.raises(ValidationFailed) as raised:
        validate_send(request, 0)
    assert [v.field for v in raised.value.violations] == fields


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (63018, ErrorKind.RATE_LIMITED),
        (63049, ErrorKind.DEFERRED),
        (63032, ErrorKind.PERMANENT),
        (63024, ErrorKind.PERMANENT),
        (63003, ErrorKind.PERMANENT),
    ],
)
def test_whatsapp_codes_are_classified(code: int, kind: ErrorKind) -> None:
    assert classify(400, code) is kind
    assert meaning(code) != f"Twilio error {code}"


def _after(kind: str, attempt: int, expires: int | None) -> tuple[int | None, str | None]:
    plan = after_failure(
        kind=kind,
        attempt=attempt,
        now_ms=0,
        expires_at_ms=expires,
        policy=RetryPolicy(base_seconds=1, cap_seconds=10, max_attempts=3),
        ambiguous_policy="retry",
        jitter=0.0,
    )
    return plan.retry_at_ms, plan.final_status


@pytest.mark.parametrize(
    ("kind", "attempt", "expires", "expected"),
    [
        ("deferred", 1, None, (150_000, None)),  # minutes, not seconds
        ("deferred", 2, None, (300_000, None)),  # doubling
        ("deferred", 3, None, (None, "failed")),  # no validity: as many attempts as others
        ("deferred", 9, 10_000_000, (1_800_000, None)),  # with validity: until it ends
        ("deferred", 1, 100_000, (None, "expired")),  # the wait outlasts the validity
        ("permanent", 1, None, (None, "failed")),  # 63032: no retry
        ("rate_limited", 9, 10_000_000, (0, None)),  # 63018: until the validity ends
        ("rate_limited", 3, None, (None, "failed")),  # no validity: as many as others
        ("transient", 9, 10_000_000, (None, "failed")),  # others stop at max_attempts
    ],
)
def test_deferred_retries_wait_minutes_up_to_the_validity(
    kind: str, attempt: int, expires: int | None, expected: tuple[int | None, str | None]
) -> None:
    assert _after(kind, attempt, expires) == expected
