"""Rows and domain values, both ways: the mappers every storage module shares, and the
few reads that bring a message back whole (with its tags)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import ARRAY, ColumnElement, Row, String, any_, bindparam, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection
from ulid import ULID

from notifier.domain.errors import NotFound
from notifier.domain.model import (
    Attempt,
    Channel,
    EventSource,
    MessageRecord,
    NewMessage,
    Status,
    StatusEvent,
)
from notifier.storage.tables import message_tags, messages, status_events

STAMP_COLUMNS = {Status.SENT: "sent_at", Status.DELIVERED: "delivered_at", Status.READ: "read_at"}
"""Where a message keeps the time its current send first reached each status."""


CHUNK = 500
"""Bound parameters per IN (...) list: well under SQLite's limit on them."""


def among(column: Any, name: str, values: Sequence[Any] | None = None) -> ColumnElement[bool]:
    """PostgreSQL: ``column = ANY(:name)``, one array parameter however many values
    (``values``, or given at execution).

    One statement text for every batch size, prepared once by asyncpg; ``IN (...)``
    renders a statement per list length: dispatching 5,000 messages used 163 texts
    (claims, opt-outs, the recorder's reads), more than the 100 that SQLAlchemy's
    asyncpg cache keeps, so statements were prepared again and again.
    """
    kind = array_of(column)
    param = (
        bindparam(name, type_=kind) if values is None else bindparam(name, list(values), type_=kind)
    )
    condition: ColumnElement[bool] = column == any_(param)
    return condition


def array_of(column: Any) -> ARRAY[Any]:
    """An array of ``column``'s type; strings without their length: an explicit cast to
    VARCHAR(n) would silently cut a longer value, where storing it in the column (an
    assignment) refuses it, as a plain INSERT does."""
    kind = column.type
    return ARRAY(String() if isinstance(kind, String) else kind)


def chunks(values: Sequence[str], size: int = CHUNK) -> list[Sequence[str]]:
    """Keep IN (...) lists under SQLite's limit on bound parameters."""
    return [values[i : i + size] for i in range(0, len(values), size)]


def new_message_id() -> str:
    """ULIDs: unique across replicas, and sorted by creation time (pages, newest first)."""
    return str(ULID())


def message_row(
    message: NewMessage,
    message_id: str,
    caller: str,
    traceparent: str | None,
    now: int,
    priority: int = 0,
) -> dict[str, Any]:
    status = Status.SCHEDULED if message.send_at_ms is not None else Status.PENDING
    return {
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
        "attempts": 0,
        "priority": priority,
        "sender": message.sender,
        "fallback_sms": message.fallback_sms,
        "fallback_body": message.fallback_body,
        "fallback_of": None,
        "fallback_reason": None,
        # Every row of one INSERT has the same keys (a message skipping WhatsApp fails here).
        "error_code": None,
        "error_message": None,
    }


def event_row(
    message_id: str,
    status: Status | str,
    source: EventSource,
    now: int,
    error_code: int | None = None,
    *,
    applied: bool = True,
    actor: str | None = None,
) -> dict[str, Any]:
    """A status_events row: one entry of a message's history."""
    return {
        "actor": actor,
        "message_id": message_id,
        "status": Status(status).value,
        "source": source.value,
        "occurred_at": now,
        "error_code": error_code,
        "applied": applied,
    }


def record(row: Any, tags: Sequence[str]) -> MessageRecord:
    """A message row (a RowMapping or a dict of the same columns) as the domain sees it."""
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
        traceparent=row.get("traceparent"),
        claims=row.get("claims") or 0,
        owner=row.get("caller") or "",
        sender=row.get("sender") or "default",
        redacted=bool(row.get("redacted")),
        fallback_sms=bool(row.get("fallback_sms")),
        fallback_body=row.get("fallback_body"),
        fallback_of=row.get("fallback_of"),
        fallback_reason=row.get("fallback_reason"),
    )


async def with_links(
    conn: AsyncConnection, records: Sequence[MessageRecord]
) -> list[MessageRecord]:
    """``records`` with the id and status of each one's SMS fallback, where it has one."""
    asked = [r.id for r in records if r.fallback_sms]
    links: dict[str, tuple[str, Status]] = {}
    for chunk in chunks(asked):
        rows = await conn.execute(
            select(messages.c.fallback_of, messages.c.id, messages.c.status).where(
                messages.c.fallback_of.in_(chunk)
            )
        )
        links |= {of: (i, Status(status)) for of, i, status in rows}
    return [
        replace(r, fallback_id=links[r.id][0], fallback_status=links[r.id][1])
        if r.id in links
        else r
        for r in records
    ]


def status_event(row: Row[Any]) -> StatusEvent:
    return StatusEvent(
        status=Status(row.status),
        occurred_at_ms=row.occurred_at,
        source=EventSource(row.source),
        error_code=row.error_code,
        applied=bool(row.applied),
        actor=row.actor,
    )


def attempt(row: Row[Any]) -> Attempt:
    return Attempt(
        number=row.number,
        started_at_ms=row.started_at,
        finished_at_ms=row.finished_at,
        outcome=row.outcome,
        http_status=row.http_status,
        error_code=row.error_code,
        error_message=row.error_message,
    )


async def add_event(
    conn: AsyncConnection,
    message_id: str,
    status: Status,
    source: EventSource,
    now: int,
    actor: str | None = None,
) -> None:
    row = event_row(message_id, status, source, now, actor=actor)
    await conn.execute(insert(status_events), [row])


async def tags_of(conn: AsyncConnection, ids: list[str]) -> dict[str, tuple[str, ...]]:
    if not ids:
        return {}
    rows = await conn.execute(
        select(message_tags.c.message_id, message_tags.c.tag).where(
            message_tags.c.message_id.in_(ids)
        )
    )
    out: dict[str, list[str]] = {}
    for mid, tag in rows:
        out.setdefault(mid, []).append(tag)
    return {k: tuple(v) for k, v in out.items()}


async def load(conn: AsyncConnection, message_id: str, owner: str | None = None) -> MessageRecord:
    """The message with its tags; raises NotFound, also when ``owner`` is given and the
    message is another caller's (an id of someone else's message reveals nothing)."""
    stmt = select(messages).where(messages.c.id == message_id)
    if owner is not None:
        stmt = stmt.where(messages.c.caller == owner)
    row = (await conn.execute(stmt)).first()
    if row is None:
        raise NotFound("message", message_id)
    tags = await tags_of(conn, [message_id])
    (linked,) = await with_links(conn, [record(row._mapping, tags.get(message_id, ()))])
    return linked


async def load_many(conn: AsyncConnection, ids: list[str]) -> dict[str, MessageRecord]:
    out: dict[str, MessageRecord] = {}
    for chunk in chunks(sorted(set(ids))):
        rows = (await conn.execute(select(messages).where(messages.c.id.in_(chunk)))).all()
        tags = await tags_of(conn, [r.id for r in rows])
        found = [record(r._mapping, tags.get(r.id, ())) for r in rows]
        out |= {r.id: r for r in await with_links(conn, found)}
    return out
