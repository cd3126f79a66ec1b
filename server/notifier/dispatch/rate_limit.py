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
from typing import Protocol

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


class SlotStore(Protocol):
    async def take_slot(
        self, sender: str, spacing_us: int, tolerance_us: int
    ) -> tuple[bool, float]:
        """Take the sender's next slot if it is due within ``tolerance_us``; the next
        slot is then one spacing after it (or after now, if later). Returns (granted,
        seconds to wait): to the slot when granted, else before asking again."""


# A slot this close ahead is granted at once (and waited for locally): asking again for
# a few hundred microseconds would cost more than it saves.
_SLOT_TOLERANCE_US = 1_000


class SharedLimiter:
    """The same bound for all replicas together: send times come from shared storage.

    Slots are spaced evenly, ``(1 s + guard) / N`` apart across every replica, and a
    slot is granted only when it is due, to a process that sends right away; a late
    grant moves later slots on. N + 1 consecutive sends then span more than a second, so
    no one-second window holds more than N, and the guard absorbs the jitter between
    the grant and the request reaching Twilio, as for the per-process limiter. One
    process asks for one slot at a time (the lock): its other sends queue here rather
    than each polling the database.
    """

    def __init__(
        self,
        store: SlotStore,
        sender: str,
        rate_per_second: float,
        *,
        guard_seconds: float = DEFAULT_GUARD_SECONDS,
    ) -> None:
        if rate_per_second <= 0:
            raise ValueError("rate_per_second must be positive")
        self.rate = rate_per_second
        if rate_per_second >= 1:
            limit, window = int(rate_per_second), 1.0
        else:
            limit, window = 1, 1.0 / rate_per_second
        self.spacing = (window + guard_seconds) / limit
        self._spacing_us = max(1, round(self.spacing * 1_000_000))
        self._store = store
        self._sender = sender
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait for a slot of the sender shared with every replica (raises
        StorageUnavailable when storage cannot be asked: nothing is sent then)."""
        async with self._lock:
            while True:
                granted, wait = await self._store.take_slot(
                    self._sender, self._spacing_us, _SLOT_TOLERANCE_US
                )
                if wait > 0:
                    await asyncio.sleep(wait)
                if granted:
                    return


class RateLimiters:
    """One limiter per sender, created on first use.

    With a slot store (PostgreSQL, several replicas) the limit is shared by every
    process that uses the store; without one it holds for this process alone.
    """

    def __init__(
        self,
        rate_per_second: float,
        guard_seconds: float = DEFAULT_GUARD_SECONDS,
        *,
        shared: SlotStore | None = None,
    ):
        self._rate = rate_per_second
        self._guard = guard_seconds
        self._shared = shared
        self._limiters: dict[str, SlidingWindowLimiter | SharedLimiter] = {}

    def for_sender(self, sender: str) -> SlidingWindowLimiter | SharedLimiter:
        limiter = self._limiters.get(sender)
        if limiter is None:
            if self._shared is not None:
                limiter = SharedLimiter(self._shared, sender, self._rate, guard_seconds=self._guard)
            else:
                limiter = SlidingWindowLimiter(self._rate, guard_seconds=self._guard)
            self._limiters[sender] = limiter
        return limiter
