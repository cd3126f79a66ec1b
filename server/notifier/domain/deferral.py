"""When a failure reported after Twilio took the message sends it again (issue 17, codes).

Real Twilio reports WhatsApp's deferrals mostly in status callbacks (or a fetch), after
the send was accepted: 63049 (Meta held a marketing template back) and 63018 (the
channel's rate limit) mean "later", not "no". A FAILED/UNDELIVERED report with one of
these codes, about the message's current send, re-queues it under the same backoff and
budget as the same code answered to the send itself (``retry.after_failure``): 63049
after minutes, 63018 under the sender's limit, both up to the message's validity (or
the attempt budget without one). Only when the budget is spent does the report end the
message FAILED, as any failure. No SMS fallback follows a re-queue: the message has not
failed.

A report that arrives before Notifier recorded the send it is about (the message has no
SID yet) is applied as a failure: re-queued then, the dispatcher's record still to come
would put the old send back on the message. That record, when it finds its own send
failed with one of these codes, re-queues it instead (``resend_after``, from
storage/outbox.py): either order ends the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from notifier.domain.delivery import classify
from notifier.domain.model import Status, StatusReport
from notifier.domain.reports import ReportEffect
from notifier.domain.retry import RetryPolicy, after_failure

DEFERRAL_CODES = frozenset({63018, 63049})
"""Codes a report may carry that mean "send it again later"."""

_FAILED = frozenset({Status.FAILED, Status.UNDELIVERED})


@dataclass(frozen=True, slots=True)
class Resend:
    """Send the message again at ``at_ms``; its attempt's outcome becomes ``outcome``
    ("deferred" or "rate_limited", as if Twilio had answered the send with the code)."""

    at_ms: int
    outcome: str


def judge_deferral(
    report: StatusReport,
    effect: ReportEffect,
    *,
    attempts: int,
    expires_at_ms: int | None,
    now_ms: int,
    policy: RetryPolicy,
    jitter: float | None = None,
) -> Resend | None:
    """Whether the report ``judge_report`` just applied (``effect``) re-queues the message
    instead of ending it; ``attempts`` is how many sends it has had, this one included."""
    if effect.new_status is None or effect.adopt_sid:
        return None  # not applied, or the send is not recorded yet (module docstring)
    return resend_after(
        effect.new_status,
        report.error_code,
        attempts=attempts,
        expires_at_ms=expires_at_ms,
        now_ms=now_ms,
        policy=policy,
        jitter=jitter,
    )


def resend_after(
    status: Status,
    error_code: int | None,
    *,
    attempts: int,
    expires_at_ms: int | None,
    now_ms: int,
    policy: RetryPolicy,
    jitter: float | None = None,
) -> Resend | None:
    """When a send that ended ``status`` with ``error_code`` goes again, if it does: only
    a deferral code, within the budget of that code's kind."""
    if status not in _FAILED or error_code not in DEFERRAL_CODES:
        return None
    kind = classify(None, error_code).value
    plan = after_failure(
        kind=kind,
        attempt=max(attempts, 1),
        now_ms=now_ms,
        expires_at_ms=expires_at_ms,
        policy=policy,
        ambiguous_policy="retry",
        jitter=jitter,
    )
    return None if plan.retry_at_ms is None else Resend(plan.retry_at_ms, kind)
