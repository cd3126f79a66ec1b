"""domain.deferral.judge_deferral: which failure reported after acceptance sends the
message again (63049, 63018), when, and when the budget is spent, as a table."""

from __future__ import annotations

import pytest

from notifier.domain.deferral import Resend, judge_deferral
from notifier.domain.model import CallbackResult, EventSource, Status
from notifier.domain.model import StatusReport as Report
from notifier.domain.reports import ReportEffect
from notifier.domain.retry import RetryPolicy

SID = "SM" + "a" * 32
NOW = 1_000_000
MINUTE = 60_000
POLICY = RetryPolicy(base_seconds=1, cap_seconds=10, max_attempts=3, deferred_base_seconds=300)


def applied(status: Status, *, adopt_sid: bool = False) -> ReportEffect:
    return ReportEffect(
        CallbackResult.APPLIED, EventSource.CALLBACK, adopt_sid=adopt_sid, new_status=status
    )


RECORDED = ReportEffect(CallbackResult.RECORDED, EventSource.CALLBACK)
FAILED, UNDELIVERED = applied(Status.FAILED), applied(Status.UNDELIVERED)

CASES = [
    # (code, effect, attempts, expires_at, expected)
    pytest.param(63049, FAILED, 1, None, Resend(NOW + 5 * MINUTE, "deferred"),
                 id="63049 first send: again after minutes (the deferral base)"),
    pytest.param(63049, UNDELIVERED, 2, None, Resend(NOW + 10 * MINUTE, "deferred"),
                 id="63049 undelivered, second send: the wait doubles"),
    pytest.param(63049, FAILED, 1, NOW + 60 * MINUTE, Resend(NOW + 5 * MINUTE, "deferred"),
                 id="63049 within the validity"),
    pytest.param(63049, FAILED, 1, NOW + 2 * MINUTE, None,
                 id="63049 validity ends before the next try: ends as reported"),
    pytest.param(63049, FAILED, 3, None, None,
                 id="63049 without validity, attempts spent: ends as reported"),
    pytest.param(63018, FAILED, 1, None, Resend(NOW + 1_000, "rate_limited"),
                 id="63018: retried under the retry backoff, counted as rate limited"),
    pytest.param(63018, FAILED, 9, NOW + 60 * MINUTE, Resend(NOW + 2_000, "rate_limited"),
                 id="63018 beyond the attempt budget: until the validity, last wait kept"),
    pytest.param(63032, FAILED, 1, None, None, id="63032: never retried"),
    pytest.param(63024, FAILED, 1, None, None, id="63024: never retried"),
    pytest.param(None, FAILED, 1, None, None, id="no code: ends as reported"),
    pytest.param(63049, RECORDED, 1, None, None,
                 id="not applied (message already delivered or ended): nothing"),
    pytest.param(63049, applied(Status.FAILED, adopt_sid=True), 1, None, None,
                 id="before the dispatcher recorded the send: ends as reported"),
]  # fmt: skip


@pytest.mark.parametrize(("code", "effect", "attempts", "expires_at", "expected"), CASES)
def test_judge_deferral(
    code: int | None,
    effect: ReportEffect,
    attempts: int,
    expires_at: int | None,
    expected: Resend | None,
) -> None:
    status = effect.new_status or Status.FAILED
    report = Report(status, SID, error_code=code)
    got = judge_deferral(
        report,
        effect,
        attempts=attempts,
        expires_at_ms=expires_at,
        now_ms=NOW,
        policy=POLICY,
        jitter=0.999999,
    )
    if expected is None or got is None:
        assert got == expected
    else:
        assert (got.outcome, abs(got.at_ms - expected.at_ms) < 10) == (expected.outcome, True)
