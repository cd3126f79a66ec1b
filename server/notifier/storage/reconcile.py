"""The reconciler's data: which messages wait for news from Twilio, and each one's fetch
state (the rules deciding them are in domain/reconcile.py). What a fetch learns is applied
through storage/callbacks.py, like a callback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from sqlalchemy import String, bindparam, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from notifier.domain.model import Status
from notifier.domain.reconcile import AWAITING_OUTCOME, Candidate, FetchState, Unconfirmed
from notifier.storage.engine import storage_errors
from notifier.storage.store import Store
from notifier.storage.tables import messages

# pg_try_advisory_lock key of the reconciler: one replica at a time fetches.
RECONCILE_LOCK_KEY = 0x6E6F7469_66790018  # "notify", issue 18

_AWAITING = [s.value for s in AWAITING_OUTCOME]


class Reconciliation(Store):
    @asynccontextmanager
    async def reconcile_turn(self) -> AsyncIterator[bool]:
        """Whether this process may reconcile now (held until the block ends).

        PostgreSQL: a session advisory lock, so one replica at a time fetches; it is
        released with the block, or by the server when a dead replica's session ends.
        SQLite has one writing process: always yes.
        """
        if self._db.is_sqlite:
            yield True
            return
        async with storage_errors(), self._db.writer.connect() as conn:
            key = {"key": RECONCILE_LOCK_KEY}
            lock = text("SELECT pg_try_advisory_lock(:key)")
            got = bool((await conn.execute(lock, key)).scalar())
            await conn.commit()
            try:
                yield got
            finally:
                if got:
                    await conn.execute(text("SELECT pg_advisory_unlock(:key)"), key)
                    await conn.commit()

    async def reconcile_candidates(
        self, *, now_ms: int, after_ms: int, limit: int
    ) -> list[Candidate]:
        """Messages Twilio holds, outcome unknown, no news for ``after_ms`` and due for a
        fetch, the longest without news first."""
        stmt = (
            select(
                messages.c.id,
                messages.c.twilio_sid,
                messages.c.status,
                messages.c.updated_at,
                messages.c.reconcile_fetches,
            )
            .where(
                messages.c.status.in_(_AWAITING),
                messages.c.updated_at <= now_ms - after_ms,
                messages.c.twilio_sid.is_not(None),
                messages.c.reconcile_outcome.is_(None),
                or_(messages.c.reconcile_at.is_(None), messages.c.reconcile_at <= now_ms),
            )
            .order_by(messages.c.updated_at, messages.c.id)
            .limit(limit)
        )
        async with self._reading() as conn:
            rows = (await conn.execute(stmt)).all()
        return [Candidate(r[0], r[1], Status(r[2]), int(r[3]), int(r[4])) for r in rows]

    async def give_up_reconciling(self, *, now_ms: int, give_up_ms: int) -> int:
        """Mark the messages without news for ``give_up_ms`` as unconfirmed (their status
        stays); returns how many."""
        stmt = (
            update(messages)
            .where(
                messages.c.status.in_(_AWAITING),
                messages.c.updated_at <= now_ms - give_up_ms,
                messages.c.twilio_sid.is_not(None),
                messages.c.reconcile_outcome.is_(None),
            )
            .values(reconcile_outcome=Unconfirmed.GAVE_UP.value, reconcile_at=None)
        )

        async def work(conn: AsyncConnection) -> int:
            return int((await conn.execute(stmt)).rowcount)

        return await self._write(work)

    async def record_fetches(self, states: Sequence[FetchState]) -> None:
        """Store each message's fetch state after this round's fetches, where the message
        has had no news since the state's ``news_ms`` (news resets the state itself)."""
        if not states:
            return
        stmt = (
            update(messages)
            .where(
                messages.c.id == bindparam("b_id"),
                messages.c.updated_at == bindparam("b_news"),
            )
            .values(
                reconcile_fetches=bindparam("p_fetches"),
                reconcile_at=bindparam("p_at"),
                reconcile_outcome=func.coalesce(
                    bindparam("p_outcome", type_=String(16)), messages.c.reconcile_outcome
                ),
            )
        )
        params = [
            {
                "b_id": s.message_id,
                "b_news": s.news_ms,
                "p_fetches": s.fetches,
                "p_at": s.next_at_ms,
                "p_outcome": s.outcome.value if s.outcome is not None else None,
            }
            for s in states
        ]

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(stmt, params)

        await self._write(work)
