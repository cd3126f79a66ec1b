"""The status feed: status events in the order they were stored, each with its message
as it is now (WatchDeliveryStatus reads them, in this process or from another's writes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from notifier.domain.model import EventSource, Status, StatusEvent
from notifier.domain.watch import StatusChange
from notifier.storage.rows import record, tags_of, with_links
from notifier.storage.store import Store
from notifier.storage.tables import message_tags, messages, status_events


class EventFeed(Store):
    async def last_event_id(self) -> int:
        """Where a new watch starts: only events stored after this one are news."""
        async with self._reading() as conn:
            value = (await conn.execute(select(func.max(status_events.c.id)))).scalar()
        return int(value) if value is not None else 0

    async def events_after(
        self,
        after_id: int,
        *,
        limit: int,
        message_ids: Sequence[str] = (),
        tag: str | None = None,
    ) -> list[StatusChange]:
        """Status events with id > ``after_id`` in the order they were stored, each with
        its message as it is now (tags included); filtered by ids or tag when given.

        Reads the database rather than anything in this process, so events written by a
        webhook sidecar in another process are seen too. On SQLite event ids are handed
        out under the single write lock, so they become visible in id order and a cursor
        never skips one.
        """
        stmt = _change_select().where(status_events.c.id > after_id)
        wanted: list[Any] = []
        if message_ids:
            wanted.append(status_events.c.message_id.in_(list(message_ids)))
        if tag is not None:
            tagged = select(message_tags.c.message_id).where(message_tags.c.tag == tag)
            wanted.append(status_events.c.message_id.in_(tagged))
        if wanted:
            stmt = stmt.where(or_(*wanted))
        return await self._changes(stmt.order_by(status_events.c.id).limit(limit))

    async def events_with_ids(self, event_ids: Sequence[int]) -> list[StatusChange]:
        """The status events of ``event_ids`` that exist now, in id order.

        For a feed on PostgreSQL: event ids come from a sequence, and a transaction that
        took a lower id can commit after one that took a higher id, so the feed asks
        again for the ids it found missing behind its cursor.
        """
        if not event_ids:
            return []
        stmt = _change_select().where(status_events.c.id.in_(sorted(set(event_ids))))
        return await self._changes(stmt.order_by(status_events.c.id))

    async def current_states(self, message_ids: Sequence[str]) -> list[StatusChange]:
        """Each existing message of ``message_ids`` with its latest event, in the order
        given; unknown ids are left out (the caller names them)."""
        if not message_ids:
            return []
        latest = (
            select(func.max(status_events.c.id))
            .where(status_events.c.message_id.in_(list(message_ids)))
            .group_by(status_events.c.message_id)
        )
        changes = await self._changes(_change_select().where(status_events.c.id.in_(latest)))
        found = {c.message.id: c for c in changes}
        return [found[m] for m in dict.fromkeys(message_ids) if m in found]

    async def _changes(self, stmt: Select[Any]) -> list[StatusChange]:
        async with self._reading() as conn:
            return await _read_changes(conn, stmt)


def _change_select() -> Select[Any]:
    """Status events joined to their messages; event columns renamed apart."""
    return select(
        status_events.c.id.label("event_id"),
        status_events.c.status.label("event_status"),
        status_events.c.source.label("event_source"),
        status_events.c.occurred_at.label("event_occurred_at"),
        status_events.c.error_code.label("event_error_code"),
        status_events.c.applied.label("event_applied"),
        status_events.c.actor.label("event_actor"),
        messages,
    ).join(messages, messages.c.id == status_events.c.message_id)


async def _read_changes(conn: AsyncConnection, stmt: Select[Any]) -> list[StatusChange]:
    rows = (await conn.execute(stmt)).all()
    tags = await tags_of(conn, list(dict.fromkeys(r.id for r in rows)))
    found = [record(r._mapping, tags.get(r.id, ())) for r in rows]
    linked = await with_links(conn, found)
    return [
        StatusChange(
            event_id=int(r.event_id),
            event=StatusEvent(
                status=Status(r.event_status),
                occurred_at_ms=r.event_occurred_at,
                source=EventSource(r.event_source),
                error_code=r.event_error_code,
                applied=bool(r.event_applied),
                actor=r.event_actor,
            ),
            message=message,
        )
        for r, message in zip(rows, linked, strict=True)
    ]
