"""An exact rate limit: at most N sends in any window of one second.

A token bucket with a burst allowance lets 2N through in some one-second windows
(a full bucket plus a second's refill); the last N send times cannot. When each send
may start is the pure rule of grant_rule.py: slots on a fixed grid (timer lateness
does not add up), never closer than a window to the send N before (however late the
timers), never back to back. The guard added to the window absorbs the jitter between
taking a slot here and the request reaching Twilio, so the limit also holds where
Twilio counts; it costs N / (1 s + guard), 79.2/s at 80/s.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from contextvars import ContextVar

from notifier.dispatch.grant_rule import GrantRule, floors_of, partner_delay
from notifier.domain.errors import StorageUnavailable
from notifier.domain.ports import SlotStore

log = logging.getLogger(__name__)

# 10 ms: with 6 ms a dispatching process's own jitter (the SDK building the request, other
# sends' answers handled first) put 81 arrivals in one second at the emulator at 80/s;
# with 10 ms, 80 in two runs of make bench's limiter part, at 79.3/s.
DEFAULT_GUARD_SECONDS = 0.010
# Replicas share one grid in the database; each uses a slot at most half the guard late
# (or gives it up), so the other half still separates sends N apart at the far end.
SHARED_GUARD_SECONDS = 0.008


# What to tell the limiter that granted this task's send once its request is written
# (request_written). Set by acquire() in the sending task, so each send has its own.
_written_hook: ContextVar[Callable[[], None] | None] = ContextVar("rate_limited_send", default=None)


def request_written() -> None:
    """The request of the send this task was granted went out (handed to the socket,
    headers and body in one write): the limiter counts the send from now, not from its
    grant. Between the two the request is built and a connection taken; on a loaded
    machine that took long enough that sends granted a window apart reached Twilio
    closer than that (81 arrivals in one second at 80/s). Only the first request after
    a grant counts."""
    hook = _written_hook.get()
    if hook is not None:
        _written_hook.set(None)
        hook()


def limit_and_window(rate_per_second: float) -> tuple[int, float]:
    """The rate as "N sends per window": N per second, or one per 1/rate seconds when the
    rate is below one (0.5/s is one send in any two seconds, not zero per second)."""
    if rate_per_second <= 0:
        raise ValueError("rate_per_second must be positive")
    if rate_per_second >= 1:
        return int(rate_per_second), 1.0
    return 1, 1.0 / rate_per_second


class SlidingWindowLimiter:
    """The limit for this process alone (SQLite: one process owns the database)."""

    def __init__(
        self,
        rate_per_second: float,
        *,
        guard_seconds: float = DEFAULT_GUARD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate_per_second
        self.limit, self.window = limit_and_window(rate_per_second)
        self._rule = GrantRule(self.limit, self.window, guard_seconds)
        self._clock = clock
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait for a slot; slots are granted in the order they were asked for."""
        async with self._lock:
            while (wait := self._rule.earliest(now := self._clock()) - now) > 0:  # noqa: ASYNC110 - a timed wait, not a poll
                await asyncio.sleep(wait)
            granted = self._clock()
            self._rule.grant(granted)
            _written_hook.set(lambda: self._rule.written(granted, self._clock()))


# How far ahead of its time a slot may be taken: enough to hide the round trip to the
# database (ask a little early, then wait locally) even on a loaded machine. Taking a
# slot early costs nothing in accuracy: the send still waits for the slot's time.
_SLOT_LEAD_SECONDS = 0.05
_DELAY_TRIES = 5
# How long owed delays gather before one write takes them all. A delay is for the slot
# a window (1 s and the guard) after a slot just used, taken at most the lead before its
# place: written within 50 ms (and its retries), it lands long before. Written as soon
# as owed, at a far-off limit (PostgreSQL dispatch at 1,000,000/s: every send late for
# its slot, its partner owed a delay) that was a write per round trip, 1,877 writes for
# 10,000 sends and 3 % of the dispatcher's CPU. Also the wait before asking again.
_DELAY_GATHER_SECONDS = 0.05
# How fast an answer loses its worth: a thousandth, ten times what two clocks disciplined
# by NTP drift apart, so an estimate from a quick answer lasts ~10 s against one from an
# answer 20 ms slower. Seconds of error per second of age.
_CLOCK_DRIFT = 0.001
# How fast the slots may move earlier when the estimate improves: seconds per second.
_CLOCK_SLEW = 0.001
_CLOCK_READS = 8  # before the first slots
# How many recent calls of acquire() tell how fast sends want slots (SharedLimiter._demand).
_DEMAND_SAMPLES = 64


