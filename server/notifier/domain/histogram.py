"""Delivery-time histogram slots, and percentiles read from them.

GetMetrics keeps delivery times as counts per slot (in its rollups) instead of keeping
every value, so a percentile over months is a walk over a few hundred slots. The slots
grow geometrically: slot ``i`` holds the whole milliseconds in ``[LOWS[i], LOWS[i+1])``
and its largest value is at most 1.1 times its smallest, so answering with the
geometric middle of the slot (clamped to the smallest and largest value really seen in
it) is off by at most sqrt(1.1) - 1 < 4.9 % of the true nearest-rank value. Slot 0 holds
exactly 0 ms (a "delivered" callback recorded before its "sent").
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

# Largest slot start: about 116 days; longer delivery times share the last slot.
_LIMIT_MS = 10**10


def _lows() -> tuple[int, ...]:
    lows = [0, 1]
    while lows[-1] < _LIMIT_MS:
        lows.append(lows[-1] * 11 // 10 + 1)  # (high - 1) / low <= 1.1
    return tuple(lows)


LOWS: tuple[int, ...] = _lows()
# The stated bound: |answer - true value| / true value, for any percentile.
RELATIVE_ERROR = math.sqrt(1.1) - 1


def slot_of(ms: int) -> int:
    """The slot holding a delivery time (negative times count as 0)."""
    return max(0, bisect_right(LOWS, ms) - 1)


@dataclass(frozen=True, slots=True)
class Slot:
    """One slot's share of a window: how many times fell in it, and the extremes seen."""

    index: int
    count: int
    min_ms: int
    max_ms: int

    def estimate(self) -> float:
        """The slot's geometric middle, within the values seen in it."""
        low = LOWS[self.index]
        high = LOWS[self.index + 1] - 1 if self.index + 1 < len(LOWS) else self.max_ms
        middle = math.sqrt(low * high)
        return float(min(max(middle, self.min_ms), self.max_ms))


def percentile(slots: Iterable[Slot], pct: int) -> float:
    """The nearest-rank ``pct``-th percentile (rank ceil(pct/100 * n)) of the values
    counted in ``slots``, within ``RELATIVE_ERROR``; exact when its slot saw one value.
    0 when there is no value."""
    ordered = sorted((s for s in slots if s.count > 0), key=lambda s: s.index)
    n = sum(s.count for s in ordered)
    if n == 0:
        return 0.0
    rank = -(-pct * n // 100)
    seen = 0
    for slot in ordered:
        seen += slot.count
        if seen >= rank:
            return slot.estimate()
    return ordered[-1].estimate()  # pragma: no cover - rank <= n always stops above
