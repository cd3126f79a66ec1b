"""GetMetrics' figures, from the rollups (storage/rollups.py) and the outbox.

A window's whole hours are read from the rollups: a few rows per hour, however many
messages, and still there after retention deleted the messages. The partial hours at
either end are counted from the message rows with the very SELECTs that maintain the
rollups, so every count and rate is exact for any window whose messages are stored (a
window's ragged ends older than the retention count only what is left). The rollups are
read together with their journal (the changes the background folder has not moved in
yet). The outbox figures ("now", any window) are counted from the messages. One read
transaction with one snapshot (SQLite's WAL snapshot; REPEATABLE READ on PostgreSQL),
so the figures agree with each other and a fold running meanwhile is seen whole or not
at all.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, and_, case, exists, func, literal, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from notifier.domain.histogram import Slot, percentile
from notifier.domain.metrics import FAILURES, ErrorCount, Metrics, MetricsQuery
from notifier.domain.model import MessageQuery, Status
from notifier.domain.reconcile import AWAITING_OUTCOME
from notifier.storage.queries import conditions
from notifier.storage.rollups import DAY_MS, HOUR_MS, KINDS, Contribution, Kind, fold
from notifier.storage.store import Store
from notifier.storage.tables import OUTBOX, message_tags, messages

# An SMS fallback counts in GetMetrics' fallbacks_delivered once it reached the phone.
REACHED = (Status.DELIVERED, Status.READ)


class MetricsReader(Store):
    async def metrics(self, query: MetricsQuery, *, now_ms: int) -> Metrics:
        # The outbox figures are "now, all windows": the creation window does not apply
        # to them, but the channel and tag filters do, so a caller looking at one
        # channel or one tag sees that part of the backlog.
        outbox = conditions(
            MessageQuery(channel=query.channel, sender=query.sender, owner=query.owner)
        )
        if query.tag is not None:  # EXISTS: driven by the few unsent, not the tag's many
            outbox.append(
                exists().where(
                    message_tags.c.message_id == messages.c.id, message_tags.c.tag == query.tag
                )
            )
        async with self._reading() as conn:
            if not self._db.is_sqlite:
                conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            totals = await _window(conn, query)
            queue_depth, oldest_due, scheduled = await _outbox(conn, outbox, now_ms)
        return Metrics(
            **_figures(totals),
            queue_depth=queue_depth,
            oldest_pending_age_ms=max(0, now_ms - oldest_due) if oldest_due is not None else 0,
            scheduled=scheduled,
        )


def _figures(totals: Contribution) -> dict[str, Any]:
    """The windowed figures (Metrics' fields) from the window's summed contribution."""
    by_status: dict[Status, int] = {}
    codes: dict[int, int] = {}
    reconciled = unconfirmed = fallbacks = fallbacks_delivered = 0
    for (table, key), figures in totals.items():
        if table == "rollup_statuses" and figures[0]:
            status, code, moved, stalled, fallback = Status(key[0]), int(key[1]), *key[2:5]
            by_status[status] = by_status.get(status, 0) + figures[0]
            if code and status in FAILURES:
                codes[code] = codes.get(code, 0) + figures[0]
            reconciled += figures[0] if moved else 0
            unconfirmed += figures[0] if stalled and status in AWAITING_OUTCOME else 0
            fallbacks += figures[0] if fallback else 0
            fallbacks_delivered += figures[0] if fallback and status in REACHED else 0
    slots = [
        Slot(int(key[0]), *figures[:1], *figures[2:])
        for (table, key), figures in totals.items()
        if table == "rollup_delivery"
    ]
    delivered = sum(s.count for s in slots)
    total_ms = sum(f[1] for (t, _), f in totals.items() if t == "rollup_delivery")
    attempts, attempted, ambiguous = totals.get(("rollup_attempts", ()), [0, 0, 0])
    return dict(
        by_status={s: by_status[s] for s in Status if by_status.get(s, 0) > 0},
        avg_delivery_time_ms=total_ms / delivered if delivered else 0.0,
        p50_delivery_time_ms=percentile(slots, 50),
        p95_delivery_time_ms=percentile(slots, 95),
        error_codes=tuple(
            ErrorCount(c, n)
            for c, n in sorted(codes.items(), key=lambda cn: (-cn[1], cn[0]))
            if n > 0
        ),
        retries=attempts - attempted,
        ambiguous_outcomes=ambiguous,
        reconciled=reconciled,
        unconfirmed=unconfirmed,
        fallbacks=fallbacks,
        fallbacks_delivered=fallbacks_delivered,
    )


async def _window(conn: AsyncConnection, query: MetricsQuery) -> Contribution:
    """The window's contribution: whole hours from the rollups, ragged ends from rows."""
    first = -(-query.start_ms // HOUR_MS) * HOUR_MS
    last = query.end_ms // HOUR_MS * HOUR_MS
    ends = [(query.start_ms, query.end_ms)] if first >= last else [
        (query.start_ms, first), (last, query.end_ms)
    ]  # fmt: skip
    filters = MessageQuery(channel=query.channel, sender=query.sender, owner=query.owner)
    ragged = [
        and_(messages.c.created_at >= start, messages.c.created_at < end)
        for start, end in ends
        if start < end
    ]
    totals: Contribution = {}
    # Two statements a kind, whatever the window: each is a round trip (a hop to SQLite's
    # thread, or to the PostgreSQL server), and they were most of a read's fixed cost.
    for kind in KINDS:
        # The journal holds hourly rows not yet folded in: read with the tables.
        rolled = [
            _rolled(kind, t, query, start, end)
            for table, start, end in _spans(kind, first, last)
            for t in (table, kind.journal)
        ]
        if rolled:
            fold(totals, kind, await conn.execute(union_all(*rolled)), kind.dims)
        if ragged:
            where = [or_(*ragged), *conditions(filters)]
            stmt = kind.query(where, tagged=query.tag is not None, tag=query.tag)
            fold(totals, kind, await conn.execute(stmt), kind.dims)
    return totals


def _spans(kind: Kind, first: int, last: int) -> list[tuple[Table, int, int]]:
    """Where the whole hours [first, last) are read: whole days from the daily table
    when the kind has one, the hours around them from the hourly one."""
    day_first = -(-first // DAY_MS) * DAY_MS
    day_last = last // DAY_MS * DAY_MS
    if kind.daily is None or day_first >= day_last:
        spans = [(kind.table, first, last)]
    else:
        spans = [(kind.table, first, day_first), (kind.daily, day_first, day_last)]
        spans.append((kind.table, day_last, last))
    return [(table, start, end) for table, start, end in spans if start < end]


def _rolled(kind: Kind, t: Table, query: MetricsQuery, first: int, last: int) -> Any:
    """The sums of rollup (or journal) table ``t`` over [first, last) for the query's
    channel, tag, owner and sender."""
    figures = [func.sum(t.c[s]).label(s) for s in kind.sums]
    if kind.extremes:
        figures += [func.min(t.c.min_ms).label("min_ms"), func.max(t.c.max_ms).label("max_ms")]
    where = [t.c.bucket_ms >= first, t.c.bucket_ms < last, t.c.tag == (query.tag or "")]
    if query.channel is not None:
        where.append(t.c.channel == query.channel.value)
    if query.owner is not None:
        where.append(t.c.owner == query.owner)
    if query.sender is not None:
        where.append(t.c.sender == query.sender)
    dims = [t.c[d] for d in kind.dims]
    return select(*dims, *figures).where(*where).group_by(*dims)


async def _outbox(
    conn: AsyncConnection, where: list[Any], now_ms: int
) -> tuple[int, int | None, int]:
    """(due PENDING messages, the oldest one's creation time, SCHEDULED messages)."""
    due = and_(messages.c.status == Status.PENDING.value, messages.c.next_attempt_at <= now_ms)
    depth, oldest, scheduled = (
        await conn.execute(
            select(
                # count(1), not count(id): the index holds no id, and reading it from
                # each row cost 25 ms per 10,000 pending (migration 0012).
                func.count(case((due, literal(1)))),
                func.min(case((due, messages.c.created_at))),
                func.count(case((messages.c.status == Status.SCHEDULED.value, literal(1)))),
            ).where(*where, messages.c.status.in_(OUTBOX))
        )
    ).one()
    return int(depth), (int(oldest) if oldest is not None else None), int(scheduled)
