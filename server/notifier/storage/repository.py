"""The one place Notifier's SQL lives."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Row, delete, insert, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection
from ulid import ULID

from notifier.domain.clock import Clock, now_ms
from notifier.domain.errors import IdempotencyConflict, NotFound, StorageUnavailable
from notifier.domain.model import (
    Accepted,
    Channel,
    Delivery,
    MessageRecord,
    NewMessage,
    Status,
    StatusEvent,
)
from notifier.storage.engine import Database
from notifier.storage.tables import idempotency_keys, message_tags, messages, status_events


@asynccontextmanager
async def _storage_errors() -> AsyncIterator[None]:
    """Turn "cannot reach the database" into StorageUnavailable; let real bugs through."""
    try:
        yield
    except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, OSError) as exc:
        raise StorageUnavailable(str(exc).splitlines()[0]) from exc
    except sa_exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise StorageUnavailable(str(exc).splitlines()[0]) from exc
        raise


def new_message_id() -> str:
    return str(ULID())


class Repository:
    def __init__(self, db: Database, clock: Clock = now_ms) -> None:
        self._db = db
        self._clock = clock

    async def ping(self) -> None:
        """Check that a write could start now (SQLite: take and drop the write lock)."""
        async with _storage_errors(), self._db.writer.begin() as conn:
            await conn.execute(text("SELECT 1"))

    async def add_message(
        self,
        message: NewMessage,
        *,
        caller: str,
        request_hash: str | None,
        key_ttl_ms: int,
        traceparent: str | None = None,
    ) -> Accepted:
        for attempt in range(2):
            try:
                async with _storage_errors(), self._db.writer.begin() as conn:
                    return await self._add(
                        conn, message, caller, request_hash, key_ttl_ms, traceparent
                    )
            except sa_exc.IntegrityError:
                # Another replica stored the same idempotency key first; the second
                # pass finds its row and answers as a replay.
                if attempt or message.idempotency_key is None:
                    raise
        raise AssertionError("unreachable")

    async def _add(
        self,
        conn: AsyncConnection,
        message: NewMessage,
        caller: str,
        request_hash: str | None,
        key_ttl_ms: int,
        traceparent: str | None,
    ) -> Accepted:
        now = self._clock()
        key = message.idempotency_key
        if key is not None:
            found = (
                await conn.execute(
                    select(idempotency_keys).where(
                        idempotency_keys.c.caller == caller, idempotency_keys.c.key == key
                    )
                )
            ).first()
            if found is not None and found.expires_at > now:
                if found.request_hash != request_hash:
                    raise IdempotencyConflict(key, found.message_id)
                return Accepted(await self._load(conn, found.message_id), replayed=True)
            if found is not None:
                await conn.execute(
                    delete(idempotency_keys).where(
                        idempotency_keys.c.caller == caller, idempotency_keys.c.key == key
                    )
                )
        message_id = new_message_id()
        status = Status.SCHEDULED if message.send_at_ms is not None else Status.PENDING
        row = {
            "id": message_id,
            "caller": caller,
            "channel": message.channel.value,
            "to_addr": message.to,
            "body": message.body,
            "content_sid": message.content_sid,
            "variables": json.dumps(message.variables) if message.variables else None,
            "media_urls": json.dumps(list(message.media_urls)) if message.media_urls else None,
            "status": status.value,
            "send_at": message.send_at_ms,
            "expires_at": message.expires_at_ms,
            "next_attempt_at": message.send_at_ms or now,
            "traceparent": traceparent,
            "created_at": now,
            "updated_at": now,
        }
        await conn.execute(insert(messages), [row])
        if message.tags:
            await conn.execute(
                insert(message_tags), [{"message_id": message_id, "tag": t} for t in message.tags]
            )
        await conn.execute(
            insert(status_events),
            [
                {
                    "message_id": message_id,
                    "status": status.value,
                    "source": "api",
                    "occurred_at": now,
                }
            ],
        )
        if key is not None:
            await conn.execute(
                insert(idempotency_keys),
                [
                    {
                        "caller": caller,
                        "key": key,
                        "request_hash": request_hash,
                        "message_id": message_id,
                        "created_at": now,
                        "expires_at": now + key_ttl_ms,
                    }
                ],
            )
        return Accepted(_record(row, message.tags), replayed=False)

    async def get_delivery(
        self, *, message_id: str | None = None, twilio_sid: str | None = None
    ) -> Delivery:
        async with _storage_errors(), self._db.reader.connect() as conn:
            if message_id is None:
                found = (
                    await conn.execute(
                        select(messages.c.id).where(messages.c.twilio_sid == twilio_sid)
                    )
                ).first()
                if found is None:
                    raise NotFound("message with Twilio SID", twilio_sid or "")
                message_id = found.id
            record = await self._load(conn, message_id)
            events = (
                await conn.execute(
                    select(status_events)
                    .where(status_events.c.message_id == message_id)
                    .order_by(status_events.c.id)
                )
            ).all()
        return Delivery(message=record, events=tuple(_event(e) for e in events))

    async def _load(self, conn: AsyncConnection, message_id: str) -> MessageRecord:
        row = (await conn.execute(select(messages).where(messages.c.id == message_id))).first()
        if row is None:
            raise NotFound("message", message_id)
        tags = (
            await conn.execute(
                select(message_tags.c.tag).where(message_tags.c.message_id == message_id)
            )
        ).scalars()
        return _record(row._mapping, tuple(tags))


def _record(row: Any, tags: Sequence[str]) -> MessageRecord:
    return MessageRecord(
        id=row["id"],
        to=row["to_addr"],
        channel=Channel(row["channel"]),
        status=Status(row["status"]),
        created_at_ms=row["created_at"],
        updated_at_ms=row["updated_at"],
        body=row["body"],
        content_sid=row["content_sid"],
        variables=json.loads(row["variables"]) if row["variables"] else {},
        media_urls=tuple(json.loads(row["media_urls"])) if row["media_urls"] else (),
        tags=tuple(tags),
        twilio_sid=row.get("twilio_sid"),
        attempts=row.get("attempts") or 0,
        error_code=row.get("error_code"),
        error_message=row.get("error_message"),
        send_at_ms=row["send_at"],
        expires_at_ms=row["expires_at"],
        next_attempt_at_ms=row["next_attempt_at"],
    )


def _event(row: Row[Any]) -> StatusEvent:
    return StatusEvent(
        status=Status(row.status),
        occurred_at_ms=row.occurred_at,
        source=row.source,
        error_code=row.error_code,
        applied=bool(row.applied),
    )
