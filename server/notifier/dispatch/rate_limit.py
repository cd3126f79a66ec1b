"""An exact rate limit: at most N sends in any window of one second.

A token bucket with a burst allowance lets 2N through in some one-second windows
(a full bucket plus a second's refill); a sliding log of the last N send times cannot.
A small guard added to the window absorbs the jitter between taking a slot here and
the request reaching Twilio, so the limit also holds where Twilio counts. Slots are
also spaced evenly (window / N apart) instead of granted in bursts of N: a burst
opens N connections at once, and the uneven delays that causes are exactly the jitter
that could push N + 1 arrivals into one second at the far end.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

DEFAULT_GUARD_SECONDS = 0.01


class SlidingWindowLimiter:
    def __init__(
        self,
        rate_per_second: float,
        *,
        guard_seconds: float = DEFAULT_GUARD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_second <= 0:
            raise ValueError("rate_per_second must be positive")
        self.rate = rate_per_second
        if rate_per_second >= 1:
            self.limit, window = int(rate_per_second), 1.0
        else:
            self.limit, window = 1, 1.0 / rate_per_second
        self.window = window + guard_seconds
        self.spacing = self.window / self.limit
        self._last: float | None = None
        self._clock = clock
        self._stamps: deque[float] = deque()
        self._lock = asyncio.Lock()

    def _expire(self, now: float) -> None:
        while self._stamps and self._stamps[0] <= now - self.window:
            self._stamps.popleft()

    def headroom(self) -> int:
        """Sends that could start within the next second or so (for sizing claims)."""
        self._expire(self._clock())
        return self.limit - len(self._stamps)

    def _wait_needed(self, now: float) -> float:
        self._expire(now)
        wait = 0.0
        if len(self._stamps) >= self.limit:
            wait = self._stamps[0] + self.window - now
        if self._last is not None:
            wait = max(wait, self._last + self.spacing - now)
        return wait

    async def acquire(self) -> None:
        """Wait for a slot; slots are granted in the order they were asked for."""
        async with self._lock:
            while (wait := self._wait_needed(self._clock())) > 0:  # noqa: ASYNC110 - a timed wait, not a poll
                await asyncio.sleep(wait)
            now = self._clock()
            self._stamps.append(now)
            self._last = now


class RateLimiters:
    """One limiter per sender, created on first use."""

    def __init__(self, rate_per_second: float, guard_seconds: float = DEFAULT_GUARD_SECONDS):
        self._rate = rate_per_second
        self._guard = guard_seconds
        self._limiters: dict[str, SlidingWindowLimiter] = {}

    def for_sender(self, sender: str) -> SlidingWindowLimiter:
        limiter = self._limiters.get(sender)
        if limiter is None:
            limiter = SlidingWindowLimiter(self._rate, guard_seconds=self._guard)
            self._limiters[sender] = limiter
        return limiter
