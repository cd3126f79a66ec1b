"""What Twilio tells us: status callbacks (applied by the rule in domain/reports.py) and
inbound messages (with what they mean for the sender's window and consent)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import Any

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from notifier.batching import Coalescer
from notifier.domain.clock import Clock, now_ms
from notifier.domain.deferral import Resend, judge_deferral
from notifier.domain.inbound import Consent, InboundMessage
from notifier.domain.model import CallbackResult, Channel, EventSource, Status, StatusReport
from notifier.domain.reports import HISTORY_SOURCES, PastEvent, ReportTarget, judge_report
from notifier.storage.driver import execute_all, select_in
from notifier.storage.engine import DUE_CHANNEL, EVENTS_CHANNEL, Database, notify
from notifier.storage.fallbacks import FAILURES, follow_failures
from notifier.storage.rows import STAMP_COLUMNS, chunks, event_row, new_message_id
from notifier.storage.store import Store
from notifier.storage.tables import (
    delivery_attempts,
    inbound_messages,
    messages,
    recipients,
    status_events,
)

Applied = tuple[CallbackResult, str | None]

# News about a message starts the reconciler's schedule for it again (no fetch since).
_NO_FETCHES_YET = {"reconcile_fetches": 0, "reconcile_at": None}

# The columns a status report may change.
_REPORTED = (
    "status",
    "twilio_sid",
    "error_code",
    "error_message",
    "next_attempt_at",  # a deferral re-queues the message (domain/deferral.py)
    *STAMP_COLUMNS.values(),
)


# What applying a report reads of a message (and writes back: _REPORTED, updated_at).
_READ = tuple(messages.c[n] for n in ("id", *_REPORTED, "updated_at", "attempts", "expires_at"))
_READ_NAMES = tuple(c.name for c in _READ)

# A message's history as the rule reads it (domain/reports.py), in the order stored.
_HISTORY_READ = (
    status_events.c.id,
    status_events.c.message_id,
    status_events.c.status,
    status_events.c.source,
)
_HISTORY = frozenset(s.value for s in HISTORY_SOURCES)


def _by_id(rows: Iterable[Sequence[Any]]) -> dict[str, dict[str, Any]]:
    """Rows of ``_READ`` as id -> row."""
    return {r[0]: dict(zip(_READ_NAMES, r, strict=True)) for r in rows}


def _first(row: Sequence[Any]) -> Any:
    return row[0]


class _ReportBatch(Coalescer[StatusReport, Applied]):
    """Callbacks that arrive together are applied in one piece of work, in order; if the
    batch fails, each is tried again on its own, so one bad callback fails only itself."""

    def __init__(self, apply: Callable[[list[StatusReport]], Awaitable[list[Applied]]]) -> None:
        super().__init__("report-batch")
        self._apply = apply

    async def flush(self, items: list[StatusReport]) -> list[Applied]:
        return await self._apply(items)


class Callbacks(Store):
    def __init__(self, db: Database, clock: Clock = now_ms) -> None:
        super().__init__(db, clock)
        self._reports = _ReportBatch(self._apply)

    async def apply_report(self, report: StatusReport) -> Applied:
        """Record a status Twilio reported; move the message only forward."""
        return await self._reports.submit(report)

    async def _apply(self, reports: list[StatusReport]) -> list[Applied]:
        return await self._write(partial(self._apply_reports, reports=reports, now=self._clock()))

    async def _apply_reports(
        self, conn: AsyncConnection, reports: list[StatusReport], now: int
    ) -> list[Applied]:
        """Apply ``reports`` in order, each exactly as alone (a later one sees an earlier
        one's effect), with bulk reads and one executemany per table.

        The messages are read under row locks (PostgreSQL): two callbacks for one
        message, or a callback racing the dispatcher's record, take turns, so the
        duplicate check and the forward-only move see each other's writes. SQLite's
        single writer holds the write lock from the first read.
        """
        found, by_sid = await self._targets(conn, reports)
        history = await _histories(conn, sorted(found))
        earlier = await _earlier_sids(
            conn, sorted(i for i, r in found.items() if not r["twilio_sid"])
        )
        results: list[Applied] = []
        failed: set[str] = set()  # moved to FAILED or UNDELIVERED: their fallback may follow
        events: list[dict[str, Any]] = []
        touched: dict[str, dict[str, Any]] = {}
        resent: list[dict[str, Any]] = []  # the attempts a deferral re-queued
        for report in reports:
            row = found.get(report.message_id or "")
            if row is None:
                row = found.get(by_sid.get(report.twilio_sid, ""))
            if row is None:
                results.append((CallbackResult.UNKNOWN, None))
                continue
            effect = judge_report(report, _target(row, earlier), history[row["id"]])
            results.append((effect.result, row["id"]))
            if not effect.writes:
                continue
            row["updated_at"] = now
            if effect.adopt_sid:
                row["twilio_sid"] = report.twilio_sid
                by_sid[report.twilio_sid] = row["id"]
            if effect.new_status is not None:
                row["status"] = effect.new_status.value
                if effect.new_status in FAILURES:
                    failed.add(row["id"])
            if effect.sets_error:
                row["error_code"], row["error_message"] = report.error_code, report.error_message
            # A fetch from Twilio says when the step happened (date_sent); a callback
            # happens now.
            at = report.occurred_at_ms if report.occurred_at_ms is not None else now
            if effect.stamp is not None:
                row[STAMP_COLUMNS[effect.stamp]] = at
            touched[row["id"]] = row
            history[row["id"]].append(PastEvent(report.status, effect.source))
            applied = effect.result is CallbackResult.APPLIED
            event = event_row(row["id"], report.status, effect.source, at, report.error_code)
            events.append(event | {"applied": applied})
            resend = judge_deferral(
                report,
                effect,
                attempts=row["attempts"],
                expires_at_ms=row["expires_at"],
                now_ms=now,
                policy=self._retry,
            )
            if resend is not None:
                events[-1]["applied"] = False  # the message did not end: it waits to go again
                failed.discard(row["id"])
                resent.append(_requeue(row, report, resend, earlier, now))
                events.append(
                    event_row(
                        row["id"], Status.PENDING, EventSource.DEFERRAL, now, report.error_code
                    )
                )
                history[row["id"]].append(PastEvent(Status.PENDING, EventSource.DEFERRAL))
        await _write_reported(conn, touched, events)
        await _write_resent(conn, resent)
        await follow_failures(conn, failed, now, self._fallback)
        return results

    async def _targets(
        self, conn: AsyncConnection, reports: list[StatusReport]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """The messages the reports name (by our id, else by Twilio's SID), locked, as
        (id -> row, Twilio SID -> id).

        Every row is locked in one pass in id order, whichever way the report named it:
        two batches (or a batch and the attempt recorder, which also locks in id order)
        then wait for each other in one order and never deadlock. PostgreSQL resolves
        the SIDs to ids inside the locking statement (one round trip); a SID a message
        adopts meanwhile is looked up again.
        """
        ids = {r.message_id for r in reports if r.message_id}
        sids = {r.twilio_sid for r in reports if not r.message_id}
        found: dict[str, dict[str, Any]] = {}
        if self._db.is_sqlite:
            # SQLite's single writer holds the lock from the first read: no lock order
            # to keep, so the messages named by SID are read whole in one pass.
            # Straight to the driver (storage/driver.py): one thread hop a statement.
            for chunk in chunks(sorted(sids)):
                found |= _by_id(await select_in(conn, _READ, messages.c.twilio_sid, chunk))
            for chunk in chunks(sorted(ids - found.keys())):
                found |= _by_id(await select_in(conn, _READ, messages.c.id, chunk))
        elif ids or sids:
            # One statement, one round trip: the SIDs are resolved to ids inside it,
            # and every row is locked in id order. A batch holds at most MAX_BATCH
            # reports, far under PostgreSQL's limit on bound parameters.
            # The OR stays inside the subquery, where both columns' indexes serve it
            # (BitmapOr); outside, it made PostgreSQL walk the whole primary key.
            by_id = messages.c.id.in_(sorted(ids))
            named = by_id
            if sids:
                sid_in = messages.c.twilio_sid.in_(sorted(sids))
                resolved = select(messages.c.id).where(or_(by_id, sid_in) if ids else sid_in)
                named = messages.c.id.in_(resolved.scalar_subquery())
            stmt = select(*_READ).where(named).order_by(messages.c.id)
            found = _by_id(await conn.execute(self._locked(stmt)))
        by_sid = {m["twilio_sid"]: i for i, m in found.items() if m["twilio_sid"]}
        # Rare: an id we do not know (the SID may still name a message), or a SID
        # adopted since it was resolved; these few are locked after the others.
        missing = {r.twilio_sid for r in reports if r.message_id not in found} - by_sid.keys()
        for chunk in chunks(sorted(missing)):
            stmt = select(*_READ).where(messages.c.twilio_sid.in_(chunk)).order_by(messages.c.id)
            for message_id, row in _by_id(await conn.execute(self._locked(stmt))).items():
                found.setdefault(message_id, row)
                by_sid[row["twilio_sid"]] = message_id
        return found, by_sid

    async def record_inbound(self, inbound: InboundMessage, consent: Consent | None) -> bool:
        """Store an inbound message and update its sender's window and consent.

        Returns False for a repeat of a message already stored (Twilio retries).
        """
        try:
            return await self._record_inbound(inbound, consent)
        except sa_exc.IntegrityError:
            # PostgreSQL: a concurrent delivery of the same message (or the sender's
            # first recipients row) committed first; the second pass sees it.
            return await self._record_inbound(inbound, consent)

    async def _record_inbound(self, inbound: InboundMessage, consent: Consent | None) -> bool:
        now = self._clock()
        async with self._transaction() as conn:
            seen = (
                await conn.execute(
                    select(inbound_messages.c.id).where(
                        inbound_messages.c.message_sid == inbound.message_sid
                    )
                )
            ).first()
            if seen is not None:
                return False
            await conn.execute(insert(inbound_messages), [_inbound_row(inbound, now)])
            await _touch_recipient(conn, inbound, consent, now)
        return True


def _target(row: dict[str, Any], earlier: dict[str, set[str]]) -> ReportTarget:
    stamped = frozenset(s for s, column in STAMP_COLUMNS.items() if row[column] is not None)
    sids = frozenset(earlier.get(row["id"], ()))
    return ReportTarget(Status(row["status"]), row["twilio_sid"], stamped, sids)


async def _earlier_sids(conn: AsyncConnection, ids: list[str]) -> dict[str, set[str]]:
    """The SIDs of the earlier sends of messages that have none now (re-queued, or not
    recorded yet): a report naming one is about another send, not one to adopt."""
    found: dict[str, set[str]] = {i: set() for i in ids}
    for chunk in chunks(ids):
        rows = await conn.execute(
            select(delivery_attempts.c.message_id, delivery_attempts.c.twilio_sid).where(
                delivery_attempts.c.message_id.in_(chunk),
                delivery_attempts.c.twilio_sid.is_not(None),
            )
        )
        for message_id, sid in rows:
            found[message_id].add(sid)
    return found


def _requeue(
    row: dict[str, Any],
    report: StatusReport,
    resend: Resend,
    earlier: dict[str, set[str]],
    now: int,
) -> dict[str, Any]:
    """Put ``row`` back in the outbox for a new send, as the deferral says; returns the
    update of the deferred send's attempt."""
    old_sid = row["twilio_sid"]
    earlier.setdefault(row["id"], set()).add(old_sid)
    row |= {column: None for column in STAMP_COLUMNS.values()}
    row |= {"status": Status.PENDING.value, "twilio_sid": None, "next_attempt_at": resend.at_ms}
    row["updated_at"] = now
    return {
        "b_id": row["id"],
        "b_sid": old_sid,
        "p_outcome": resend.outcome,
        "p_code": report.error_code,
        "p_message": report.error_message,
    }


async def _write_resent(conn: AsyncConnection, resent: list[dict[str, Any]]) -> None:
    """The deferred sends' attempts now say what became of them, the messages may be
    fetched again, and the dispatcher is told."""
    if not resent:
        return
    await conn.execute(
        update(delivery_attempts)
        .where(
            delivery_attempts.c.message_id == bindparam("b_id"),
            delivery_attempts.c.twilio_sid == bindparam("b_sid"),
        )
        .values(
            outcome=bindparam("p_outcome"),
            error_code=bindparam("p_code"),
            error_message=bindparam("p_message"),
        ),
        resent,
    )
    # A new send is a new question for Twilio: the old send's reconcile outcome (given
    # up, deleted at Twilio) would keep the reconciler from ever fetching it.
    await conn.execute(
        update(messages)
        .where(messages.c.id.in_({r["b_id"] for r in resent}))
        .values(reconcile_outcome=None)
    )
    await notify(conn, DUE_CHANNEL)


async def _histories(conn: AsyncConnection, ids: list[str]) -> dict[str, list[PastEvent]]:
    """Each message's past operator and callback events, oldest first."""
    history: dict[str, list[PastEvent]] = {i: [] for i in ids}
    for chunk in chunks(ids):
        # Every event of the messages, the others left out here: the messages have a
        # few each, and the plain IN goes straight to the driver on SQLite.
        rows = await select_in(conn, _HISTORY_READ, status_events.c.message_id, chunk)
        kept = sorted((r for r in rows if r[3] in _HISTORY), key=_first)  # stored order
        for _, message_id, status, source in kept:
            history[message_id].append(PastEvent(Status(status), EventSource(source)))
    return history


async def _write_reported(
    conn: AsyncConnection, touched: dict[str, dict[str, Any]], events: list[dict[str, Any]]
) -> None:
    columns = (*_REPORTED, "updated_at")
    updates = [
        {"id": i} | {c: row[c] for c in columns} | _NO_FETCHES_YET for i, row in touched.items()
    ]
    # SQLite: both in one trip to the driver's thread (driver.execute_all).
    await execute_all(conn, [(messages.c.id, updates), (status_events, events)])
    if events:
        await notify(conn, EVENTS_CHANNEL)


def _inbound_row(inbound: InboundMessage, now: int) -> dict[str, Any]:
    media = [{"url": u, "content_type": t} for u, t in inbound.media]
    return {
        "id": new_message_id(),
        "message_sid": inbound.message_sid,
        "from_addr": inbound.from_addr,
        "to_addr": inbound.to_addr,
        "channel": inbound.channel,
        "body": inbound.body,
        "media": json.dumps(media) if media else None,
        "profile_name": inbound.profile_name,
        "wa_id": inbound.wa_id,
        "received_at": now,
    }


async def _touch_recipient(
    conn: AsyncConnection, inbound: InboundMessage, consent: Consent | None, now: int
) -> None:
    """The sender wrote: their 24-hour window opens, and a keyword changes consent."""
    values: dict[str, Any] = {"last_inbound_at": now, "updated_at": now}
    if inbound.channel == Channel.WHATSAPP.value:
        values["not_on_whatsapp_until"] = None  # they wrote on WhatsApp: they are on it
    if consent is Consent.OPT_OUT:
        values |= {"opted_out": True, "opted_out_at": now}
    elif consent is Consent.OPT_IN:
        values |= {"opted_out": False}
    changed = (
        await conn.execute(
            update(recipients)
            .where(
                recipients.c.channel == inbound.channel,
                recipients.c.address == inbound.from_addr,
            )
            .values(**values)
        )
    ).rowcount
    if not changed:
        key = {"channel": inbound.channel, "address": inbound.from_addr}
        await conn.execute(insert(recipients), [{**key, **values}])
