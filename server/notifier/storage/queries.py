"""Reading messages back (list, get) and the operator's changes to them (cancel, requeue)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from notifier.domain.errors import NotFound
from notifier.domain.model import (
    Delivery,
    EventSource,
    MessageQuery,
    MessageRecord,
    RetryOutcome,
    Status,
)
from notifier.domain.operations import RETRYABLE, Cancel, Skip, judge_cancel, judge_requeue
from notifier.storage.engine import DUE_CHANNEL, EVENTS_CHANNEL, notify
from notifier.storage.rows import (
    add_event,
    attempt,
    load,
    record,
    status_event,
    tags_of,
    with_links,
)
from notifier.storage.store import Store
from notifier.storage.tables import delivery_attempts, message_tags, messages, status_events

# A re-queued message starts a new send: a new Twilio SID and new step times (the old
# SID stays in delivery_attempts and the old times in the history).
_NEW_SEND = {
    "status": Status.PENDING.value,
    "attempts": 0,
    "lease_owner": None,
    "lease_expires_at": None,
    "error_code": None,
    "error_message": None,
    "twilio_sid": None,
    "sent_at": None,
    "delivered_at": None,
    "read_at": None,
}


def conditions(query: MessageQuery) -> list[Any]:
    """The WHERE clauses of a MessageQuery (ListMessages, RetryMessages, GetMetrics)."""
    conds: list[Any] = []
    if query.message_ids:
        conds.append(messages.c.id.in_(query.message_ids))
    if query.statuses:
        conds.append(messages.c.status.in_([s.value for s in query.statuses]))
    if query.to is not None:
        conds.append(messages.c.to_addr == query.to)
    if query.channel is not None:
        conds.append(messages.c.channel == query.channel.value)
    if query.created_after_ms is not None:
        conds.append(messages.c.created_at >= query.created_after_ms)
    if query.created_before_ms is not None:
        conds.append(messages.c.created_at < query.created_before_ms)
    if query.sender is not None:
        conds.append(messages.c.sender == query.sender)
    if query.owner is not None:
        conds.append(messages.c.caller == query.owner)
    if query.tag is not None:
        tagged = select(message_tags.c.message_id).where(message_tags.c.tag == query.tag)
        conds.append(messages.c.id.in_(tagged))
    return conds


class Queries(Store):
    async def list_messages(
        self, query: MessageQuery, *, limit: int, before_id: str | None
    ) -> list[MessageRecord]:
        """Newest first; ``before_id`` continues after the last message of a page."""
        stmt = select(messages).where(*conditions(query)).order_by(messages.c.id.desc())
        if before_id is not None:
            stmt = stmt.where(messages.c.id < before_id)
        async with self._reading() as conn:
            rows = (await conn.execute(stmt.limit(limit))).all()
            tags = await tags_of(conn, [r.id for r in rows])
            return await with_links(conn, [record(r._mapping, tags.get(r.id, ())) for r in rows])

    async def get_delivery(
        self,
        *,
        message_id: str | None = None,
        twilio_sid: str | None = None,
        owner: str | None = None,
    ) -> Delivery:
        async with self._reading() as conn:
            if message_id is None:
                by_sid = select(messages.c.id).where(messages.c.twilio_sid == twilio_sid)
                if owner is not None:
                    by_sid = by_sid.where(messages.c.caller == owner)
                found = (await conn.execute(by_sid)).first()
                if found is None:
                    raise NotFound("message with Twilio SID", twilio_sid or "")
                message_id = found.id
            message = await load(conn, message_id, owner)
            events = await conn.execute(
                select(status_events)
                .where(status_events.c.message_id == message_id)
                .order_by(status_events.c.id)
            )
            attempts = await conn.execute(
                select(delivery_attempts)
                .where(delivery_attempts.c.message_id == message_id)
                .order_by(delivery_attempts.c.id)
            )
            return Delivery(
                message=message,
                events=tuple(status_event(e) for e in events),
                attempts=tuple(attempt(a) for a in attempts),
            )

    async def cancel(
        self, message_id: str, *, owner: str | None = None, actor: str | None = None
    ) -> MessageRecord:
        """``owner``: only that caller's message (another's is NotFound); ``actor``: the
        token name recorded in the history."""
        now = self._clock()
        async with self._transaction() as conn:
            # Lock the row before reading it (PostgreSQL): a claim or a send being
            # recorded cannot slip in between the check and the update.
            by_id = select(messages.c.lease_expires_at).where(messages.c.id == message_id)
            locked = (await conn.execute(self._locked(by_id))).first()
            current = await load(conn, message_id, owner)  # NotFound: no such row (of owner)
            assert locked is not None
            if judge_cancel(message_id, current.status, locked.lease_expires_at, now) is (
                Cancel.ALREADY
            ):
                return current
            await conn.execute(
                update(messages)
                .where(messages.c.id == message_id)
                .values(status=Status.CANCELED.value, updated_at=now)
            )
            await add_event(conn, message_id, Status.CANCELED, EventSource.API, now, actor)
            await notify(conn, EVENTS_CHANNEL)
            return await load(conn, message_id)

    async def requeue(
        self,
        query: MessageQuery,
        *,
        limit: int,
        validity_ms: int | None,
        actor: str | None = None,
    ) -> RetryOutcome:
        """Put failed, undelivered and expired messages back in the outbox."""
        now = self._clock()
        requeued: list[str] = []
        skipped: list[tuple[str, str]] = []
        stmt = select(messages.c.id, messages.c.status, messages.c.expires_at)
        if query.message_ids:
            stmt = stmt.where(messages.c.id.in_(query.message_ids))
            if query.owner is not None:  # another caller's ids are "not found"
                stmt = stmt.where(messages.c.caller == query.owner)
        else:
            retryable = [s.value for s in RETRYABLE]
            stmt = stmt.where(*conditions(query), messages.c.status.in_(retryable))
        # Locked (PostgreSQL) in id order, so two requeues cannot deadlock: a callback
        # or another requeue cannot change a row between check and update.
        stmt = self._locked(stmt.order_by(messages.c.id).limit(limit))
        async with self._transaction() as conn:
            rows = (await conn.execute(stmt)).all()
            found = {r.id for r in rows}
            skipped += [(mid, "not found") for mid in query.message_ids if mid not in found]
            for row in rows:
                verdict = judge_requeue(Status(row.status), row.expires_at, now, validity_ms)
                if isinstance(verdict, Skip):
                    skipped.append((row.id, verdict.reason))
                    continue
                await _requeue(conn, row.id, verdict.expires_at_ms, now, actor)
                requeued.append(row.id)
            if requeued:
                await notify(conn, DUE_CHANNEL, EVENTS_CHANNEL)
        return RetryOutcome(tuple(requeued), tuple(skipped))


async def _requeue(
    conn: AsyncConnection, message_id: str, expires_at: int | None, now: int, actor: str | None
) -> None:
    values = _NEW_SEND | {"next_attempt_at": now, "expires_at": expires_at, "updated_at": now}
    await conn.execute(update(messages).where(messages.c.id == message_id).values(**values))
    await add_event(conn, message_id, Status.PENDING, EventSource.OPERATOR, now, actor)
