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
MOST_SLIDE = 0.25  # seconds a slot may start past its place (partner_delay)


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

    def written(self, granted: float, at: float) -> None:
        """The send granted at ``granted`` really started at ``at`` (its request went
        out): the window bound counts from then. Forgotten once N later sends were."""
        for i in range(len(self._granted) - 1, -1, -1):
            if self._granted[i] == granted:
                self._granted[i] = max(granted, at)
                return


def partner_delay(deadline: float, start: float, now: float, stall: float) -> float | None:
    """How much later than its place the slot N after this one must start, when this
    slot, which may start at ``start``, is used at ``now``; replicas share one grid, so
    that partner may be anyone's.

    A slot's ``deadline`` is its place plus half the guard: used by then, its partner,
    N spacings on, is still a window and half the guard after it. Used later, the
    partner must move by the overrun (0.0: nothing to move), and only the partner: the
    slots between are less than a window after this one either way, and the slot after
    the partner is a window after the slot after this one. Moving the whole grid, as
    the limiter did, let every late send cost every later slot its overrun; the
    lateness added up (80/s gave 76.9-78.5/s on PostgreSQL).

    A slot delayed by its own partner N before passes its delay on, less the half guard
    it gives back: so timers that wake late on average slide one slot in N later and
    later, which costs the rate a little, instead of a slot. The slot is given up
    (None) after a stall (used ``stall`` or more after it could start), or once its
    class has slid ``MOST_SLIDE`` behind its place: a delay must reach storage before
    its partner is taken, a second after the place.
    """
    if now - start >= stall:
        return None
    over = now - deadline
    if over >= MOST_SLIDE:
        return None
    return max(0.0, over)


def floors_of(starts: list[int], spacing: int, floors: list[tuple[int, int]]) -> list[int]:
    """The earliest start of each of ``starts`` (consecutive slots ``spacing`` apart),
    given delays ``(partner's place, not before)`` that late sends left.

    A delay applies to the first slot that is not more than half a spacing before its
    place; one whose place came before every slot (a place skipped while the grid was
    behind) goes to the first, so no delay is ever dropped. Returns
    0 for a slot without one.
    """
    earliest = [0] * len(starts)
    for place, not_before in floors:
        at = next((i for i, start in enumerate(starts) if start + spacing // 2 >= place), None)
        if at is not None:
            earliest[at] = max(earliest[at], not_before)
    return earliest
