"""GetMetrics' figures, each aggregated by the database.

No message row comes into Python: every figure is a COUNT, AVG or MIN (or one value
picked by ORDER BY ... OFFSET), so the cost is a few scans of the window, not a
transfer of it. The queries share one read transaction (on SQLite, one WAL snapshot),
so the figures agree with each other.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from notifier.domain.delivery import ErrorKind
from notifier.domain.metrics import FAILURES, ErrorCount, Metrics, MetricsQuery
from notifier.domain.model import EventSource, MessageQuery, Status
from notifier.domain.reconcile import AWAITING_OUTCOME
from notifier.storage.queries import conditions
from notifier.storage.rows import OUTBOX
from notifier.storage.store import Store
from notifier.storage.tables import delivery_attempts, messages, status_events

# A message's delivery time, sent to delivered. Callbacks can arrive out of order, so
# delivered_at may precede sent_at; that counts as 0, as GetDeliveryStatus reports it.
DELIVERY_TIME = case(
    (messages.c.delivered_at > messages.c.sent_at, messages.c.delivered_at - messages.c.sent_at),
    else_=0,
)


class MetricsReader(Store):
    async def metrics(self, query: MetricsQuery, *, now_ms: int) -> Metrics:
        window = conditions(
            MessageQuery(
                channel=query.channel,
                tag=query.tag,
                sender=query.sender,
                owner=query.owner,
                created_after_ms=query.start_ms,
                created_before_ms=query.end_ms,
            )
        )
        # The outbox figures are "now, all windows": the creation window does not apply
        # to them, but the channel and tag filters do, so a caller looking at one
        # channel or one tag sees that part of the backlog.
        outbox = conditions(
            MessageQuery(
                channel=query.channel, tag=query.tag, sender=query.sender, owner=query.owner
            )
        )
        async with self._reading() as conn:
            by_status = await _by_status(conn, window)
            timing = await _delivery_times(conn, window)
            codes = await _error_codes(conn, window)
            retries, ambiguous = await _attempt_counts(conn, window)
            queue_depth, oldest_due, scheduled = await _outbox(conn, outbox, now_ms)
            reconciled, unconfirmed = await _reconciliation(conn, window)
            fallbacks, fallbacks_delivered = await _fallbacks(conn, window)
        avg_time, p50, p95 = timing
        return Metrics(
            by_status={Status(status): int(n) for status, n in by_status},
            avg_delivery_time_ms=avg_time,
            p50_delivery_time_ms=p50,
            p95_delivery_time_ms=p95,
            error_codes=tuple(ErrorCount(int(code), int(n)) for code, n in codes),
            retries=retries,
            ambiguous_outcomes=ambiguous,
            queue_depth=queue_depth,
            oldest_pending_age_ms=max(0, now_ms - oldest_due) if oldest_due is not None else 0,
            scheduled=scheduled,
            reconciled=reconciled,
            unconfirmed=unconfirmed,
            fallbacks=fallbacks,
            fallbacks_delivered=fallbacks_delivered,
        )


async def _by_status(conn: AsyncConnection, window: list[Any]) -> list[Any]:
    stmt = select(messages.c.status, func.count()).where(*window).group_by(messages.c.status)
    return list((await conn.execute(stmt)).all())


async def _delivery_times(conn: AsyncConnection, window: list[Any]) -> tuple[float, float, float]:
    """(average, p50, p95) of the delivery times of the window's delivered messages."""
    timed = [*window, messages.c.sent_at.is_not(None), messages.c.delivered_at.is_not(None)]
    count, avg = (
        await conn.execute(select(func.count(), func.avg(DELIVERY_TIME)).where(*timed))
    ).one()
    p50 = await _nearest_rank(conn, timed, int(count), 50)
    p95 = await _nearest_rank(conn, timed, int(count), 95)
    return (float(avg) if avg is not None else 0.0), p50, p95


