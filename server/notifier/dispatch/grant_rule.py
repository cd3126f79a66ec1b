"""When a rate-limited send may start: the pure rule, with no clock and no waiting.

N sends per window (80 per second). Each grant is the latest of three bounds:

- **the grid**: slot k at ``start + k x spacing``, ``spacing = (window + guard) / N``.
  A timer that wakes a little late delays that one send, not every later one: spacing
  each send from the previous grant let the lateness add up (80/s gave 68-76/s). On the
  grid the rate is N / (window + guard) however late the timers are (80/s: 79.5/s).
- **the window**: send i starts at least ``window + guard / 2`` after send i-N, counted
  on the times sends really started, so no window holds more than N sends even when a
  late grant is followed by on-time ones; the half guard left absorbs the jitter between
  the grant and the request reaching Twilio. It binds only after a grant later than
  ``guard / 2``, and gives that lateness back half a guard per window.
- **the gap**: at least half a spacing after the previous send, so a stall is made up
  at twice the rate at most, never with back-to-back sends (a burst opens connections
  at once, and their uneven delays are the jitter that crowds a window at the far end).

A grid left more than ``CATCH_UP_SLOTS`` behind (the limiter sat idle, or the process
stalled) moves up to that distance behind: a stall is made up for a few slots, not
with a burst.
"""

from __future__ import annotations

from collections import deque

CATCH_UP_SLOTS = 4


class GrantRule:
    """The grants of one limiter so far, and when the next one may be."""

    def __init__(self, limit: int, window: float, guard: float) -> None:
        if limit < 1 or window <= 0 or guard < 0:
            raise ValueError("limit must be at least 1, window positive, guard not negative")
        self.limit = limit
        self.window = window
        self.guard = guard
        self.spacing = (window + guard) / limit
        self._granted: deque[float] = deque(maxlen=limit)  # the last N grants
        self._next: float | None = None  # the grid's next slot

    def _slot(self, now: float) -> float:
        """This grant's place on the grid."""
        if self._next is None:
            return now
        return max(self._next, now - CATCH_UP_SLOTS * self.spacing)

    def earliest(self, now: float) -> float:
        """The earliest time, ``now`` or later, at which the next send may start."""
        at = max(now, self._slot(now))
        if len(self._granted) == self.limit:
            at = max(at, self._granted[0] + self.window + self.guard / 2)
        if self._granted:
            at = max(at, self._granted[-1] + self.spacing / 2)
        return at

    def grant(self, now: float) -> None:
        """A send starts at ``now`` (no earlier than ``earliest``: the caller waited)."""
        self._next = self._slot(now) + self.spacing
        self._granted.append(now)


def grid_push(deadline: float, now: float, most: float) -> float | None:
    """How far a grid shared by replicas must move on for a slot to be used at ``now``.

    A slot's ``deadline`` is its time plus half the guard, plus every push made since
    it was taken: used by then, the slot N after it (perhaps another replica's, taken
    a second later, after the pushes landed) is still a window and half the guard
    after it. Used later, the grid must move on by the overrun (0.0: nothing to
    move); that one push also covers every slot already held, which may then be used
    at once, so a late wake-up costs the overrun once instead of a slot each. An
    overrun of ``most`` or more (a stall) gives the slot up instead (None): moving every
    replica's grid that far would cost more than the slots it saves. Giving up every
    slot more than half the guard late, as the limiter did, cost 80/s down to 57/s
    when the event loop's timers woke 0-12 ms late, and at high rates (1,000,000/s,
    slots a microsecond apart) it gave up nearly every slot: dispatch on PostgreSQL
    ran at 114/s instead of 276/s.
    """
    over = now - deadline
    if over <= 0:
        return 0.0
    if over >= most:
        return None
    return over
