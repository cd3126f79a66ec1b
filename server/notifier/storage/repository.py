"""The one place Notifier's SQL lives."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Row, and_, case, delete, func, insert, or_, select, text, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection
from ulid import ULID

from notifier.domain.clock import Clock, now_ms
from notifier.domain.delivery import ErrorKind
from notifier.domain.errors import (
    DomainError,
    IdempotencyConflict,
    NotFound,
    PreconditionFailed,
    StorageUnavailable,
)
from notifier.domain.inbound import WINDOW_MS, Consent, InboundMessage
from notifier.domain.metrics import FAILURES, ErrorCount, Metrics, MetricsQuery
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
from notifier.domain.watch import StatusChange
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


# The source of a status event reported about another Twilio message than the
# message's current one: kept in the history, never applied.
OTHER_SEND = "callback-other"


def _chunks(values: Sequence[str], size: int = 500) -> list[Sequence[str]]:
    """Keep IN (...) lists under SQLite's limit on bound parameters."""
    return [values[i : i + size] for i in range(0, len(values), size)]


def _message_row(
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
        """Check that a write can be made now.

        SQLite: write the header's user_version back unchanged. Taking the write lock
        alone still succeeds on storage that has turned read-only, and health said
        SERVING while every write failed with "disk I/O error".
        """
        async with _storage_errors(), self._db.writer.begin() as conn:
            if self._db.is_sqlite:
                version = int((await conn.execute(text("PRAGMA user_version"))).scalar_one())
                await conn.execute(text(f"PRAGMA user_version = {version}"))
            else:
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
        (result,) = await self.add_messages(
            [(message, request_hash)], caller=caller, key_ttl_ms=key_ttl_ms, traceparent=traceparent
        )
        if isinstance(result, DomainError):
            raise result
        return result

    async def add_messages(
        self,
        items: Sequence[tuple[NewMessage, str | None]],
        *,
        caller: str,
        key_ttl_ms: int,
        traceparent: str | None = None,
        priority: int = 0,
    ) -> list[Accepted | DomainError]:
        """Store many messages in one transaction; one result per item, in order.

        An item refused for its own reason (its idempotency key names another payload,
        its recipient opted out) gets that error as its result and does not stop the
        others. Each (message, hash) pair is a validated message and, when it has an
        idempotency key, the hash of its payload.
        """
        for attempt in range(2):
            try:
                async with _storage_errors(), self._db.writer.begin() as conn:
                    return await self._add_many(
                        conn, items, caller, key_ttl_ms, traceparent, priority
                    )
            except sa_exc.IntegrityError:
                # Another replica stored one of these idempotency keys first; the second
                # pass finds its row and answers that item as a replay.
                if attempt or all(m.idempotency_key is None for m, _ in items):
                    raise
        raise AssertionError("unreachable")

    async def _add_many(
        self,
        conn: AsyncConnection,
        items: Sequence[tuple[NewMessage, str | None]],
        caller: str,
        key_ttl_ms: int,
        traceparent: str | None,
        priority: int,
    ) -> list[Accepted | DomainError]:
        now = self._clock()
        known = await self._known_keys(conn, caller, [m.idempotency_key for m, _ in items], now)
        consent = await self._recipient_states(conn, [m for m, _ in items])
        results: list[Accepted | DomainError | str] = []  # str: replay of that message id
        fresh: dict[str, tuple[str, str | None]] = {}  # key -> (message id, hash) in this batch
        rows: list[dict[str, Any]] = []
        tags: list[dict[str, str]] = []
        events: list[dict[str, Any]] = []
        keys: list[dict[str, Any]] = []
        for message, digest in items:
            key = message.idempotency_key
            earlier = (known.get(key) or fresh.get(key)) if key is not None else None
            if key is not None and earlier is not None:
                if earlier[1] != digest:
                    results.append(IdempotencyConflict(key, earlier[0]))
                else:
                    results.append(earlier[0])
                continue
            refusal = self._refusal(message, consent.get((message.channel.value, message.to)), now)
            if refusal is not None:
                results.append(refusal)
                continue
            row = _message_row(message, new_message_id(), caller, traceparent, now, priority)
            rows.append(row)
            tags += [{"message_id": row["id"], "tag": t} for t in message.tags]
            event = {"message_id": row["id"], "status": row["status"], "source": "api"}
            events.append(event | {"occurred_at": now})
            if key is not None:
                fresh[key] = (row["id"], digest)
                keys.append(
                    {
                        "caller": caller,
                        "key": key,
                        "request_hash": digest,
                        "message_id": row["id"],
                        "created_at": now,
                        "expires_at": now + key_ttl_ms,
                    }
                )
            results.append(Accepted(_record(row, message.tags), replayed=False))
        if rows:
            await conn.execute(insert(messages), rows)
            await conn.execute(insert(status_events), events)
        if tags:
            await conn.execute(insert(message_tags), tags)
        if keys:
            await conn.execute(insert(idempotency_keys), keys)
        replay_ids = [r for r in results if isinstance(r, str)]
        replays = await self._load_many(conn, replay_ids) if replay_ids else {}
        return [Accepted(replays[r], replayed=True) if isinstance(r, str) else r for r in results]

    async def _known_keys(
        self, conn: AsyncConnection, caller: str, keys: list[str | None], now: int
    ) -> dict[str, tuple[str, str | None]]:
        """Live idempotency keys among ``keys``: key -> (message id, payload hash).

        Expired keys are deleted here, so a key can be used afresh once its time is up.
        """
        wanted = sorted({k for k in keys if k is not None})
        live: dict[str, tuple[str, str | None]] = {}
        for chunk in _chunks(wanted):
            where = (idempotency_keys.c.caller == caller, idempotency_keys.c.key.in_(chunk))
            expired = []
            for row in (await conn.execute(select(idempotency_keys).where(*where))).all():
                if row.expires_at > now:
                    live[row.key] = (row.message_id, row.request_hash)
                else:
                    expired.append(row.key)
            if expired:
                await conn.execute(
                    delete(idempotency_keys).where(
                        idempotency_keys.c.caller == caller, idempotency_keys.c.key.in_(expired)
                    )
                )
        return live

    async def _recipient_states(
        self, conn: AsyncConnection, batch: list[NewMessage]
    ) -> dict[tuple[str, str], tuple[bool, int | None]]:
        addresses = sorted({m.to for m in batch})
        states: dict[tuple[str, str], tuple[bool, int | None]] = {}
        for chunk in _chunks(addresses):
            rows = await conn.execute(
                select(
                    recipients.c.channel,
                    recipients.c.address,
                    recipients.c.opted_out,
                    recipients.c.last_inbound_at,
                ).where(recipients.c.address.in_(chunk))
            )
            for channel, address, opted_out, last_inbound in rows:
                states[(channel, address)] = (bool(opted_out), last_inbound)
        return states

    def _refusal(
        self, message: NewMessage, state: tuple[bool, int | None] | None, now: int
    ) -> PreconditionFailed | None:
        opted_out, last_inbound = state if state is not None else (False, None)
        if opted_out:
            return PreconditionFailed(
                message.to,
                "OPTED_OUT",
                f"{message.to} opted out (sent an opt-out keyword); "
                "nothing is sent until they opt in again",
            )
        outside = last_inbound is None or now - last_inbound >= WINDOW_MS
        if (
            self.refuse_outside_window
            and message.channel.value == "whatsapp"
            and message.body is not None
            and outside
        ):
            return PreconditionFailed(
                message.to,
                "OUTSIDE_WINDOW",
                f"{message.to} has not written in the last 24 hours: WhatsApp only "
                "allows approved templates (content_sid) now (Twilio error 63016)",
            )
        return None

    async def _load_many(self, conn: AsyncConnection, ids: list[str]) -> dict[str, MessageRecord]:
        out: dict[str, MessageRecord] = {}
        for chunk in _chunks(sorted(set(ids))):
            rows = (await conn.execute(select(messages).where(messages.c.id.in_(chunk)))).all()
            tags = await _tags_of(conn, [r.id for r in rows])
            out |= {r.id: _record(r._mapping, tags.get(r.id, ())) for r in rows}
        return out

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
            # A callback about another Twilio message than the current one (an earlier
            # send of a re-queued message, or a copy Twilio took on an ambiguous attempt)
            # only goes into the history, under its own source: judged together, such
            # callbacks made the current send's own ones look like duplicates, and the
            # message stayed at queued for good.
            same_send = row.twilio_sid in (None, report.twilio_sid)
            source = "callback" if same_send else OTHER_SEND
            # Duplicates are judged within the current send: a re-queued message
            # (RetryMessages) gets a new Twilio message whose callbacks are new.
            requeued = (
                await conn.execute(
                    select(func.max(status_events.c.id)).where(
                        status_events.c.message_id == row.id,
                        status_events.c.source == "operator",
                    )
                )
            ).scalar()
            seen = (
                await conn.execute(
                    select(status_events.c.id).where(
                        status_events.c.message_id == row.id,
                        status_events.c.status == report.status.value,
                        status_events.c.source == source,
                        status_events.c.id > (requeued or 0),
                    )
                )
            ).first()
            if seen is not None:
                return CallbackResult.DUPLICATE, row.id
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
                        "source": source,
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
            .order_by(messages.c.priority, messages.c.next_attempt_at, messages.c.id)
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

    async def opted_out(self, channel: str, address: str) -> bool:
        async with _storage_errors(), self._db.reader.connect() as conn:
            value = (
                await conn.execute(
                    select(recipients.c.opted_out).where(
                        recipients.c.channel == channel, recipients.c.address == address
                    )
                )
            ).scalar()
        return bool(value)

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

    async def metrics(self, query: MetricsQuery, *, now_ms: int) -> Metrics:
        """GetMetrics' figures, each one aggregated by the database.

        No message row comes into Python: every figure is a COUNT, AVG or MIN (or one
        value picked by ORDER BY ... OFFSET), so the cost is a few scans of the window,
        not a transfer of it. The queries share one read transaction (on SQLite, one
        WAL snapshot), so the figures agree with each other.
        """
        window = _conditions(
            MessageQuery(
                channel=query.channel,
                tag=query.tag,
                created_after_ms=query.start_ms,
                created_before_ms=query.end_ms,
            )
        )
        # The outbox figures are "now, all windows": the creation window does not apply
        # to them, but the channel and tag filters do, so a caller looking at one
        # channel or one tag sees that part of the backlog.
        outbox = _conditions(MessageQuery(channel=query.channel, tag=query.tag))
        timed = [*window, messages.c.sent_at.is_not(None), messages.c.delivered_at.is_not(None)]
        failures = [s.value for s in FAILURES]
        n_codes = func.count().label("n")
        pending_due = and_(
            messages.c.status == Status.PENDING.value, messages.c.next_attempt_at <= now_ms
        )
        async with _storage_errors(), self._db.reader.connect() as conn:
            by_status = (
                await conn.execute(
                    select(messages.c.status, func.count())
                    .where(*window)
                    .group_by(messages.c.status)
                )
            ).all()
            timed_count, avg_time = (
                await conn.execute(select(func.count(), func.avg(_DELIVERY_TIME)).where(*timed))
            ).one()
            p50 = await _nearest_rank(conn, timed, int(timed_count), 50)
            p95 = await _nearest_rank(conn, timed, int(timed_count), 95)
            codes = (
                await conn.execute(
                    select(messages.c.error_code, n_codes)
                    .where(
                        *window,
                        messages.c.status.in_(failures),
                        messages.c.error_code.is_not(None),
                    )
                    .group_by(messages.c.error_code)
                    .order_by(n_codes.desc(), messages.c.error_code)
                )
            ).all()
            # Attempts beyond the first, summed over messages = attempt rows minus the
            # messages that have any; COUNT(CASE ...) counts the rows where it holds.
            in_window = select(messages.c.id).where(*window)
            ambiguous_row = case(
                (delivery_attempts.c.outcome == ErrorKind.AMBIGUOUS.value, delivery_attempts.c.id)
            )
            retries, ambiguous = (
                await conn.execute(
                    select(
                        func.count() - func.count(delivery_attempts.c.message_id.distinct()),
                        func.count(ambiguous_row),
                    ).where(delivery_attempts.c.message_id.in_(in_window))
                )
            ).one()
            queue_depth, oldest_due, scheduled = (
                await conn.execute(
                    select(
                        func.count(case((pending_due, messages.c.id))),
                        func.min(case((pending_due, messages.c.created_at))),
                        func.count(
                            case((messages.c.status == Status.SCHEDULED.value, messages.c.id))
                        ),
                    ).where(
                        *outbox,
                        messages.c.status.in_((Status.PENDING.value, Status.SCHEDULED.value)),
                    )
                )
            ).one()
        return Metrics(
            by_status={Status(status): int(n) for status, n in by_status},
            avg_delivery_time_ms=float(avg_time) if avg_time is not None else 0.0,
            p50_delivery_time_ms=p50,
            p95_delivery_time_ms=p95,
            error_codes=tuple(ErrorCount(int(code), int(n)) for code, n in codes),
            retries=int(retries),
            ambiguous_outcomes=int(ambiguous),
            queue_depth=int(queue_depth),
            oldest_pending_age_ms=max(0, now_ms - int(oldest_due)) if oldest_due is not None else 0,
            scheduled=int(scheduled),
        )

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
                        # A new send gets a new Twilio SID and times; the old SID stays
                        # in delivery_attempts and the old times in the history.
                        twilio_sid=None,
                        sent_at=None,
                        delivered_at=None,
                        read_at=None,
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

    # -- watching status changes (WatchDeliveryStatus) -----------------------------

    async def last_event_id(self) -> int:
        """Where a new watch starts: only events stored after this one are news."""
        async with _storage_errors(), self._db.reader.connect() as conn:
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
        async with _storage_errors(), self._db.reader.connect() as conn:
            return await _changes(conn, stmt.order_by(status_events.c.id).limit(limit))

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
        stmt = _change_select().where(status_events.c.id.in_(latest))
        async with _storage_errors(), self._db.reader.connect() as conn:
            found = {c.message.id: c for c in await _changes(conn, stmt)}
        return [found[m] for m in dict.fromkeys(message_ids) if m in found]

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


def _change_select() -> Any:
    """Status events joined to their messages; event columns renamed apart."""
    return select(
        status_events.c.id.label("event_id"),
        status_events.c.status.label("event_status"),
        status_events.c.source.label("event_source"),
        status_events.c.occurred_at.label("event_occurred_at"),
        status_events.c.error_code.label("event_error_code"),
        status_events.c.applied.label("event_applied"),
        messages,
    ).join(messages, messages.c.id == status_events.c.message_id)


async def _changes(conn: AsyncConnection, stmt: Any) -> list[StatusChange]:
    rows = (await conn.execute(stmt)).all()
    tags = await _tags_of(conn, list(dict.fromkeys(r.id for r in rows)))
    return [
        StatusChange(
            event_id=int(r.event_id),
            event=StatusEvent(
                status=Status(r.event_status),
                occurred_at_ms=r.event_occurred_at,
                source=r.event_source,
                error_code=r.event_error_code,
                applied=bool(r.event_applied),
            ),
            message=_record(r._mapping, tags.get(r.id, ())),
        )
        for r in rows
    ]


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


# A message's delivery time, sent to delivered. Callbacks can arrive out of order, so
# delivered_at may precede sent_at; that counts as 0, as GetDeliveryStatus reports it.
_DELIVERY_TIME = case(
    (messages.c.delivered_at > messages.c.sent_at, messages.c.delivered_at - messages.c.sent_at),
    else_=0,
)


async def _nearest_rank(conn: AsyncConnection, where: list[Any], n: int, pct: int) -> float:
    """The ``pct``-th percentile of the delivery times matching ``where`` (``n`` of them).

    Nearest-rank method: sort the n values ascending and take the one at 1-based rank
    ceil(pct/100 * n), i.e. ORDER BY ... LIMIT 1 OFFSET rank-1. No interpolation, so the
    answer is always a time some message really took, and the same SQL runs on SQLite
    (which has no PERCENTILE_CONT) and PostgreSQL. 0 when there is no value.
    """
    if n == 0:
        return 0.0
    rank = -(-pct * n // 100)  # ceil(pct * n / 100) in integers: exact at whole ranks
    value = (
        await conn.execute(
            select(_DELIVERY_TIME).where(*where).order_by(_DELIVERY_TIME).limit(1).offset(rank - 1)
        )
    ).scalar_one()
    return float(value)