async def _error_codes(conn: AsyncConnection, window: list[Any]) -> list[Any]:
    n = func.count().label("n")
    stmt = (
        select(messages.c.error_code, n)
        .where(
            *window,
            messages.c.status.in_([s.value for s in FAILURES]),
            messages.c.error_code.is_not(None),
        )
        .group_by(messages.c.error_code)
        .order_by(n.desc(), messages.c.error_code)
    )
    return list((await conn.execute(stmt)).all())


async def _attempt_counts(conn: AsyncConnection, window: list[Any]) -> tuple[int, int]:
    """(retries, ambiguous outcomes): attempts beyond the first, summed over messages, is
    attempt rows minus the messages that have any; COUNT(CASE ...) counts the rows where
    it holds."""
    in_window = select(messages.c.id).where(*window)
    ambiguous = case(
        (delivery_attempts.c.outcome == ErrorKind.AMBIGUOUS.value, delivery_attempts.c.id)
    )
    retries, n_ambiguous = (
        await conn.execute(
            select(
                func.count() - func.count(delivery_attempts.c.message_id.distinct()),
                func.count(ambiguous),
            ).where(delivery_attempts.c.message_id.in_(in_window))
        )
    ).one()
    return int(retries), int(n_ambiguous)


async def _outbox(
    conn: AsyncConnection, where: list[Any], now_ms: int
) -> tuple[int, int | None, int]:
    """(due PENDING messages, the oldest one's creation time, SCHEDULED messages)."""
    due = and_(messages.c.status == Status.PENDING.value, messages.c.next_attempt_at <= now_ms)
    depth, oldest, scheduled = (
        await conn.execute(
            select(
                func.count(case((due, messages.c.id))),
                func.min(case((due, messages.c.created_at))),
                func.count(case((messages.c.status == Status.SCHEDULED.value, messages.c.id))),
            ).where(*where, messages.c.status.in_(OUTBOX))
        )
    ).one()
    return int(depth), (int(oldest) if oldest is not None else None), int(scheduled)


async def _reconciliation(conn: AsyncConnection, window: list[Any]) -> tuple[int, int]:
    """(messages a reconcile fetch moved, messages still awaiting an outcome that the
    reconciler stopped seeking)."""
    in_window = select(messages.c.id).where(*window)
    reconciled = (
        await conn.execute(
            select(func.count(status_events.c.message_id.distinct())).where(
                status_events.c.source == EventSource.RECONCILE.value,
                status_events.c.applied.is_(True),
                status_events.c.message_id.in_(in_window),
            )
        )
    ).scalar_one()
    unconfirmed = (
        await conn.execute(
            select(func.count()).where(
                *window,
                messages.c.status.in_([s.value for s in AWAITING_OUTCOME]),
                messages.c.reconcile_outcome.is_not(None),
            )
        )
    ).scalar_one()
    return int(reconciled), int(unconfirmed)


async def _fallbacks(conn: AsyncConnection, window: list[Any]) -> tuple[int, int]:
    """(SMS fallbacks created in the window, those of them delivered or read)."""
    reached = [Status.DELIVERED.value, Status.READ.value]
    stmt = select(
        func.count(),
        func.count(case((messages.c.status.in_(reached), 1))),
    ).where(*window, messages.c.fallback_of.is_not(None))
    total, delivered = (await conn.execute(stmt)).one()
    return int(total), int(delivered)


async def _nearest_rank(conn: AsyncConnection, where: list[Any], n: int, pct: int) -> float:
    """The ``pct``-th percentile of the delivery times matching ``where`` (``n`` of them).

    Nearest-rank method: sort the n values ascending and take the one at 1-based rank
    ceil(pct/100 * n), i.e. ORDER BY ... LIMIT 1 OFFSET rank-1. No interpolation, so the
    answer is always a time some message really took, and the same SQL runs on SQLite
    (which has no PERCENTILE_CONT) and PostgreSQL. 0 when there is no value.
    """
    if n == 0:
        return 0.0
    rank = -(-pct * n // 100)  # ceil(pct * n / 100) in integers: exact at whole ranks
    value = (
        await conn.execute(
            select(DELIVERY_TIME).where(*where).order_by(DELIVERY_TIME).limit(1).offset(rank - 1)
        )
    ).scalar_one()
    return float(value)
