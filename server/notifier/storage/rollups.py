"""GetMetrics' rollups: what every message adds to the figures, per creation hour.

A message contributes to three tables (tables.py): its status, error code and
reconciliation marks, its delivery time's histogram slot, and its send attempts, under
its creation hour, channel, owner, sender profile and tag "" (every message) plus each
of its tags.

* Keeping them in step is the database's job: row triggers (migration 0011) on
  messages, message_tags, delivery_attempts and status_events append each changed
  row's old contribution negated and its new one to the journal tables, inside the
  statement that makes the change. Exact under concurrency (the trigger sees the row
  as its statement changed it, under that statement's row lock) and no extra round
  trip for the writer. Appends never wait for one another, so SendMessage does not
  queue behind a shared hourly row; the background folder (``fold_journal``) moves
  the journal into the rollups, and GetMetrics reads both. A rolled-back transaction
  takes its journal rows with it. Retention and erasure never subtract (deletes have
  no trigger).
* The SELECTs below say what a set of messages contributes: ``rebuild`` (tests that
  write rows behind the service's back; the migration has its own frozen copy) and the
  partial hours at the ends of a GetMetrics window, counted from the message rows.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Executable,
    Integer,
    Table,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal_column,
)
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from notifier.domain.delivery import ErrorKind
from notifier.domain.histogram import LOWS
from notifier.domain.model import EventSource
from notifier.storage.tables import (
    delivery_attempts,
    journal_attempts,
    journal_delivery,
    journal_statuses,
    message_tags,
    messages,
    rollup_attempts,
    rollup_delivery,
    rollup_delivery_daily,
    rollup_statuses,
    rollup_statuses_daily,
)

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

# A message's delivery time, sent to delivered. Callbacks can arrive out of order, so
# delivered_at may precede sent_at; that counts as 0, as GetDeliveryStatus reports it.
DELIVERY_TIME = case(
    (messages.c.delivered_at > messages.c.sent_at, messages.c.delivered_at - messages.c.sent_at),
    else_=0,
)


def _slot_between(low: int, high: int) -> Any:
    """The histogram slot of DELIVERY_TIME among slots [low, high): a binary search
    written as nested CASEs (8 comparisons a row instead of a couple of hundred).
    Constants are inlined (literal_column), not bound: PostgreSQL matches a GROUP BY
    expression to its SELECT twin only when both are the same text."""
    if high - low == 1:
        return literal_column(str(low))
    mid = (low + high) // 2
    below = literal_column(str(LOWS[mid])) > DELIVERY_TIME
    return case((below, _slot_between(low, mid)), else_=_slot_between(mid, high))


# As one literal text (plain SQL both dialects read alike): SQLAlchemy would otherwise
# walk the few hundred CASE nodes for a cache key on every execution.
_SLOT: ColumnElement[int] = literal_column(
    "("
    + str(
        _slot_between(0, len(LOWS)).compile(
            dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}
        )
    )
    + ")"
)
_BUCKET = messages.c.created_at - messages.c.created_at % literal_column(str(HOUR_MS))
# Reconciliation marks (plain SQL for the same reason as _SLOT): a reconcile fetch moved
# the message; the reconciler stopped seeking its outcome.
_RECONCILED: ColumnElement[int] = literal_column(
    "(CASE WHEN EXISTS (SELECT 1 FROM status_events WHERE status_events.message_id ="  # noqa: S608
    f" messages.id AND status_events.source = '{EventSource.RECONCILE.value}'"
    " AND status_events.applied) THEN 1 ELSE 0 END)"
)
_STALLED: ColumnElement[int] = literal_column(
    "(CASE WHEN messages.reconcile_outcome IS NULL THEN 0 ELSE 1 END)"
)
_FALLBACK: ColumnElement[int] = literal_column(
    "(CASE WHEN messages.fallback_of IS NULL THEN 0 ELSE 1 END)"
)
_AMBIGUOUS = case(
    (delivery_attempts.c.outcome == ErrorKind.AMBIGUOUS.value, delivery_attempts.c.id)
)

Where = Sequence[ColumnElement[bool]]


@dataclass(frozen=True)
class Kind:
    """One rollup table: its grouping columns after (bucket, channel, tag, owner,
    sender), its additive figures and (delivery only) the extremes seen."""

    table: Table
    journal: Table  # the changes not yet folded into ``table``
    dims: tuple[str, ...]
    sums: tuple[str, ...]
    extremes: tuple[str, ...] = ()
    daily: Table | None = None  # the same per UTC day, kept beside the hourly rows

    def query(self, where: Where, *, tagged: bool, tag: str | None = None) -> Any:
        """The contribution of the messages matching ``where``: under tag "" or
        (``tagged``) under each of their tags (only ``tag`` when given)."""
        tag_col: Any = message_tags.c.tag if tagged and tag is None else literal_column("''")
        source: Any = messages
        conds = [*where]
        if tag is not None:
            # One tag (a GetMetrics read): EXISTS keeps the plan driven by the
            # messages' creation-time range, not by every message with the tag.
            tagged = False
            conds.append(
                exists().where(
                    message_tags.c.message_id == messages.c.id, message_tags.c.tag == tag
                )
            )
        if tagged:
            source = source.join(message_tags, message_tags.c.message_id == messages.c.id)
        dims, figures = _columns(self.table)
        who = [messages.c.caller, messages.c.sender]
        group = [_BUCKET, messages.c.channel, *([tag_col] if tagged else []), *who, *dims]
        labeled = [_BUCKET.label("bucket_ms"), messages.c.channel, tag_col.label("tag")]
        labeled += [messages.c.caller.label("owner"), messages.c.sender]
        stmt = sa_select(*labeled, *(d.label(n) for n, d in zip(self.dims, dims, strict=True)))
        stmt = stmt.add_columns(*(f.label(n) for n, f in zip(self.names, figures, strict=True)))
        if self.table is rollup_attempts:
            source = source.join(delivery_attempts, delivery_attempts.c.message_id == messages.c.id)
        if self.table is rollup_delivery:
            conds += [messages.c.sent_at.is_not(None), messages.c.delivered_at.is_not(None)]
        return stmt.select_from(source).where(*conds).group_by(*group)

    @property
    def names(self) -> tuple[str, ...]:
        return self.sums + self.extremes

    @property
    def keys(self) -> tuple[str, ...]:
        return ("bucket_ms", "channel", "tag", "owner", "sender", *self.dims)


def _columns(table: Table) -> tuple[list[Any], list[Any]]:
    """(grouping expressions, figures) of a rollup table, over messages."""
    if table is rollup_statuses:
        code = func.coalesce(messages.c.error_code, literal_column("0"))
        dims = [messages.c.status, code, _RECONCILED, _STALLED, _FALLBACK]
        return dims, [func.count()]
    if table is rollup_delivery:
        figures = [
            func.count(),
            func.sum(DELIVERY_TIME),
            func.min(DELIVERY_TIME),
            func.max(DELIVERY_TIME),
        ]
        return [_SLOT], figures
    attempted = func.count(delivery_attempts.c.message_id.distinct())
    return [], [func.count(delivery_attempts.c.id), attempted, func.count(_AMBIGUOUS)]


STATUSES = Kind(
    rollup_statuses,
    journal_statuses,
    ("status", "error_code", "reconciled", "stalled", "fallback"),
    ("n",),
    (),
    rollup_statuses_daily,
)
DELIVERY = Kind(
    rollup_delivery,
    journal_delivery,
    ("slot",),
    ("n", "total_ms"),
    ("min_ms", "max_ms"),
    rollup_delivery_daily,
)
ATTEMPTS = Kind(rollup_attempts, journal_attempts, (), ("attempts", "attempted", "ambiguous"))
KINDS = (STATUSES, DELIVERY, ATTEMPTS)

Contribution = dict[tuple[str, tuple[Any, ...]], list[int]]  # (table, keys) -> figures


def rebuild() -> list[Executable]:
    """Statements that rebuild every rollup from the stored rows (the migration; tests
    that write rows behind the service's back)."""
    stmts: list[Executable] = []
    for kind in KINDS:
        stmts += [delete(kind.journal), delete(kind.table)]
        for tagged in (False, True):
            query = kind.query([], tagged=tagged)
            stmts.append(insert(kind.table).from_select([*kind.keys, *kind.names], query))
        if kind.daily is not None:
            stmts += [delete(kind.daily), _days_from_hours(kind, kind.daily)]
    return stmts


def _days_from_hours(kind: Kind, daily: Table) -> Executable:
    hourly = kind.table
    day = hourly.c.bucket_ms - hourly.c.bucket_ms % literal_column(str(DAY_MS))
    dims = [hourly.c[k] for k in kind.keys[1:]]
    figures: list[Any] = [func.sum(hourly.c[s]) for s in kind.sums]
    if kind.extremes:
        figures += [func.min(hourly.c.min_ms), func.max(hourly.c.max_ms)]
    query = sa_select(day, *dims, *figures).group_by(day, *dims)
    return insert(daily).from_select([*kind.keys, *kind.names], query)


def fold(into: Contribution, kind: Kind, rows: Iterable[Any], keys: Sequence[str]) -> None:
    """Add ``rows`` (keys, then figures) into ``into``, keyed by ``keys``."""
    for row in rows:
        m = row._mapping
        key = (kind.table.name, tuple(m[k] for k in keys))
        figures = [int(m[n] or 0) for n in kind.names]
        had = into.get(key)
        if had is None:
            into[key] = figures
            continue
        for i in range(len(kind.sums)):
            had[i] += figures[i]
        if kind.extremes:
            had[-2], had[-1] = min(had[-2], figures[-2]), max(had[-1], figures[-1])


async def fold_journal(conn: AsyncConnection, limit: int) -> int:
    """Move up to ``limit`` of the oldest journal rows of each table into the rollups
    (hourly and daily); returns the most rows moved from one table. DELETE ...
    RETURNING takes only committed rows and locks them, so two folders never move a
    row twice; the upserts go in key order, so two folders cannot deadlock."""
    moved = 0
    for kind in KINDS:
        rows = (await conn.execute(_taken(kind), {"limit": limit})).all()
        moved = max(moved, len(rows))
        found: Contribution = {}
        fold(found, kind, rows, kind.keys)
        upserts = [
            dict(zip(kind.keys, key[1], strict=True)) | dict(zip(kind.names, figures, strict=True))
            for key, figures in sorted(found.items())
        ]
        if not upserts:
            continue
        await conn.execute(_upsert(conn.dialect.name, kind, kind.table), upserts)
        if kind.daily is not None:
            await conn.execute(_upsert(conn.dialect.name, kind, kind.daily), _by_day(kind, upserts))
    return moved


def _by_day(kind: Kind, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Hourly delta rows summed per day (in key order, as the hourly ones)."""
    days: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        day = row | {"bucket_ms": row["bucket_ms"] - row["bucket_ms"] % DAY_MS}
        key = tuple(day[k] for k in kind.keys)
        had = days.setdefault(key, day)
        if had is not day:
            for s in kind.sums:
                had[s] += day[s]
            if kind.extremes:
                had["min_ms"] = min(had["min_ms"], day["min_ms"])
                had["max_ms"] = max(had["max_ms"], day["max_ms"])
    return [days[k] for k in sorted(days)]


# Built once per kind: the folder runs every few seconds, and building these (the upsert's
# EXCLUDED columns most of all) was 1.4 % of the dispatcher's CPU on SQLite.
@functools.lru_cache(maxsize=16)
def _taken(kind: Kind) -> Any:
    """The oldest ``:limit`` journal rows of ``kind``, deleted and returned."""
    j = kind.journal
    oldest = sa_select(j.c.id).order_by(j.c.id).limit(bindparam("limit", type_=Integer))
    return (
        delete(j)
        .where(j.c.id.in_(oldest))
        .returning(*(j.c[c] for c in kind.keys), *(j.c[c] for c in kind.names))
    )


@functools.lru_cache(maxsize=16)
def _upsert(dialect: str, kind: Kind, table: Table) -> Any:
    ins: Any = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    values: dict[str, Any] = {s: table.c[s] + ins.excluded[s] for s in kind.sums}
    if kind.extremes:
        least, greatest = (
            (func.least, func.greatest) if dialect == "postgresql" else (func.min, func.max)
        )
        values["min_ms"] = least(table.c.min_ms, ins.excluded.min_ms)
        values["max_ms"] = greatest(table.c.max_ms, ins.excluded.max_ms)
    return ins.on_conflict_do_update(index_elements=list(kind.keys), set_=values)
