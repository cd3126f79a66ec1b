"""The one place Notifier's SQL lives."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Row, delete, func, insert, or_, select, text, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection
from ulid import ULID

from notifier.domain.clock import Clock, now_ms
from notifier.domain.errors import (
    IdempotencyConflict,
    NotFound,
    PreconditionFailed,
    StorageUnavailable,
)
from notifier.domain.inbound import WINDOW_MS, Consent, InboundMessage
from notifier.domain.model import (
    Accepted,
    Attempt,
    AttemptRecord,
    CallbackResult,
    Channel,
    Delivery,
    MessageQuery,
    MessageRecord,
    NewMessage,
    RetryOutcome,
    Status,
    StatusEvent,
    StatusReport,
    Transition,
    moves_forward,
)
from notifier.storage.engine import Database
from notifier.storage.tables import (
    delivery_attempts,
    idempotency_keys,
    inbound_messages,
    message_tags,
    messages,
    recipients,
    status_events,
)

_FIRST_REACHED = {
    Status.SENT: "sent_at",
    Status.DELIVERED: "delivered_at",
    Status.READ: "read_at",
}


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
    def __init__(
        self, db: Database, clock: Clock = now_ms, *, refuse_outside_window: bool = False
    ) -> None:
        self._db = db
        self._clock = clock
        self.refuse_outside_window = refuse_outside_window

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
        await self._check_recipient(conn, message, now)
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
        await _add_event(conn, message_id, status, "api", now)
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

    async def _check_recipient(self, conn: AsyncConnection, message: NewMessage, now: int) -> None:
        row = (
            await conn.execute(
                select(recipients.c.opted_out, recipients.c.last_inbound_at).where(
                    recipients.c.channel == message.channel.value,
                    recipients.c.address == message.to,
                )
            )
        ).first()
        if row is not None and row.opted_out:
            raise PreconditionFailed(
                message.to,
                "OPTED_OUT",
                f"{message.to} opted out (sent an opt-out keyword); "
                "nothing is sent until they opt in again",
            )
        if self.refuse_outside_window and message.channel.value == "whatsapp":
            last = row.last_inbound_at if row is not None else None
            if message.body is not None and (last is None or now - last >= WINDOW_MS):
                raise PreconditionFailed(
                    message.to,
                    "OUTSIDE_WINDOW",
                    f"{message.to} has not written in the last 24 hours: WhatsApp only "
                    "allows approved templates (content_sid) now (Twilio error 63016)",
                )

    # -- status callbacks and inbound messages ---------------------------------------

    async def apply_report(self, report: StatusReport) -> tuple[CallbackResult, str | None]:
        """Record a status Twilio reported; move the message only forward."""
        now = self._clock()
        async with _storage_errors(), self._db.writer.begin() as conn:
            row = None
            if report.message_id:
                row = (
                    await conn.execute(select(messages).where(messages.c.id == report.message_id))
                ).first()
            if row is None:
                row = (
                    await conn.execute(
                        select(messages).where(messages.c.twilio_sid == report.twilio_sid)
                    )
                ).first()
            if row is None:
                return CallbackResult.UNKNOWN, None
            seen = (
                await conn.execute(
                    select(status_events.c.id).where(
                        status_events.c.message_id == row.id,
                        status_events.c.status == report.status.value,
                        status_events.c.source == "callback",
                    )
                )
            ).first()
            if seen is not None:
                return CallbackResult.DUPLICATE, row.id
            # A callback about an earlier Twilio message of a re-queued message only
            # goes into the history.
            same_send = row.twilio_sid in (None, report.twilio_sid)
            applies = same_send and moves_forward(Status(row.status), report.status)
            values: dict[str, Any] = {"updated_at": now}
            if row.twilio_sid is None:
                values["twilio_sid"] = report.twilio_sid
            if applies:
                values["status"] = report.status.value
                if report.error_code is not None:
                    values["error_code"] = report.error_code
                    values["error_message"] = report.error_message
            column = _FIRST_REACHED.get(report.status)
            if same_send and column is not None and getattr(row, column) is None:
                values[column] = now
            await conn.execute(update(messages).where(messages.c.id == row.id).values(**values))
            await conn.execute(
                insert(status_events),
                [
                    {
                        "message_id": row.id,
                        "status": report.status.value,
                        "source": "callback",
                        "occurred_at": now,
                        "error_code": report.error_code,
                        "applied": applies,
                    }
                ],
            )
        return (CallbackResult.APPLIED if applies else CallbackResult.RECORDED), row.id

    async def record_inbound(self, inbound: InboundMessage, consent: Consent | None) -> bool:
        """Store an inbound message and update its sender's window and consent.

        Returns False for a repeat of a message already stored (Twilio retries).
        """
        now = self._clock()
        async with _storage_errors(), self._db.writer.begin() as conn:
            seen = (
                await conn.execute(
                    select(inbound_messages.c.id).where(
                        inbound_messages.c.message_sid == inbound.message_sid
                    )
                )
            ).first()
            if seen is not None:
                return False
            await conn.execute(
                insert(inbound_messages),
                [
                    {
                        "id": new_message_id(),
                        "message_sid": inbound.message_sid,
                        "from_addr": inbound.from_addr,
                        "to_addr": inbound.to_addr,
                        "channel": inbound.channel,
                        "body": inbound.body,
                        "media": json.dumps(
                            [{"url": u, "content_type": t} for u, t in inbound.media]
                        )
                        if inbound.media
                        else None,
                        "profile_name": inbound.profile_name,
                        "wa_id": inbound.wa_id,
                        "received_at": now,
                    }
                ],
            )
            key = {"channel": inbound.channel, "address": inbound.from_addr}
            values: dict[str, Any] = {"last_inbound_at": now, "updated_at": now}
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
                await conn.execute(insert(recipients), [{**key, **values}])
        return True

    async def status_counts(self) -> tuple[dict[str, int], int, int | None]:
        """(messages per status, due PENDING messages, oldest due PENDING creation time)."""
        now = self._clock()
        async with _storage_errors(), self._db.reader.connect() as conn:
            rows = (
                await conn.execute(
                    select(messages.c.status, func.count()).group_by(messages.c.status)
                )
            ).all()
            due = (
                await conn.execute(
                    select(func.count(), func.min(messages.c.created_at)).where(
                        messages.c.status == Status.PENDING.value,
                        messages.c.next_attempt_at <= now,
                    )
                )
            ).one()
        return {str(k): int(v) for k, v in rows}, int(due[0]), due[1]

    # -- the outbox, as the dispatcher uses it -------------------------------------

    async def claim_due(self, owner: str, *, limit: int, lease_ms: int) -> list[MessageRecord]:
        """Lease up to ``limit`` due messages to ``owner``, oldest due first.

        A lease that runs out (its worker died) makes the message claimable again.
        """
        if limit <= 0:
            return []
        now = self._clock()
        due = (
            select(messages.c.id)
            .where(
                messages.c.status.in_((Status.PENDING.value, Status.SCHEDULED.value)),
                messages.c.next_attempt_at <= now,
                or_(messages.c.lease_expires_at.is_(None), messages.c.lease_expires_at < now),
            )
            .order_by(messages.c.next_attempt_at, messages.c.id)
            .limit(limit)
        )
        if not self._db.is_sqlite:  # SQLite's single writer already excludes other claimers
            due = due.with_for_update(skip_locked=True)
        async with _storage_errors(), self._db.writer.begin() as conn:
            ids = list((await conn.execute(due)).scalars())
            if not ids:
                return []
            await conn.execute(
                update(messages)
                .where(messages.c.id.in_(ids))
                .values(lease_owner=owner, lease_expires_at=now + lease_ms)
            )
            rows = (await conn.execute(select(messages).where(messages.c.id.in_(ids)))).all()
        by_id = {row.id: _record(row._mapping, ()) for row in rows}
        return [by_id[i] for i in ids]

    async def record_attempt(
        self, message_id: str, attempt: AttemptRecord | None, transition: Transition
    ) -> None:
        """Store an attempt and its effect on the message in one transaction."""
        now = self._clock()
        async with _storage_errors(), self._db.writer.begin() as conn:
            if attempt is not None:
                number = (
                    await conn.execute(
                        select(func.count())
                        .select_from(delivery_attempts)
                        .where(delivery_attempts.c.message_id == message_id)
                    )
                ).scalar_one() + 1
                await conn.execute(
                    insert(delivery_attempts),
                    [
                        {
                            "message_id": message_id,
                            "number": number,
                            "started_at": attempt.started_at_ms,
                            "finished_at": attempt.finished_at_ms,
                            "outcome": attempt.outcome,
                            "http_status": attempt.http_status,
                            "error_code": attempt.error_code,
                            "error_message": attempt.error_message,
                            "twilio_sid": attempt.twilio_sid,
                        }
                    ],
                )
            values: dict[str, Any] = {
                "lease_owner": None,
                "lease_expires_at": None,
                "updated_at": now,
                "error_code": transition.error_code,
                "error_message": transition.error_message,
            }
            if attempt is not None:
                values["attempts"] = messages.c.attempts + 1
            if transition.twilio_sid is not None:
                values["twilio_sid"] = transition.twilio_sid
            if transition.status is Status.PENDING:
                values["next_attempt_at"] = transition.retry_at_ms
            values["status"] = transition.status.value
            # Only a message still in the outbox changes status here: a callback that
            # already moved it on (or an operator's cancel) wins.
            changed = (
                await conn.execute(
                    update(messages)
                    .where(
                        messages.c.id == message_id,
                        messages.c.status.in_((Status.PENDING.value, Status.SCHEDULED.value)),
                    )
                    .values(**values)
                )
            ).rowcount
            if changed and transition.status is not Status.PENDING:
                await _add_event(
                    conn, message_id, transition.status, "dispatcher", now, transition.error_code
                )
            elif not changed:
                # A callback (or a cancel) moved it on first; keep the attempt's facts.
                late: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}
                if attempt is not None:
                    late["attempts"] = messages.c.attempts + 1
                await conn.execute(
                    update(messages).where(messages.c.id == message_id).values(**late)
                )
                if transition.twilio_sid is not None:
                    await conn.execute(
                        update(messages)
                        .where(messages.c.id == message_id, messages.c.twilio_sid.is_(None))
                        .values(twilio_sid=transition.twilio_sid)
                    )

    async def release(self, owner: str, ids: Sequence[str]) -> int:
        """Give back leases that were never used, so another worker takes them now."""
        if not ids:
            return 0
        async with _storage_errors(), self._db.writer.begin() as conn:
            result = await conn.execute(
                update(messages)
                .where(
                    messages.c.id.in_(list(ids)),
                    messages.c.lease_owner == owner,
                    messages.c.status.in_((Status.PENDING.value, Status.SCHEDULED.value)),
                )
                .values(lease_owner=None, lease_expires_at=None)
            )
            return int(result.rowcount)

    async def attempts_of(self, message_id: str) -> tuple[Status, int]:
        async with _storage_errors(), self._db.reader.connect() as conn:
            row = (
                await conn.execute(
                    select(messages.c.status, messages.c.attempts).where(
                        messages.c.id == message_id
                    )
                )
            ).first()
        if row is None:
            raise NotFound("message", message_id)
        return Status(row.status), int(row.attempts)

    async def next_due_at(self) -> int | None:
        """When the earliest unleased message becomes due, for the dispatcher's sleep."""
        async with _storage_errors(), self._db.reader.connect() as conn:
            value = (
                await conn.execute(
                    select(func.min(messages.c.next_attempt_at)).where(
                        messages.c.status.in_((Status.PENDING.value, Status.SCHEDULED.value)),
                        messages.c.lease_owner.is_(None),
                    )
                )
            ).scalar()
        return int(value) if value is not None else None

    # -- operations -----------------------------------------------------------------

    async def list_messages(
        self, query: MessageQuery, *, limit: int, before_id: str | None
    ) -> list[MessageRecord]:
        """Newest first; ``before_id`` continues after the last message of a page."""
        stmt = select(messages).where(*_conditions(query)).order_by(messages.c.id.desc())
        if before_id is not None:
            stmt = stmt.where(messages.c.id < before_id)
        async with _storage_errors(), self._db.reader.connect() as conn:
            rows = (await conn.execute(stmt.limit(limit))).all()
            tags = await _tags_of(conn, [r.id for r in rows])
        return [_record(r._mapping, tags.get(r.id, ())) for r in rows]

    async def cancel(self, message_id: str) -> MessageRecord:
        now = self._clock()
        async with _storage_errors(), self._db.writer.begin() as conn:
            record = await self._load(conn, message_id)
            if record.status is Status.CANCELED:
                return record
            row = (
                await conn.execute(
                    select(messages.c.lease_expires_at).where(messages.c.id == message_id)
                )
            ).one()
            if record.status.with_twilio or record.status.is_terminal:
                raise PreconditionFailed(
                    message_id,
                    "NOT_CANCELABLE",
                    f"message {message_id} is {record.status.name}: "
                    "only PENDING or SCHEDULED messages can be canceled",
                )
            if row.lease_expires_at is not None and row.lease_expires_at >= now:
                raise PreconditionFailed(
                    message_id,
                    "IN_FLIGHT",
                    f"message {message_id} is being handed to Twilio right now",
                )
            await conn.execute(
                update(messages)
                .where(messages.c.id == message_id)
                .values(status=Status.CANCELED.value, updated_at=now)
            )
            await _add_event(conn, message_id, Status.CANCELED, "api", now)
            return await self._load(conn, message_id)

    async def requeue(
        self, query: MessageQuery, *, limit: int, validity_ms: int | None
    ) -> RetryOutcome:
        """Put failed, undelivered and expired messages back in the outbox."""
        now = self._clock()
        retryable = (Status.FAILED.value, Status.UNDELIVERED.value, Status.EXPIRED.value)
        requeued: list[str] = []
        skipped: list[tuple[str, str]] = []
        async with _storage_errors(), self._db.writer.begin() as conn:
            stmt = select(messages.c.id, messages.c.status, messages.c.expires_at)
            if query.message_ids:
                stmt = stmt.where(messages.c.id.in_(query.message_ids))
            else:
                stmt = stmt.where(*_conditions(query), messages.c.status.in_(retryable))
            rows = (await conn.execute(stmt.order_by(messages.c.id).limit(limit))).all()
            found = {r.id for r in rows}
            skipped += [(mid, "not found") for mid in query.message_ids if mid not in found]
            for row in rows:
                if row.status not in retryable:
                    skipped.append((row.id, f"status {row.status.upper()} is not retryable"))
                    continue
                expires = row.expires_at
                if expires is not None and expires <= now:
                    if validity_ms is None:
                        skipped.append((row.id, "its validity has ended; pass validity to extend"))
                        continue
                    expires = now + validity_ms
                await conn.execute(
                    update(messages)
                    .where(messages.c.id == row.id)
                    .values(
                        status=Status.PENDING.value,
                        attempts=0,
                        next_attempt_at=now,
                        expires_at=expires,
                        lease_owner=None,
                        lease_expires_at=None,
                        error_code=None,
                        error_message=None,
                        updated_at=now,
                    )
                )
                await _add_event(conn, row.id, Status.PENDING, "operator", now)
                requeued.append(row.id)
        return RetryOutcome(tuple(requeued), tuple(skipped))

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
            attempts = (
                await conn.execute(
                    select(delivery_attempts)
                    .where(delivery_attempts.c.message_id == message_id)
                    .order_by(delivery_attempts.c.id)
                )
            ).all()
        return Delivery(
            message=record,
            events=tuple(_event(e) for e in events),
            attempts=tuple(_attempt(a) for a in attempts),
        )

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


def _conditions(query: MessageQuery) -> list[Any]:
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
    if query.tag is not None:
        tagged = select(message_tags.c.message_id).where(message_tags.c.tag == query.tag)
        conds.append(messages.c.id.in_(tagged))
    return conds


async def _tags_of(conn: AsyncConnection, ids: list[str]) -> dict[str, tuple[str, ...]]:
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


async def _add_event(
    conn: AsyncConnection,
    message_id: str,
    status: Status,
    source: str,
    now: int,
    error_code: int | None = None,
) -> None:
    await conn.execute(
        insert(status_events),
        [
            {
                "message_id": message_id,
                "status": status.value,
                "source": source,
                "occurred_at": now,
                "error_code": error_code,
            }
        ],
    )


def _attempt(row: Row[Any]) -> Attempt:
    return Attempt(
        number=row.number,
        started_at_ms=row.started_at,
        finished_at_ms=row.finished_at,
        outcome=row.outcome,
        http_status=row.http_status,
        error_code=row.error_code,
        error_message=row.error_message,
    )