class DatabaseClock:
    """This process's estimate of the database's clock, which times the shared slots.

    The database reads its clock somewhere between asking and answering: the midpoint
    is off by at most half the round trip. The two clocks keep a fixed offset (they
    drift apart by parts per million), so the estimate is the answer that bounds it
    best, a quick one (as NTP does), trusted a little less as it ages: a slow answer
    on a loaded machine does not move the slots, and a better one replaces it. Taking
    the quickest of the last 16 answers instead moved the slots by 5.5 ms within a
    second when the event loop was blocked 0-12 ms at a time (every answer was slow,
    and the quickest aged out): sends a window apart on the grid came 0.9996 s apart.

    A better estimate still moves the slots. Later is safe; earlier would bring a slot
    closer to the one a window before it, placed by the older estimate. So the slots
    move later at once and earlier by at most ``_CLOCK_SLEW`` (1 ms a second, as NTP
    slews a clock), which the half guard absorbs. Before the first slot is placed the
    best estimate is taken as it is: on a blocked loop the first answers erred by 6 ms,
    and slewing that away took six seconds, in which the other replicas' slots a
    window later came that much too close.
    """

    def __init__(self) -> None:
        self._best: tuple[float, float, float] | None = None  # error bound, offset, when
        self._offset = 0.0  # the one in use, slewing towards the best
        self._placed = False  # whether a slot was placed by it yet
        self._slewed_at = 0.0
        self.round_trip: float | None = None  # the last one

    def observe(self, asked: float, answered: float, db_now_us: int) -> None:
        self.round_trip = answered - asked
        offset = db_now_us / 1_000_000 - (asked + answered) / 2
        if self._best is None or self.round_trip / 2 <= self._bound(answered):
            self._best = (self.round_trip / 2, offset, answered)
        target = self._best[1]
        if not self._placed or target <= self._offset:
            self._offset = target  # slots later, or no slot placed yet
        else:
            step = (answered - self._slewed_at) * _CLOCK_SLEW
            self._offset = min(target, self._offset + step)
        self._slewed_at = answered

    def _bound(self, now: float) -> float:
        """How far off the best estimate may be by ``now``."""
        assert self._best is not None
        error, _, at = self._best
        return error + (now - at) * _CLOCK_DRIFT

    def local(self, db_us: int) -> float:
        """A database time (microseconds) on this process's clock."""
        assert self._best is not None, "observe an answer first"
        self._placed = True
        return db_us / 1_000_000 - self._offset


