"""When to try a failed send again."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter and a cap (AWS's "full jitter" scheme).

    Full jitter spreads the retries of many messages that failed together, so a Twilio
    outage does not end in a synchronized stampede when it recovers.
    """

    base_seconds: float = 1.0
    factor: float = 2.0
    cap_seconds: float = 300.0
    max_attempts: int = 8
    deferred_base_seconds: float = 300.0  # NOTIFIER_DEFERRAL_BASE: the first wait after 63049

    def ceiling(self, attempt: int) -> float:
        """The longest wait after failed attempt number ``attempt`` (1-based)."""
        exponent = min(max(attempt - 1, 0), 64)  # beyond 2**64 the cap has long won
        return float(min(self.cap_seconds, self.base_seconds * self.factor**exponent))

    def next_delay(self, attempt: int, jitter: float | None = None) -> float | None:
        """Seconds to wait after failed attempt ``attempt``; None once attempts are spent.

        ``jitter`` in [0, 1) picks the point in [0, ceiling]; pass it to make the result
        reproducible, leave it out for a random one.
        """
        if attempt >= self.max_attempts:
            return None
        u = random.random() if jitter is None else jitter
        return u * self.ceiling(attempt)


_UNTIL_VALIDITY = frozenset({"deferred", "rate_limited"})
DEFERRED_CAP_SECONDS = 3600.0


def deferred_delay(attempt: int, base_seconds: float, jitter: float | None = None) -> float:
    """The wait after Meta held a marketing template back (63049): minutes (the base),
    doubling to an hour. Meta decides per user and day, so seconds-long backoff only
    burns attempts; half the ceiling at least, so the wait is never short."""
    exponent = min(max(attempt - 1, 0), 16)
    ceiling = min(max(DEFERRED_CAP_SECONDS, base_seconds), base_seconds * 2.0**exponent)
    u = random.random() if jitter is None else jitter
    return ceiling * (0.5 + 0.5 * u)


@dataclass(frozen=True, slots=True)
class AfterFailure:
    """What to do with a message whose send attempt failed."""

    retry_at_ms: int | None  # None: give up
    final_status: str | None  # "failed" or "expired" when giving up
    reason: str


def after_failure(
    *,
    kind: str,
    attempt: int,
    now_ms: int,
    expires_at_ms: int | None,
    policy: RetryPolicy,
    ambiguous_policy: str,
    retry_after: float | None = None,
    jitter: float | None = None,
) -> AfterFailure:
    """Decide between retrying later and failing now; pure apart from the jitter."""
    if kind == "permanent":
        return AfterFailure(None, "failed", "permanent error")
    if kind == "ambiguous" and ambiguous_policy == "fail":
        return AfterFailure(None, "failed", "ambiguous outcome, policy is at-most-once")
    if kind in _UNTIL_VALIDITY:
        # Twilio or Meta said "later", not "no": retried up to the message's validity;
        # with none, as many attempts as any other error.
        spent = expires_at_ms is None and attempt >= policy.max_attempts
        capped = min(attempt, policy.max_attempts - 1)  # the capped backoff
        if spent:
            delay = None
        elif kind == "deferred":
            delay = deferred_delay(attempt, policy.deferred_base_seconds, jitter)
        else:
            delay = policy.next_delay(capped, jitter)
    else:
        delay = policy.next_delay(attempt, jitter)
    if delay is None:
        return AfterFailure(None, "failed", f"gave up after {attempt} attempts")
    if retry_after is not None:
        delay = max(delay, retry_after)
    retry_at = now_ms + int(delay * 1000)
    if expires_at_ms is not None and retry_at >= expires_at_ms:
        return AfterFailure(None, "expired", "validity ends before the next attempt")
    return AfterFailure(retry_at, None, f"retry in {delay:.3f}s")
