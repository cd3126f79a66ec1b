"""Retention and redaction batches (issue 15, SPEC §12): SQL only; the rules (what has
ended, the limits, the cadence) are domain/lifecycle.py's, the loop notifier/purger.py's.

Every batch is one short transaction over at most ``limit`` messages, oldest change
first through the (redacted, updated_at) index, so a purge of millions of rows never
holds the write lock (SQLite) or row locks (PostgreSQL) for long; SendMessage's writes
interleave between batches. On PostgreSQL a transaction-level advisory lock makes the
replicas take turns (a batch that does not get it does nothing: another replica is at
it), and the candidates are locked SKIP LOCKED, so a purge never waits on a message a
callback is updating. On SQLite, secure_delete (engine.py) overwrites what a batch
removes, and a WAL checkpoint after it (TRUNCATE) drops the old page images from the WAL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from notifier.domain.errors import PreconditionFailed
from notifier.domain.lifecycle import ENDED, Erased, Purged
from notifier.domain.model import Status
from notifier.storage.rollups import fold_journal
from notifier.storage.rows import chunks
from notifier.storage.store import Store
from notifier.storage.tables import (
    OUTBOX,
    delivery_attempts,
    idempotency_keys,
    inbound_messages,
    message_tags,
    messages,
    recipients,
    status_events,
)

# Any fixed number (not the migrations' key): the lock the replicas' purges share.
PURGE_LOCK_KEY = 0x6E6F7469_70757267
_CHILDREN = (status_events, delivery_attempts, message_tags, idempotency_keys)
_ENDED = [s.value for s in ENDED]


class Lifecycle(Store):
    async def redact_batch(self, cutoff_ms: int, limit: int) -> Purged:
        """Clear body, variables and media of up to ``limit`` ended messages whose last
        change is before ``cutoff_ms``; status, timeline, error and tags stay."""
        async with self._transaction() as conn:
            if not await self._my_turn(conn):
                return Purged()
            ids = await self._candidates(conn, cutoff_ms, limit, redacted=[False])
            if ids:
                await conn.execute(
                    update(messages)
                    .where(messages.c.id.in_(ids))
                    .values(body=None, variables=None, media_urls=None, redacted=True)
                )
        await self._checkpoint()
        return Purged(redacted=len(ids))

    async def purge_batch(self, cutoff_ms: int, limit: int) -> Purged:
        """Delete up to ``limit`` ended messages whose last change is before
        ``cutoff_ms`` (with their events, attempts, tags and idempotency keys), and up
        to ``limit`` inbound messages received before it. The rollups keep counting
        them."""
        async with self._transaction() as conn:
            if not await self._my_turn(conn):
                return Purged()
            ids = await self._candidates(conn, cutoff_ms, limit, redacted=[False, True])
            rows = sum((await _delete_messages(conn, ids)).values())
            old = select(inbound_messages.c.id).where(inbound_messages.c.received_at < cutoff_ms)
            inbound = list((await conn.execute(self._skip_locked(old.limit(limit)))).scalars())
            if inbound:
                await conn.execute(
                    delete(inbound_messages).where(inbound_messages.c.id.in_(inbound))
                )
        await self._checkpoint()
        return Purged(messages=len(ids), rows=rows + len(inbound), inbound=len(inbound))

    async def fold_rollups(self, limit: int) -> int:
        """Move up to ``limit`` journal rows per table into the rollups (a short
        transaction of its own); the most rows moved from one table."""
        async with self._transaction() as conn:
            return await fold_journal(conn, limit)

    async def erase_recipient(self, to: str) -> Erased:
        """Everything stored about ``to`` (E.164), in one transaction: its queued
        messages canceled (the row triggers count that into the rollups), then its
        messages with their rows, its inbound messages and its recipient states
        deleted. Refused while a send to it holds a live lease: that send's outcome
        would land on nothing."""
        now = self._clock()
        async with self._transaction() as conn:
            stmt = select(messages.c.id, messages.c.status, messages.c.lease_expires_at)
            rows = (await conn.execute(self._locked(stmt.where(messages.c.to_addr == to)))).all()
            _refuse_in_flight(rows, now)
            queued = [r.id for r in rows if r.status in OUTBOX]
            if queued:
                await conn.execute(
                    update(messages)
                    .where(messages.c.id.in_(queued))
                    .values(status=Status.CANCELED.value, updated_at=now)
                )
            counts = await _delete_messages(conn, [r.id for r in rows])
            inbound = await conn.execute(
                delete(inbound_messages).where(inbound_messages.c.from_addr == to)
            )
            states = await conn.execute(delete(recipients).where(recipients.c.address == to))
        await self._checkpoint()
        return Erased(
            messages=len(rows),
            status_events=counts[status_events.name],
            attempts=counts[delivery_attempts.name],
            inbound_messages=int(inbound.rowcount or 0),
            recipient_states=int(states.rowcount or 0),
            canceled=len(queued),
        )

    async def twilio_copies(self, to: str) -> list[tuple[str, Status]]:
        """(SID, status) of the messages to ``to`` that Twilio has (their current SID
        and any other SID an attempt got, e.g. an ambiguous one that did go out)."""
        now = self._clock()
        async with self._reading() as conn:
            rows = (
                await conn.execute(
                    select(messages.c.id, messages.c.status, messages.c.lease_expires_at)
                    .add_columns(messages.c.twilio_sid)
                    .where(messages.c.to_addr == to)
                )
            ).all()
            _refuse_in_flight(rows, now)
            by_id = {r.id: Status(r.status) for r in rows}
            sids = {r.twilio_sid: by_id[r.id] for r in rows if r.twilio_sid}
            attempts = await conn.execute(
                select(delivery_attempts.c.message_id, delivery_attempts.c.twilio_sid).where(
                    delivery_attempts.c.message_id.in_(list(by_id)),
                    delivery_attempts.c.twilio_sid.is_not(None),
                )
            )
            for message_id, sid in attempts:
                sids.setdefault(sid, by_id[message_id])
        return sorted(sids.items())

    async def _candidates(
        self, conn: AsyncConnection, cutoff_ms: int, limit: int, *, redacted: list[bool]
    ) -> list[str]:
        stmt = (
            select(messages.c.id)
            .where(
                messages.c.redacted.in_(redacted),
                messages.c.updated_at < cutoff_ms,
                messages.c.status.in_(_ENDED),
            )
            .limit(limit)
        )
        return list((await conn.execute(self._skip_locked(stmt))).scalars())

    def _skip_locked(self, stmt: Any) -> Any:
        """SELECT ... FOR UPDATE SKIP LOCKED on PostgreSQL: rows someone else is
        changing are left for the next batch instead of waited for."""
        return stmt if self._db.is_sqlite else stmt.with_for_update(skip_locked=True)

    async def _my_turn(self, conn: AsyncConnection) -> bool:
        """PostgreSQL: this transaction holds the purge lock (released at its end)."""
        if self._db.is_sqlite:
            return True
        got = await conn.execute(select(func.pg_try_advisory_xact_lock(PURGE_LOCK_KEY)))
        return bool(got.scalar_one())

    async def _checkpoint(self) -> None:
        """SQLite: copy the WAL into the database file and empty it, so the pages a batch
        rewrote no longer hold the old content anywhere. PostgreSQL: see the README
        (VACUUM)."""
        if not self._db.is_sqlite:
            return
        async with self._db.writer.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            await driver.execute("PRAGMA wal_checkpoint(TRUNCATE)")


async def _delete_messages(conn: AsyncConnection, ids: list[str]) -> dict[str, int]:
    """Delete messages and every row hanging off them; rows deleted per table."""
    counts = {table.name: 0 for table in (*_CHILDREN, messages)}
    for chunk in chunks(ids):
        for table in _CHILDREN:
            done = await conn.execute(delete(table).where(table.c.message_id.in_(chunk)))
            counts[table.name] += int(done.rowcount or 0)
        done = await conn.execute(delete(messages).where(messages.c.id.in_(chunk)))
        counts[messages.name] += int(done.rowcount or 0)
    return counts


def _refuse_in_flight(rows: Sequence[Any], now: int) -> None:
    """PreconditionFailed when a message of ``rows`` is leased to a sender right now:
    its outcome would land on nothing (or reach Twilio after the erase)."""
    if any(r.status in OUTBOX and (r.lease_expires_at or 0) > now for r in rows):
        raise PreconditionFailed(
            "to", "SEND_IN_FLIGHT", "a send to this number is in flight; try again shortly"
        )