class SharedLimiter:
    """The same bound for all replicas together: the grid lives in shared storage.

    Slots are spaced evenly, ``(1 s + guard) / N`` apart across every replica, on a grid
    the database keeps (one row per sender): a late send never moves the slots after it.
    A process takes slots only shortly before they start (at most
    ``_SLOT_LEAD_SECONDS`` ahead), for sends waiting for them. A send that starts more
    than half the guard after its place delays the slot N after it by the overrun (a
    row written in the background, long before that slot is taken a second later, and
    taken with it); an overrun of the lead or more (a stall) gives the slot up instead
    (grant_rule.partner_delay). So sends N apart are at least a second and half the
    guard apart, and no one-second window holds more than N, while a late send costs
    one slot its overrun, not every later slot (the grid moved on by each overrun gave
    76.9-78.5/s at 80/s with two replicas). At high rates one request takes several
    slots, so the database sees far fewer queries than sends.
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
        self._limit = limit
        self._late = guard_seconds / 2  # how late past its place a slot may be used
        self._stall = max(self.spacing, _SLOT_LEAD_SECONDS)
        self._spacing_us = max(1, round(self.spacing * 1_000_000))
        self._max_batch = max(1, int(_SLOT_LEAD_SECONDS / self.spacing))
        self._store = store
        self._sender = sender
        self._clock = clock
        self._db_clock = DatabaseClock()
        self._lock = asyncio.Lock()
        # Taken, not yet used: (start, deadline, the partner's place): the earliest start
        # and the latest one that needs no delay, on the local clock; the place of the
        # slot N later on the store's (grant_rule.partner_delay).
        self._slots: deque[tuple[float, float, int]] = deque()
        self._using: tuple[float, int, float] = (0.0, 0, 0.0)  # deadline, partner, delay
        self._wanted = 0  # callers inside acquire()
        self._asked: deque[float] = deque(maxlen=_DEMAND_SAMPLES)  # when they came
        self._refill: asyncio.Task[None] | None = None  # taking more slots
        self._last: float | None = None  # when this process last sent
        self._owed: list[tuple[int, int]] = []  # delays not yet written
        self._writing: asyncio.Task[None] | None = None
        self.given_up = 0  # slots too late to use (figures for benchmarks and tests)
        self.delayed_seconds = 0.0  # the slots N after late sends were delayed this much

    async def acquire(self) -> None:
        """Wait for a slot of the sender shared with every replica (raises
        StorageUnavailable when storage cannot be asked: nothing is sent then)."""
        self._wanted += 1
        self._asked.append(self._clock())
        try:
            async with self._lock:
                while (wait := await self._next_start()) > 0:  # noqa: ASYNC110 - a timed wait
                    await asyncio.sleep(wait)
                self._slots.popleft()
                self._last = self._clock()
                deadline, partner, delayed = self._using
                _written_hook.set(lambda: self._written(deadline, partner, delayed))
        finally:
            self._wanted -= 1

    def _written(self, deadline: float, partner: int, delayed: float) -> None:
        """The send of a slot went out now: its partner moves by the overrun past the
        slot's deadline, if more than it moved at the grant. Never given up here: the
        request is out."""
        if (over := self._clock() - deadline) > delayed:
            self._delay(partner, over, delayed)

    async def _next_start(self) -> float:
        """Seconds until the next usable slot starts (0: now); slots too late to use
        are given up, and more are taken before the last one is used."""
        while True:
            now = self._clock()
            refill = self._refilling(now)
            if not self._slots:
                if refill is None:
                    continue
                await asyncio.shield(refill)  # raises StorageUnavailable: nothing sent
                continue
            start, deadline, partner = self._slots[0]
            if self._last is not None:
                # Never back to back with our own last send, even after a late wake-up.
                start = max(start, self._last + self.spacing / 2)
            if start > now:
                return start - now
            delay = partner_delay(deadline, start, now, self._stall)
            if delay is None:
                self._slots.popleft()
                self.given_up += 1
                continue
            if delay > 0:
                self._delay(partner, delay)
            self._using = (deadline, partner, delay)
            return 0.0

    def _delay(self, partner: int, seconds: float, before: float = 0.0) -> None:
        """The slot at ``partner`` (N after the one used now) starts ``seconds`` late
        (instead of ``before``: storage keeps the later of two delays of one slot)."""
        self.delayed_seconds += seconds - before
        self._owed.append((partner, partner + max(1, round(seconds * 1_000_000))))
        if self._writing is None or self._writing.done():
            self._writing = asyncio.create_task(self._write_delays())

    async def _write_delays(self) -> None:
        """Write the owed delays, gathered for a moment; storage that fails is asked
        again (a delay must land before its slot is taken, a second from now)."""
        failures = 0
        while self._owed:
            # Gathering, and after a failure the wait before asking again.
            await asyncio.sleep(_DELAY_GATHER_SECONDS)
            owed, self._owed = self._owed, []
            try:
                await self._store.delay_slots(self._sender, owed)
                failures = 0
            except StorageUnavailable:
                self._owed[:0] = owed
                failures += 1
                if failures >= _DELAY_TRIES:
                    log.warning("could not delay %d shared send slots", len(self._owed))
                    self._owed = []
                    return

    def _refilling(self, now: float) -> asyncio.Task[None] | None:
        """The request for more slots, started in the background when the slots held run
        out within half the lead and callers want more: the round trip then overlaps
        the wait for the slots held (taking them only once none was left lost the
        first new one whenever the answer took longer than a spacing)."""
        if self._refill is not None and self._refill.done():
            failed = self._refill.exception()  # raised to a caller that needs slots
            self._refill = None
            if failed is not None and not self._slots:
                raise failed
        held = len(self._slots)
        # What the pace brings within the lead; never for nobody: a slot taken and not
        # used is lost to the other replicas too.
        pace = self._demand(now) if self._wanted else 0
        # Callers waiting beyond the slots held, or the slots held down to half the pace.
        short = self._wanted > held or held < pace // 2
        # By places: a slot delayed (its start later than its place) is no reason to
        # wait for it before taking the next places.
        last = max((deadline for _, deadline, _ in self._slots), default=None)
        low = last is None or last - self._late < now + _SLOT_LEAD_SECONDS / 2
        if self._refill is None and short and low:
            count = min(max(self._wanted, pace) - held, self._max_batch)
            self._refill = asyncio.create_task(self._take(count))
        return self._refill

    def _demand(self, now: float) -> int:
        """The slots sends will ask for within the lead, at the pace they asked lately.

        Taking only the slots wanted at the moment made every send wait for a round
        trip when sends came faster than the round trips (a far-off limit, the
        database busy): each request brought the few who had come during the last one,
        and on PostgreSQL a send waited 21 ms on average for its slot at 1,000,000/s.
        Taken for the pace instead, the next slots are there when sends come. Near the
        limit this changes nothing: a lead's worth of slots (``_max_batch``) is the most
        a request takes either way."""
        if len(self._asked) < 2 or now <= self._asked[0]:
            return 0
        return int(len(self._asked) / (now - self._asked[0]) * _SLOT_LEAD_SECONDS)

    def _hold(self, places: list[int], delays: list[tuple[int, int]]) -> None:
        """Keep the slots taken at ``places``, each starting no earlier than its delay."""
        local = self._db_clock.local
        partner = self._limit * self._spacing_us
        for place, not_before in zip(
            places, floors_of(places, self._spacing_us, delays), strict=True
        ):
            self._slots.append(
                (local(max(place, not_before)), local(place) + self._late, place + partner)
            )
        # Earliest start first: a delayed slot holds up none of the others.
        self._slots = deque(sorted(self._slots))

    async def _calibrate(self) -> None:
        """Read the database's clock a few times before the first slots: the first
        answer alone may be slow (a busy loop), and an estimate placed late is slewed
        back only 1 ms a second, while the other replicas' estimates are right: their
        slots a window after this one's then came 5-6 ms too close (the event loop
        blocked 0-12 ms at a time)."""
        for _ in range(_CLOCK_READS):
            asked = self._clock()
            now_us = await self._store.clock_us()
            self._db_clock.observe(asked, self._clock(), now_us)

    async def _take(self, count: int) -> None:
        lead_us = round(_SLOT_LEAD_SECONDS * 1_000_000)
        if self._db_clock.round_trip is None:
            await self._calibrate()
        while True:
            # A grid that fell behind starts again a little ahead of the database's
            # now: far enough for the answer to get here before its first slot.
            trip = self._db_clock.round_trip
            restart = _SLOT_LEAD_SECONDS / 2 if trip is None else 2 * trip + 0.001
            asked = self._clock()
            slot_us, next_us, now_us, delays = await self._store.take_slots(
                self._sender,
                self._spacing_us,
                count,
                lead_us,
                round(min(restart, _SLOT_LEAD_SECONDS) * 1_000_000),
            )
            self._db_clock.observe(asked, self._clock(), now_us)
            if slot_us is not None:
                self._hold([slot_us + i * self._spacing_us for i in range(count)], delays)
                return
            if self._slots:
                return  # others took the next slots: ask again when these run low
            # Come back when the next slot is within the lead.
            ready = self._db_clock.local(next_us) - _SLOT_LEAD_SECONDS / 2
            await asyncio.sleep(max(0.0, ready - self._clock()))


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
        profiles: Mapping[str, tuple[str, float]] | None = None,
    ):
        """``profiles``: sender profile name -> (limit key, rate), issue 16; a profile
        not listed is limited under the provider's own sender at ``rate_per_second``."""
        self._rate = rate_per_second
        self._profiles = dict(profiles or {})
        self._rates = {key: rate for key, rate in self._profiles.values()}
        default = DEFAULT_GUARD_SECONDS if shared is None else SHARED_GUARD_SECONDS
        self._guard = default if guard_seconds is None else guard_seconds
        self._shared = shared
        self._limiters: dict[str, SlidingWindowLimiter | SharedLimiter] = {}
        self._shares: dict[str, asyncio.Semaphore] = {}

    def share_of(self, profile: str, fallback: str) -> asyncio.Semaphore:
        """How many of a sender profile's messages may hold send slots at once: about a
        second of its rate (at least 2), enough to keep it at its rate while a request
        takes up to a second, and no more, so a slow sender's backlog waiting for its
        limit leaves the other slots to the other senders."""
        key, _ = self._profiles.get(profile, (fallback, self._rate))
        share = self._shares.get(key)
        if share is None:
            rate = self._rates.get(key, self._rate)
            share = self._shares[key] = asyncio.Semaphore(max(2, math.ceil(rate)))
        return share

    def for_profile(self, profile: str, fallback: str) -> SlidingWindowLimiter | SharedLimiter:
        """The limiter of a sender profile's messages; ``fallback`` is the key of a
        profile without an entry (the provider's sender)."""
        key, _ = self._profiles.get(profile, (fallback, self._rate))
        return self.for_sender(key)

    def for_sender(self, sender: str) -> SlidingWindowLimiter | SharedLimiter:
        limiter = self._limiters.get(sender)
        if limiter is None:
            rate = self._rates.get(sender, self._rate)
            if self._shared is not None:
                limiter = SharedLimiter(self._shared, sender, rate, guard_seconds=self._guard)
            else:
                limiter = SlidingWindowLimiter(rate, guard_seconds=self._guard)
            self._limiters[sender] = limiter
        return limiter
