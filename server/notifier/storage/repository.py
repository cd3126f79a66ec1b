"""The one place Notifier's SQL lives."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Row,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
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
    OTHER_SEND_SOURCE,
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
from notifier.storage.group_commit import GroupCommit
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
OTHER_SEND = OTHER_SEND_SOURCE


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


# PostgreSQL SQLSTATEs that say "not now" rather than "wrong": the same work may succeed
# when tried again. asyncpg's errors reach us as plain DBAPIError, so the class of the
# code decides: 08 connection exception, 53 insufficient resources (53300 too many
# connections), 57P0x shutdown / cannot connect now, 40001 serialization failure,
# 40P01 deadlock detected, 55P03 lock not available.
_TRANSIENT_SQLSTATE_CLASSES = ("08", "53")
_TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "40001", "40P01", "55P03"})

# LISTEN/NOTIFY channels (PostgreSQL): "messages became due" and "status events stored".
DUE_CHANNEL = "notifier_due"
EVENTS_CHANNEL = "notifier_events"


def _is_transient(exc: sa_exc.DBAPIError) -> bool:
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if not isinstance(code, str):
        return False
    return code.startswith(_TRANSIENT_SQLSTATE_CLASSES) or code in _TRANSIENT_SQLSTATES


@asynccontextmanager
async def _storage_errors() -> AsyncIterator[None]:
    """Turn "cannot reach the database" into StorageUnavailable; let real bugs through."""
    try:
        yield
    except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, OSError) as exc:
        raise StorageUnavailable(str(exc).splitlines()[0]) from exc
    except sa_exc.DBAPIError as exc:
        if exc.connection_invalidated or _is_transient(exc):
            raise StorageUnavailable(str(exc).splitlines()[0]) from exc
        raise


async def _notify(conn: AsyncConnection, *channels: str) -> None:
    """PostgreSQL: wake the listeners of ``channels`` when this transaction commits.

    NOTIFY is transactional: it is delivered on commit and dropped on rollback, so a
    listener never wakes for rows it cannot see yet. SQLite has no NOTIFY; its readers
    poll. Identical notifications within one transaction are folded into one.
    """
    if conn.dialect.name != "postgresql":
        return
    for channel in channels:
        await conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": channel})


def new_message_id() -> str:
    return str(ULID())


T = TypeVar("T")


_PendingReport = tuple[StatusReport, "asyncio.Future[tuple[CallbackResult, str | None]]"]


@dataclass(slots=True)
class _PendingAccept:
    """One SendMessage waiting to be stored with the others that came meanwhile."""

    message: NewMessage
    request_hash: str | None
    caller: str
    key_ttl_ms: int
    traceparent: str | None
    done: asyncio.Future[Accepted | DomainError] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Repository:
    def __init__(
        self, db: Database, clock: Clock = now_ms, *, refuse_outside_window: bool = False
    ) -> None:
        self._db = db
        self._clock = clock
        self.refuse_outside_window = refuse_outside_window
        # SQLite's single writer commits the small writes of many callers together;
        # other databases take concurrent transactions on their own connections.
        self._group = GroupCommit(db.writer) if db.is_sqlite else None
        self._accepting: list[_PendingAccept] = []
        self._accepter: asyncio.Task[None] | None = None
        self._reports: list[_PendingReport] = []
        self._reporter: asyncio.Task[None] | None = None

    async def _write(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``work`` in a write transaction and return once it is committed.

        On SQLite it shares the transaction (and the fsync) with the writes queued
        beside it (storage/group_commit.py); a failure of ``work`` still undoes only
        its own changes.
        """
        async with _storage_errors():
            if self._group is not None:
                return await self._group.run(work)
            async with self._db.writer.begin() as conn:
                return await work(conn)

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
        if self._group is not None:
            result = await self._accept_together(
                _PendingAccept(message, request_hash, caller, key_ttl_ms, traceparent)
            )
        else:
            (result,) = await self.add_messages(
                [(message, request_hash)],
                caller=caller,
                key_ttl_ms=key_ttl_ms,
                traceparent=traceparent,
            )
        if isinstance(result, DomainError):
            raise result
        return result

    async def _accept_together(self, pending: _PendingAccept) -> Accepted | DomainError:
        """Single messages (SendMessage) that arrive together are stored as one batch.

        Group commit alone would still run each one's statements; here the messages
        waiting while the previous batch commits go in as one ``_add_many`` (one
        lookup, one multi-row insert), as SendBulk's do. Each caller gets its own
        result, and only after the commit.
        """
        self._accepting.append(pending)
        if self._accepter is None or self._accepter.done():
            self._accepter = asyncio.create_task(self._accept_pending(), name="accept-batch")
        return await pending.done

    async def _accept_pending(self) -> None:
        while self._accepting:
            batch, self._accepting = self._accepting, []
            groups: dict[tuple[str, int], list[_PendingAccept]] = {}
            for pending in batch:
                groups.setdefault((pending.caller, pending.key_ttl_ms), []).append(pending)
            await asyncio.gather(*(self._accept_group(g) for g in groups.values()))

    async def _accept_group(self, group: list[_PendingAccept]) -> None:
        first = group[0]
        try:
            results = await self._write(
                partial(
                    self._add_many,
                    items=[(p.message, p.request_hash) for p in group],
                    caller=first.caller,
                    key_ttl_ms=first.key_ttl_ms,
                    traceparent=None,
                    priority=0,
                    traceparents=[p.traceparent for p in group],
                )
            )
        except sa_exc.IntegrityError:
            # Another replica stored one of these idempotency keys first: each on its
            # own, so that one is answered as a replay and the others are not held up.
            await asyncio.gather(*(self._accept_alone(p) for p in group))
            return
        except Exception as exc:
            for pending in group:
                if not pending.done.done():
                    pending.done.set_exception(exc)
            return
        for pending, result in zip(group, results, strict=True):
            if not pending.done.done():
                pending.done.set_result(result)

    async def _accept_alone(self, pending: _PendingAccept) -> None:
        try:
            (result,) = await self.add_messages(
                [(pending.message, pending.request_hash)],
                caller=pending.caller,
                key_ttl_ms=pending.key_ttl_ms,
                traceparent=pending.traceparent,
            )
        except Exception as exc:
            if not pending.done.done():
                pending.done.set_exception(exc)
            return
        if not pending.done.done():
            pending.done.set_result(result)

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
                return await self._write(
                    partial(
                        self._add_many,
                        items=items,
                        caller=caller,
                        key_ttl_ms=key_ttl_ms,
                        traceparent=traceparent,
                        priority=priority,
                    )
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
        traceparents: Sequence[str | None] | None = None,
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
        for index, (message, digest) in enumerate(items):
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
            trace = traceparents[index] if traceparents is not None else traceparent
            row = _message_row(message, new_message_id(), caller, trace, now, priority)
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
            await _notify(conn, DUE_CHANNEL, EVENTS_CHANNEL)
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
        if self._group is None:
            return await self._write(partial(self._apply_report, report=report, now=self._clock()))
        done: asyncio.Future[tuple[CallbackResult, str | None]] = (
            asyncio.get_running_loop().create_future()
        )
        self._reports.append((report, done))
        if self._reporter is None or self._reporter.done():
            self._reporter = asyncio.create_task(self._apply_pending(), name="report-batch")
        return await done

    async def _apply_pending(self) -> None:
        """Callbacks that arrive together are applied in one piece of work, in order.

        Each is applied exactly as alone (a later one sees an earlier one's effect),
        with bulk reads and writes (``_apply_reports``). If the batch fails, each is
        tried again on its own, so one bad callback fails only itself.
        """
        while self._reports:
            batch, self._reports = self._reports, []
            now = self._clock()

            async def apply_all(
                conn: AsyncConnection, batch: list[_PendingReport] = batch, now: int = now
            ) -> list[tuple[CallbackResult, str | None]]:
                return await self._apply_reports(conn, [r for r, _ in batch], now)

            try:
                results = await self._write(apply_all)
            except Exception:
                await asyncio.gather(*(self._apply_alone(r, d, now) for r, d in batch))
                continue
            for (_, done), result in zip(batch, results, strict=True):
                if not done.done():
                    done.set_result(result)

    async def _apply_alone(
        self,
        report: StatusReport,
        done: asyncio.Future[tuple[CallbackResult, str | None]],
        now: int,
    ) -> None:
        try:
            result = await self._write(partial(self._apply_report, report=report, now=now))
        except Exception as exc:
            if not done.done():
                done.set_exception(exc)
            return
        if not done.done():
            done.set_result(result)

    async def _apply_report(
        self, conn: AsyncConnection, report: StatusReport, now: int
    ) -> tuple[CallbackResult, str | None]:
        # A row lock (PostgreSQL; SQLite's single writer needs none): two callbacks for
        # one message, or a callback racing the dispatcher's record, take turns, so the
        # duplicate check and the forward-only move see each other's writes. FOR NO KEY
        # UPDATE, here and elsewhere: we never change a message's id, and the weaker lock
        # does not wait for transactions that merely insert rows referencing the message
        # (their foreign key check takes KEY SHARE).
        locked = not self._db.is_sqlite
        row = None
        if report.message_id:
            by_id = select(messages).where(messages.c.id == report.message_id)
            if locked:
                by_id = by_id.with_for_update(key_share=True)
            row = (await conn.execute(by_id)).first()
        if row is None:
            by_sid = select(messages).where(messages.c.twilio_sid == report.twilio_sid)
            if locked:
                by_sid = by_sid.with_for_update(key_share=True)
            row = (await conn.execute(by_sid)).first()
        if row is None:
            return CallbackResult.UNKNOWN, None
        # A callback about another Twilio message than the current one (an earlier send
        # of a re-queued message, or a copy Twilio took on an ambiguous attempt) only
        # goes into the history, under its own source: judged together, such callbacks
        # made the current send's own ones look like duplicates, and the message stayed
        # at queued for good.
        same_send = row.twilio_sid in (None, report.twilio_sid)
        source = "callback" if same_send else OTHER_SEND
        # Duplicates are judged within the current send: a re-queued message
        # (RetryMessages) gets a new Twilio message whose callbacks are new. One read
        # of the message's few operator and callback events answers both questions.
        history = (
            await conn.execute(
                select(status_events.c.id, status_events.c.status, status_events.c.source).where(
                    status_events.c.message_id == row.id,
                    status_events.c.source.in_(("operator", "callback", OTHER_SEND)),
                )
            )
        ).all()
        requeued = max((e.id for e in history if e.source == "operator"), default=0)
        if any(
            e.source == source and e.status == report.status.value and e.id > requeued
            for e in history
        ):
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
        await _notify(conn, EVENTS_CHANNEL)
        return (CallbackResult.APPLIED if applies else CallbackResult.RECORDED), row.id

    async def _apply_reports(
        self, conn: AsyncConnection, reports: list[StatusReport], now: int
    ) -> list[tuple[CallbackResult, str | None]]:
        """``_apply_report`` for many reports at once, in order, with a few statements.

        The messages and their operator/callback events are read in bulk, each report
        is decided in Python exactly as ``_apply_report`` decides it (against the state
        the earlier reports of the batch left), and the changes are written with one
        executemany per table. SQLite only: its single writer holds the write lock from
        the first read, so nothing changes between the reads and the writes.
        """
        found: dict[str, dict[str, Any]] = {}
        wanted = sorted({r.message_id for r in reports if r.message_id})
        for chunk in _chunks(wanted):
            rows = await conn.execute(select(messages).where(messages.c.id.in_(chunk)))
            found |= {r.id: dict(r._mapping) for r in rows}
        sids = sorted(
            {r.twilio_sid for r in reports if not r.message_id or r.message_id not in found}
        )
        by_sid: dict[str, str] = {m["twilio_sid"]: i for i, m in found.items() if m["twilio_sid"]}
        for chunk in _chunks(sids):
            rows = await conn.execute(select(messages).where(messages.c.twilio_sid.in_(chunk)))
            for r in rows:
                found.setdefault(r.id, dict(r._mapping))
                by_sid[r.twilio_sid] = r.id
        history: dict[str, list[tuple[float, str, str]]] = {i: [] for i in found}
        for chunk in _chunks(sorted(found)):
            rows = await conn.execute(
                select(
                    status_events.c.message_id,
                    status_events.c.id,
                    status_events.c.status,
                    status_events.c.source,
                ).where(
                    status_events.c.message_id.in_(chunk),
                    status_events.c.source.in_(("operator", "callback", OTHER_SEND)),
                )
            )
            for message_id, event_id, status, source in rows:
                history[message_id].append((event_id, status, source))
        results: list[tuple[CallbackResult, str | None]] = []
        events: list[dict[str, Any]] = []
        touched: dict[str, dict[str, Any]] = {}
        for report in reports:
            row: dict[str, Any] | None = found.get(report.message_id or "")
            if row is None:
                message_id = by_sid.get(report.twilio_sid)
                row = found.get(message_id) if message_id is not None else None
            if row is None:
                results.append((CallbackResult.UNKNOWN, None))
                continue
            seen = history[row["id"]]
            same_send = row["twilio_sid"] in (None, report.twilio_sid)
            kind = "callback" if same_send else OTHER_SEND  # as in _apply_report
            requeued = max((e for e, _, source in seen if source == "operator"), default=0)
            if any(
                source == kind and status == report.status.value and e > requeued
                for e, status, source in seen
            ):
                results.append((CallbackResult.DUPLICATE, row["id"]))
                continue
            applies = same_send and moves_forward(Status(row["status"]), report.status)
            row["updated_at"] = now
            if row["twilio_sid"] is None:
                row["twilio_sid"] = report.twilio_sid
                by_sid[report.twilio_sid] = row["id"]
            if applies:
                row["status"] = report.status.value
                if report.error_code is not None:
                    row["error_code"] = report.error_code
                    row["error_message"] = report.error_message
            column = _FIRST_REACHED.get(report.status)
            if same_send and column is not None and row[column] is None:
                row[column] = now
            touched[row["id"]] = row
            seen.append((float("inf"), report.status.value, kind))  # stored below
            events.append(
                {
                    "message_id": row["id"],
                    "status": report.status.value,
                    "source": kind,
                    "occurred_at": now,
                    "error_code": report.error_code,
                    "applied": applies,
                }
            )
            results.append(
                ((CallbackResult.APPLIED if applies else CallbackResult.RECORDED), row["id"])
            )
        if touched:
            columns = (
                "status",
                "twilio_sid",
                "error_code",
                "error_message",
                "sent_at",
                "delivered_at",
                "read_at",
                "updated_at",
            )
            await conn.execute(
                update(messages)
                .where(messages.c.id == bindparam("b_id"))
                .values({c: bindparam(f"p_{c}") for c in columns}),
                [{"b_id": i} | {f"p_{c}": row[c] for c in columns} for i, row in touched.items()],
            )
        if events:
            await conn.execute(insert(status_events), events)
        return results

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

    async def count_unsent(self) -> int:
        """Messages waiting in the outbox (pending or scheduled), for backpressure; the
        (status, next_attempt_at) index answers it without reading the rows."""
        async with _storage_errors(), self._db.reader.connect() as conn:
            unsent = (Status.PENDING.value, Status.SCHEDULED.value)
            count = (
                await conn.execute(
                    select(func.count()).select_from(messages).where(messages.c.status.in_(unsent))
                )
            ).scalar_one()
        return int(count)

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
            due = due.with_for_update(skip_locked=True, key_share=True)
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
        await self.record_attempts([(message_id, attempt, transition)])

    async def record_attempts(
        self, results: Sequence[tuple[str, AttemptRecord | None, Transition]]
    ) -> None:
        """Store many attempts and their effects on their messages in one transaction.

        The dispatcher hands over what Twilio answered for every send that finished
        while the previous write was committing: a handful of statements for the lot
        instead of six per message. Each result is applied as ``record_attempt`` alone
        would (in the order given, so the same message twice is fine).
        """
        if results:
            await self._write(
                partial(self._record_attempts, results=list(results), now=self._clock())
            )

    async def _record_attempts(
        self,
        conn: AsyncConnection,
        results: list[tuple[str, AttemptRecord | None, Transition]],
        now: int,
    ) -> None:
        ids = sorted({message_id for message_id, _, _ in results})
        current: dict[str, Any] = {}
        numbers: dict[str, int] = {}
        for chunk in _chunks(ids):
            stmt = select(
                messages.c.id, messages.c.status, messages.c.twilio_sid, messages.c.attempts
            ).where(messages.c.id.in_(chunk))
            if not self._db.is_sqlite:  # a callback on another connection must wait
                stmt = stmt.with_for_update(key_share=True)
            current |= {row.id: row for row in await conn.execute(stmt)}
            counted = await conn.execute(
                select(delivery_attempts.c.message_id, func.count())
                .where(delivery_attempts.c.message_id.in_(chunk))
                .group_by(delivery_attempts.c.message_id)
            )
            numbers |= {message_id: int(n) for message_id, n in counted}
        outbox = (Status.PENDING.value, Status.SCHEDULED.value)
        state = {
            message_id: {"status": r.status, "twilio_sid": r.twilio_sid, "attempts": r.attempts}
            for message_id, r in current.items()
        }
        attempts: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        applied: dict[str, dict[str, Any]] = {}
        late: dict[str, dict[str, Any]] = {}
        for message_id, attempt, transition in results:
            row = state.get(message_id)
            if row is None:
                continue  # deleted meanwhile: nothing to record against
            if attempt is not None:
                numbers[message_id] = numbers.get(message_id, 0) + 1
                row["attempts"] += 1
                attempts.append(
                    {
                        "message_id": message_id,
                        "number": numbers[message_id],
                        "started_at": attempt.started_at_ms,
                        "finished_at": attempt.finished_at_ms,
                        "outcome": attempt.outcome,
                        "http_status": attempt.http_status,
                        "error_code": attempt.error_code,
                        "error_message": attempt.error_message,
                        "twilio_sid": attempt.twilio_sid,
                    }
                )
            # Only a message still in the outbox changes status here: a callback that
            # already moved it on (or an operator's cancel) wins.
            if row["status"] in outbox:
                values = applied.setdefault(message_id, {})
                late.pop(message_id, None)
                if transition.twilio_sid is not None:
                    row["twilio_sid"] = transition.twilio_sid
                if transition.status is Status.PENDING:
                    values["p_next"] = transition.retry_at_ms
                values |= {
                    "b_id": message_id,
                    "p_status": transition.status.value,
                    "p_error_code": transition.error_code,
                    "p_error_message": transition.error_message,
                }
                row["status"] = transition.status.value
                if transition.status is not Status.PENDING:
                    events.append(
                        {
                            "message_id": message_id,
                            "status": transition.status.value,
                            "source": "dispatcher",
                            "occurred_at": now,
                            "error_code": transition.error_code,
                            "applied": True,
                        }
                    )
            else:
                # A callback (or a cancel) moved it on first; keep the attempt's facts.
                if row["twilio_sid"] is None and transition.twilio_sid is not None:
                    row["twilio_sid"] = transition.twilio_sid
                if message_id not in applied:
                    late[message_id] = {"b_id": message_id}
        for message_id, values in applied.items():
            row = state[message_id]
            values["p_attempts"] = row["attempts"]
            values["p_twilio_sid"] = row["twilio_sid"]
            values.setdefault("p_next", None)
        if attempts:
            await conn.execute(insert(delivery_attempts), attempts)
        await self._update_many(conn, list(applied.values()), now, moved=True)
        for message_id, values in late.items():
            row = state[message_id]
            values |= {"p_attempts": row["attempts"], "p_twilio_sid": row["twilio_sid"]}
        await self._update_many(conn, list(late.values()), now, moved=False)
        if events:
            await conn.execute(insert(status_events), events)
            await _notify(conn, EVENTS_CHANNEL)

    async def _update_many(
        self, conn: AsyncConnection, rows: list[dict[str, Any]], now: int, *, moved: bool
    ) -> None:
        """One executemany: leases given back, attempts counted, and (``moved``) the new
        status; rows whose status stays put keep their next_attempt_at unless PENDING."""
        if not rows:
            return
        values: dict[str, Any] = {
            "lease_owner": None,
            "lease_expires_at": None,
            "updated_at": now,
            "attempts": bindparam("p_attempts"),
            "twilio_sid": bindparam("p_twilio_sid"),
        }
        if moved:
            values |= {
                "status": bindparam("p_status"),
                "error_code": bindparam("p_error_code"),
                "error_message": bindparam("p_error_message"),
                "next_attempt_at": func.coalesce(
                    bindparam("p_next", type_=BigInteger), messages.c.next_attempt_at
                ),
            }
        await conn.execute(
            update(messages).where(messages.c.id == bindparam("b_id")).values(**values), rows
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
            if result.rowcount:
                await _notify(conn, DUE_CHANNEL)
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

    async def opted_out_among(self, pairs: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (channel, address) pairs opted out: one read for a whole claim."""
        wanted = set(pairs)
        found: set[tuple[str, str]] = set()
        addresses = sorted({address for _, address in wanted})
        async with _storage_errors(), self._db.reader.connect() as conn:
            for chunk in _chunks(addresses):
                rows = await conn.execute(
                    select(recipients.c.channel, recipients.c.address).where(
                        recipients.c.address.in_(chunk), recipients.c.opted_out.is_(True)
                    )
                )
                found |= {(channel, address) for channel, address in rows} & wanted
        return found

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
            # Lock the row before reading it (PostgreSQL): a claim or a send being
            # recorded cannot slip in between the check and the update.
            locked = (
                await conn.execute(
                    select(messages.c.lease_expires_at)
                    .where(messages.c.id == message_id)
                    .with_for_update(key_share=True)
                )
            ).first()
            record = await self._load(conn, message_id)
            if record.status is Status.CANCELED:
                return record
            row = locked
            assert row is not None  # _load raised NotFound otherwise
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
            await _notify(conn, EVENTS_CHANNEL)
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
            # FOR UPDATE (PostgreSQL), in id order so two requeues cannot deadlock: a
            # callback or another requeue cannot change a row between check and update.
            stmt = stmt.order_by(messages.c.id).limit(limit).with_for_update(key_share=True)
            rows = (await conn.execute(stmt)).all()
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
            if requeued:
                await _notify(conn, DUE_CHANNEL, EVENTS_CHANNEL)
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

    async def events_with_ids(self, event_ids: Sequence[int]) -> list[StatusChange]:
        """The status events of ``event_ids`` that exist now, in id order.

        For a feed on PostgreSQL: event ids come from a sequence, and a transaction that
        took a lower id can commit after one that took a higher id, so the feed asks
        again for the ids it found missing behind its cursor.
        """
        if not event_ids:
            return []
        stmt = _change_select().where(status_events.c.id.in_(sorted(set(event_ids))))
        async with _storage_errors(), self._db.reader.connect() as conn:
            return await _changes(conn, stmt.order_by(status_events.c.id))

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
        traceparent=row.get("traceparent"),
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
