"""GetMetrics in domain terms: the window asked for, its checks, and the figures.

Storage aggregates (counts, sums, the delivery-time percentiles) in SQL and hands back
a ``Metrics``; the rates are derived here from those counts, so their definitions (the
ones the proto's comments give) live in one place, next to the statuses they name.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from notifier.domain.delivery import meaning
from notifier.domain.errors import ValidationFailed, Violation
from notifier.domain.model import Channel, Status
from notifier.domain.validation import QueryRequest, validate_query

DEFAULT_WINDOW_MS = 24 * 3600 * 1000
# A year (and a leap day) of messages is the most one call may aggregate: a bound on
# the work a single request can ask of the database.
MAX_WINDOW_MS = 366 * 24 * 3600 * 1000

SENT_OR_LATER = (Status.SENT, Status.DELIVERED, Status.READ)
DELIVERED_OR_READ = (Status.DELIVERED, Status.READ)
FAILURES = (Status.FAILED, Status.UNDELIVERED)


@dataclass(frozen=True, slots=True)
class MetricsRequest:
    """A metrics request as the caller wrote it: unset window ends are None."""

    start_ms: int | None = None
    end_ms: int | None = None
    channel: Channel | None = None
    tag: str = ""
    sender: str = ""


@dataclass(frozen=True, slots=True)
class MetricsQuery:
    """A checked metrics request: messages created in [start_ms, end_ms) matching the
    filters. ``channel`` and ``tag`` also narrow the "now" figures (queue depth, oldest
    pending age, scheduled); only the window does not apply to those."""

    start_ms: int
    end_ms: int
    channel: Channel | None = None
    tag: str | None = None
    sender: str | None = None
    owner: str | None = None  # only this caller's messages; None: every caller's


def validate_metrics(
    req: MetricsRequest, now_ms: int, senders: Collection[str] | None = None
) -> MetricsQuery:
    """Fill in the default window (the 24 hours before now) and check everything at once."""
    bad: list[Violation] = []
    # validate_query owns the tag rule (the same as SendMessage's tags); field "tag".
    filters = validate_query(
        QueryRequest(tag=req.tag, channel=req.channel, sender=req.sender), "", bad, senders
    )
    end = req.end_ms if req.end_ms is not None else now_ms
    start = req.start_ms if req.start_ms is not None else end - DEFAULT_WINDOW_MS
    if end <= start:
        hint = "" if req.end_ms is not None else " (unset, end_time is now)"
        bad.append(Violation("end_time", f"must be later than start_time{hint}"))
    elif end - start > MAX_WINDOW_MS:
        bad.append(Violation("start_time", "the window may span at most 366 days"))
    if bad:
        raise ValidationFailed(bad)
    return MetricsQuery(
        start_ms=start, end_ms=end, channel=filters.channel, tag=filters.tag, sender=filters.sender
    )


@dataclass(frozen=True, slots=True)
class ErrorCount:
    """How many failed or undelivered messages ended with one Twilio error code."""

    code: int
    count: int

    @property
    def meaning(self) -> str:
        return meaning(self.code)


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


@dataclass(frozen=True, slots=True)
class Metrics:
    """The figures of one GetMetrics answer (see GetMetricsResponse in the proto).

    Counts come from SQL aggregates; ``total`` and the rates are arithmetic on them.
    Delivery times are 0 when no message in the window has both a sent and a delivered
    time. ``queue_depth``, ``oldest_pending_age_ms`` and ``scheduled`` describe the
    outbox now, whatever the window.
    """

    by_status: dict[Status, int] = field(default_factory=dict)  # only counts > 0
    avg_delivery_time_ms: float = 0.0
    p50_delivery_time_ms: float = 0.0
    p95_delivery_time_ms: float = 0.0
    error_codes: tuple[ErrorCount, ...] = ()  # most frequent first, ties by code
    retries: int = 0
    ambiguous_outcomes: int = 0
    queue_depth: int = 0
    oldest_pending_age_ms: int = 0
    scheduled: int = 0
    reconciled: int = 0  # moved by a fetch from Twilio (callbacks lost)
    unconfirmed: int = 0  # outcome unknown, no longer sought (never delivered or failed)
    fallbacks: int = 0  # SMS fallbacks created for failed WhatsApp messages
    fallbacks_delivered: int = 0  # ... of them delivered or read

    def _count(self, statuses: tuple[Status, ...]) -> int:
        return sum(self.by_status.get(s, 0) for s in statuses)

    @property
    def total(self) -> int:
        return sum(self.by_status.values())

    @property
    def sent_or_later(self) -> int:
        return self._count(SENT_OR_LATER)

    @property
    def delivered_or_read(self) -> int:
        return self._count(DELIVERED_OR_READ)

    @property
    def _known_outcomes(self) -> int:
        """Messages whose fate is known: they reached SENT or later, or failed."""
        return self.sent_or_later + self._count(FAILURES)

    @property
    def delivery_rate(self) -> float:
        return _ratio(self.delivered_or_read, self._known_outcomes)

    @property
    def read_rate(self) -> float:
        return _ratio(self.by_status.get(Status.READ, 0), self.delivered_or_read)

    @property
    def failure_rate(self) -> float:
        return _ratio(self._count(FAILURES), self._known_outcomes)
