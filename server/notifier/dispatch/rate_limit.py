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

from notifier.domain.ports import SlotStore

DEFAULT_GUARD_SECONDS = 0.01
# Replicas sharing a limit each add their own scheduling delay, and a slot is fixed on
# the shared timeline before it is used: a wider guard keeps half of it for that.
SHARED_GUARD_SECONDS = 0.06


def limit_and_window(rate_per_second: float) -> tuple[int, float]:
    """The rate as "N sends per window": N per second, or one per 1/rate seconds when the
    rate is below one (0.5/s is one send in any two seconds, not zero per second)."""
    if rate_per_second <= 0:
        raise ValueError("rate_per_second must be positive")
    if rate_per_second >= 1:
        return int(rate_per_second), 1.0
    return 1, 1.0 / rate_per_second


class SlidingWindowLimiter:
    def __init__(
        self,
        rate_per_second: float,
        *,
        guard_seconds: float = DEFAULT_GUARD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate_per_second
        self.limit, window = limit_and_window(rate_per_second)
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


# How far ahead of its time a slot may be taken: enough to hide the round trip to the
# database (ask a little early, then wait locally) even on a loaded machine. Taking a
# slot early costs nothing in accuracy: the send still waits for the slot's time.
_SLOT_LEAD_SECONDS = 0.05


class SharedLimiter:
    """The same bound for all replicas together: send times come from shared storage.

    Slots are spaced evenly, ``(1 s + guard) / N`` apart across every replica, and are
    taken only shortly before they start (at most ``_SLOT_LEAD_SECONDS`` ahead), by a
    process whose sends are waiting for them; a process too late for a slot (by more
    than half the guard) drops it rather than crowd the next one, which may be another
    replica's. N + 1 consecutive slots span more than a second, so no
    one-second window holds more than N sends, and the guard absorbs the jitter between
    a slot and the request reaching Twilio, as for the per-process limiter. At high
    rates one request takes several slots (as many as fit in the lead and are wanted),
    so the database sees far fewer queries than sends.
    """

    def __init__(
        self,
        store: SlotStore,
        sender: str,
        rate_per_second: float,
        *,
        guard_seconds: float = SHARED_GUARD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate_per_second
        limit, window = limit_and_window(rate_per_second)
        self.spacing = (window + guard_seconds) / limit
        self._guard = guard_seconds
        self._spacing_us = max(1, round(self.spacing * 1_000_000))
        self._max_batch = max(1, int(_SLOT_LEAD_SECONDS / self.spacing))
        self._store = store
        self._sender = sender
        self._clock = clock
        self._lock = asyncio.Lock()
        self._slots: deque[float] = deque()  # taken, not yet used: local clock times
        self._wanted = 0  # callers inside acquire()
        self._last: float | None = None  # when this process last sent

    async def acquire(self) -> None:
        """Wait for a slot of the sender shared with every replica (raises
        StorageUnavailable when storage cannot be asked: nothing is sent then)."""
        self._wanted += 1
        try:
            async with self._lock:
                while True:
                    # A slot used late could crowd the next one, which may be another
                    # replica's: one that cannot start within half the guard of its time
                    # (this process was slow, or sent its last one late) is dropped.
                    now = self._clock()
                    while self._slots and self._slots[0] < now - self._guard / 2:
                        self._slots.popleft()
                    if not self._slots:
                        await self._take()
                        continue
                    slot = self._slots.popleft()
                    start = slot
                    if self._last is not None:
                        # Slots are one spacing apart, but a late wake-up must not
                        # make two sends of ours closer than the slack allows.
                        start = max(slot, self._last + self.spacing - self._guard / 2)
                    if start - slot <= self._guard / 2:
                        break
                wait = start - self._clock()
                if wait > 0:
                    await asyncio.sleep(wait)
                self._last = self._clock()
        finally:
            self._wanted -= 1

    async def _take(self) -> None:
        count = min(self._wanted, self._max_batch)
        lead_us = round(_SLOT_LEAD_SECONDS * 1_000_000)
        while True:
            asked = self._clock()
            granted, wait = await self._store.take_slots(
                self._sender, self._spacing_us, count, lead_us
            )
            # The database read its clock somewhere between asking and answering: the
            # midpoint is the best local estimate of that moment.
            then = (asked + self._clock()) / 2
            if granted:
                first = then + wait
                self._slots.extend(first + i * self.spacing for i in range(count))
                return
            # Come back when the next slot is within the lead.
            await asyncio.sleep(max(0.0, then + wait - _SLOT_LEAD_SECONDS / 2 - self._clock()))


class RateLimiters:
    """One limiter per sender, created on first use.

    With a slot store (PostgreSQL, several replicas) the limit is shared by every
    process that uses the store; without one it holds for this process alone.
    """

    def __init__(
        self,
        rate_per_second: float,
        guard_seconds: float | None = None,
        *,
        shared: SlotStore | None = None,
    ):
        self._rate = rate_per_second
        default = DEFAULT_GUARD_SECONDS if shared is None else SHARED_GUARD_SECONDS
        self._guard = default if guard_seconds is None else guard_seconds
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
