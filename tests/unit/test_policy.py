"""Retry policy, error classification and the rate limiter: the pure parts of delivery."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from notifier.dispatch.rate_limit import SlidingWindowLimiter
from notifier.domain.delivery import ErrorKind, classify, meaning
from notifier.domain.retry import AfterFailure, RetryPolicy, after_failure


def test_next_delay_is_full_jitter_under_a_capped_exponential() -> None:
    policy = RetryPolicy(base_seconds=1, factor=2, cap_seconds=300, max_attempts=8)
    assert [policy.ceiling(n) for n in range(1, 11)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert policy.next_delay(3, jitter=0.0) == 0.0
    assert policy.next_delay(3, jitter=0.5) == 2.0
    assert policy.next_delay(3, jitter=0.5) == policy.next_delay(3, jitter=0.5)  # pure
    assert policy.next_delay(8) is None  # attempts spent
    assert policy.ceiling(10_000) == 300  # no overflow far out
    draws = [policy.next_delay(5) for _ in range(200)]
    assert all(d is not None and 0 <= d <= 16 for d in draws)
    assert len(set(draws)) > 150  # jitter really spreads them


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (429, 20429, ErrorKind.RATE_LIMITED),
        (429, None, ErrorKind.RATE_LIMITED),
        (503, 20503, ErrorKind.TRANSIENT),
        (502, None, ErrorKind.TRANSIENT),
        (500, 20500, ErrorKind.AMBIGUOUS),
        (500, 30500, ErrorKind.TRANSIENT),
        (400, 21211, ErrorKind.PERMANENT),
        (400, 63016, ErrorKind.PERMANENT),
        (401, 20003, ErrorKind.PERMANENT),
        (400, 99999, ErrorKind.PERMANENT),
    ],
)
def test_classification(status: int, code: int | None, kind: ErrorKind) -> None:
    assert classify(status, code) is kind


def test_meanings_are_kept_for_status_replies() -> None:
    assert "24-hour" in meaning(63016)
    assert meaning(99999) == "Twilio error 99999"
    assert meaning(None) == ""


def _after(
    kind: str,
    attempt: int = 1,
    expires_at_ms: int | None = None,
    retry_after: float | None = None,
    ambiguous_policy: str = "retry",
) -> AfterFailure:
    return after_failure(
        kind=kind,
        attempt=attempt,
        now_ms=1_000_000,
        expires_at_ms=expires_at_ms,
        policy=RetryPolicy(base_seconds=1, cap_seconds=10, max_attempts=3),
        ambiguous_policy=ambiguous_policy,
        retry_after=retry_after,
        jitter=0.5,
    )


def test_after_failure_decisions() -> None:
    assert _after("permanent").final_status == "failed"
    assert _after("transient").retry_at_ms == 1_000_500
    assert _after("rate_limited", retry_after=7).retry_at_ms == 1_007_000  # Retry-After wins
    spent = _after("transient", attempt=3)
    assert (spent.retry_at_ms, spent.final_status) == (None, "failed")
    assert _after("transient", expires_at_ms=1_000_400).final_status == "expired"
    assert _after("ambiguous", ambiguous_policy="fail").final_status == "failed"
    assert _after("ambiguous").retry_at_ms is not None


async def test_limiter_spaces_sends_and_never_exceeds_the_rate() -> None:
    limiter = SlidingWindowLimiter(10, guard_seconds=0.0)
    loop = asyncio.get_running_loop()
    granted: list[float] = []

    async def take() -> None:
        await limiter.acquire()
        granted.append(loop.time())

    await asyncio.gather(*(take() for _ in range(25)))
    gaps = [b - a for a, b in itertools.pairwise(granted)]
    assert min(gaps) >= 0.05  # never back to back (the grid: grant_rule.py)
    assert max(sum(1 for t in granted if s <= t < s + 1.0) for s in granted) == 10
    assert granted[-1] - granted[0] >= 2.4


async def test_a_lone_send_is_not_delayed() -> None:
    limiter = SlidingWindowLimiter(1, guard_seconds=0.0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await limiter.acquire()
    assert loop.time() - start < 0.05


def test_fractional_rates() -> None:
    assert (
        SlidingWindowLimiter(0.5, guard_seconds=0).limit,
        SlidingWindowLimiter(0.5, guard_seconds=0).window,
    ) == (1, 2.0)
    assert SlidingWindowLimiter(80.7).limit == 80
