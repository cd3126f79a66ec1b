"""Accepting messages: idempotency keys, recipients' states, the rows of new messages."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import bindparam, delete, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from notifier.batching import Coalescer
from notifier.domain.clock import Clock, now_ms
from notifier.domain.errors import DomainError, IdempotencyConflict
from notifier.domain.fallback import NOT_ON_WHATSAPP, NOT_ON_WHATSAPP_REASON, skips_whatsapp
from notifier.domain.inbound import RecipientState, refusal
from notifier.domain.model import Accepted, Channel, EventSource, NewMessage, Status
from notifier.storage.driver import fetch_dicts, insert_tables, select_in
from notifier.storage.engine import DUE_CHANNEL, EVENTS_CHANNEL, Database
from notifier.storage.fallbacks import fallback_row
from notifier.storage.rows import (
    among,
    chunks,
    event_row,
    load_many,
    message_row,
    new_message_id,
    record,
)
from notifier.storage.store import Store
from notifier.storage.tables import (
    idempotency_keys,
    message_tags,
    messages,
    recipients,
    status_events,
)

Outcome = Accepted | DomainError

# Recipients among a claim's who opted out; on PostgreSQL with one array parameter.
_OPTED_OUT_ANY = select(recipients.c.channel, recipients.c.address).where(
    among(recipients.c.address, "addresses"), recipients.c.opted_out.is_(True)
)
_OPTED_OUT = select(recipients.c.channel, recipients.c.address).where(
    recipients.c.address.in_(bindparam("addresses", expanding=True)),
    recipients.c.opted_out.is_(True),
)


@dataclass(frozen=True, slots=True)
class Accept:
    """One message to store: validated, with its idempotency key's payload hash."""

    message: NewMessage
    request_hash: str | None
    caller: str
    key_ttl_ms: int
    traceparent: str | None = None
    priority: int = 0


class _AcceptBatch(Coalescer[Accept, Outcome]):
    """Single messages (SendMessage) that arrive together are stored as one batch: one
    lookup and one multi-row insert, as SendBulk's are, each caller answered after the
    commit. An IntegrityError (another replica stored one of the idempotency keys first)
    sends each on its own, so that one is answered as a replay and the others are not
    held up."""

    def __init__(
        self,
        many: Callable[[list[Accept]], Awaitable[list[Outcome]]],
        one: Callable[[Accept], Awaitable[Outcome]],
    ) -> None:
        super().__init__("accept-batch")
        self._many, self._one = many, one

    async def flush(self, items: list[Accept]) -> list[Outcome]:
        return await self._many(items)

    async def flush_one(self, item: Accept) -> Outcome:
        return await self._one(item)

    def retry_alone(self, error: Exception) -> bool:
        return isinstance(error, sa_exc.IntegrityError)


class Messages(Store):
    def __init__(
        self, db: Database, clock: Clock = now_ms, *, refuse_outside_window: bool = False
    ) -> None:
        super().__init__(db, clock)
        self._refuse_outside_window = refuse_outside_window
        # Both backends: on SQLite a batch shares one fsync, on PostgreSQL its round
        # trips (a few statements for the lot instead of six per message).
        self._accepts = _AcceptBatch(self._store, self._store_alone)

    async def add_message(
        self,
        message: NewMessage,
        *,
        caller: str,
        request_hash: str | None,
        key_ttl_ms: int,
        traceparent: str | None = None,
    ) -> Accepted:
        item = Accept(message, request_hash, caller, key_ttl_ms, traceparent)
        result = await self._accepts.submit(item)
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
    ) -> list[Outcome]:
        """Store many messages in one transaction; one result per item, in order.

        An item refused for its own reason (its idempotency key names another payload,
        its recipient opted out) gets that error as its result and does not stop the
        others. Each (message, hash) pair is a validated message and, when it has an
        idempotency key, the hash of its payload.
        """
        batch = [Accept(m, h, caller, key_ttl_ms, traceparent, priority) for m, h in items]
        for attempt in range(2):
            try:
                return await self._store(batch)
            except sa_exc.IntegrityError:
                # Another replica stored one of these idempotency keys first; the second
                # pass finds its row and answers that item as a replay.
                if attempt or all(a.message.idempotency_key is None for a in batch):
                    raise
        raise AssertionError("unreachable")

    async def _store(self, items: list[Accept]) -> list[Outcome]:
        return await self._write(partial(self._add_many, items=items))

    async def _store_alone(self, item: Accept) -> Outcome:
        (result,) = await self.add_messages(
            [(item.message, item.request_hash)],
            caller=item.caller,
            key_ttl_ms=item.key_ttl_ms,
            traceparent=item.traceparent,
            priority=item.priority,
        )
        return result

    async def _add_many(self, conn: AsyncConnection, items: list[Accept]) -> list[Outcome]:
        now = self._clock()
        known = await _known_keys(conn, items, now)
        states = await _recipient_states(conn, [a.message for a in items])
        results: list[Outcome | str] = []  # str: replay of that message id
        fresh: dict[tuple[str, str], tuple[str, str | None]] = {}  # in this batch
        rows = _Rows()
        for item in items:
            message, idem = item.message, item.message.idempotency_key
            key = (item.caller, idem) if idem is not None else None
            earlier = (known.get(key) or fresh.get(key)) if key is not None else None
            if idem is not None and earlier is not None:
                same = earlier[1] == item.request_hash
                results.append(earlier[0] if same else IdempotencyConflict(idem, earlier[0]))
                continue
            state = states.get((message.channel.value, message.to))
            refused = refusal(message, state, now, window_only=self._refuse_outside_window)
            if refused is not None:
                results.append(refused)
                continue
            row = rows.add(item, now)
            mark = state.not_on_whatsapp_until_ms if state is not None else None
            if skips_whatsapp(message, mark, now):
                sms_state = states.get((Channel.SMS.value, message.to))
                row = rows.straight_to_sms(row, opted_out=bool(sms_state and sms_state.opted_out))
            if key is not None:
                fresh[key] = (row["id"], item.request_hash)
            results.append(Accepted(record(row, message.tags), replayed=False))
        await rows.insert(conn)
        replay_ids = [r for r in results if isinstance(r, str)]
        replays = await load_many(conn, replay_ids) if replay_ids else {}
        return [Accepted(replays[r], replayed=True) if isinstance(r, str) else r for r in results]

    async def opted_out_among(self, pairs: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (channel, address) pairs opted out: one read for a whole claim."""
        wanted = set(pairs)
        found: set[tuple[str, str]] = set()
        addresses = sorted({address for _, address in wanted})
        # PostgreSQL: one array however many (rows.among); SQLite: IN lists, straight
        # to the driver (storage/driver.py).
        sqlite = self._db.is_sqlite
        statement = _OPTED_OUT if sqlite else _OPTED_OUT_ANY
        async with self._reading() as conn:
            for chunk in chunks(addresses) if sqlite else [addresses]:
                rows = await fetch_dicts(conn, statement, {"addresses": list(chunk)})
                found |= {(row["channel"], row["address"]) for row in rows} & wanted
        return found


class _Rows:
    """The rows a batch of accepted messages adds, written with one INSERT per table."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.tags: list[dict[str, str]] = []
        self.events: list[dict[str, Any]] = []
        self.keys: list[dict[str, Any]] = []

    def add(self, item: Accept, now: int) -> dict[str, Any]:
        message = item.message
        row = message_row(
            message, new_message_id(), item.caller, item.traceparent, now, item.priority
        )
        self.messages.append(row)
        self.tags += [{"message_id": row["id"], "tag": t} for t in message.tags]
        self.events.append(event_row(row["id"], row["status"], EventSource.API, now))
        if message.idempotency_key is not None:
            self.keys.append(
                {
                    "caller": item.caller,
                    "key": message.idempotency_key,
                    "request_hash": item.request_hash,
                    "message_id": row["id"],
                    "created_at": now,
                    "expires_at": now + item.key_ttl_ms,
                }
            )
        return row

    def straight_to_sms(self, row: dict[str, Any], *, opted_out: bool) -> dict[str, Any]:
        """The WhatsApp message ``row`` to a number known not to be on WhatsApp: recorded
        as failed with 63024 without a send, and its SMS fallback stored beside it (none
        to a number that opted out of SMS)."""
        now = row["created_at"]
        row |= {
            "status": Status.FAILED.value,
            "error_code": NOT_ON_WHATSAPP,
            "error_message": "not on WhatsApp (an earlier send failed with 63024): "
            "WhatsApp skipped, sent by SMS",
        }
        failed = event_row(row["id"], Status.FAILED, EventSource.API, now, NOT_ON_WHATSAPP)
        self.events.append(failed)
        if opted_out:
            return row
        sms = fallback_row(row, NOT_ON_WHATSAPP_REASON, now)
        self.messages.append(sms)
        self.events.append(event_row(sms["id"], Status.PENDING, EventSource.FALLBACK, now))
        linked = event_row(row["id"], Status.FAILED, EventSource.FALLBACK, now, applied=False)
        self.events.append(linked)
        own = [t["tag"] for t in self.tags if t["message_id"] == row["id"]]
        self.tags += [{"message_id": sms["id"], "tag": t} for t in own]
        return row

    async def insert(self, conn: AsyncConnection) -> None:
        if not self.messages:  # no message, no tag or key either
            return
        # In key order: two batches inserting the same keys (replicas) wait on each
        # other's unique index entries in one order, never in a cycle.
        self.keys.sort(key=lambda k: (k["caller"], k["key"]))
        tables = (messages, status_events, message_tags, idempotency_keys)
        rows = (self.messages, self.events, self.tags, self.keys)
        inserts = list(zip(tables, rows, strict=True))
        await insert_tables(conn, inserts, DUE_CHANNEL, EVENTS_CHANNEL)


async def _known_keys(
    conn: AsyncConnection, items: list[Accept], now: int
) -> dict[tuple[str, str], tuple[str, str | None]]:
    """Live idempotency keys among the items': (caller, key) -> (message id, payload hash).

    Expired keys are deleted here, so a key can be used afresh once its time is up.
    """
    by_caller: dict[str, set[str]] = {}
    for item in items:
        if item.message.idempotency_key is not None:
            by_caller.setdefault(item.caller, set()).add(item.message.idempotency_key)
    live: dict[tuple[str, str], tuple[str, str | None]] = {}
    for caller, keys in sorted(by_caller.items()):
        for chunk in chunks(sorted(keys)):
            c = idempotency_keys.c
            columns = (c.key, c.message_id, c.request_hash, c.expires_at)
            rows = await select_in(conn, columns, c.key, chunk, equal=[(c.caller, caller)])
            live |= {
                (caller, key): (message_id, request_hash)
                for key, message_id, request_hash, expires_at in rows
                if expires_at > now
            }
            expired = [key for key, _, _, expires_at in rows if expires_at <= now]
            if expired:
                await conn.execute(
                    delete(idempotency_keys).where(
                        idempotency_keys.c.caller == caller, idempotency_keys.c.key.in_(expired)
                    )
                )
    return live


_STATE_COLUMNS = (
    recipients.c.channel,
    recipients.c.address,
    recipients.c.opted_out,
    recipients.c.last_inbound_at,
    recipients.c.not_on_whatsapp_until,
)


async def _recipient_states(
    conn: AsyncConnection, batch: list[NewMessage]
) -> dict[tuple[str, str], RecipientState]:
    addresses = sorted({m.to for m in batch})
    states: dict[tuple[str, str], RecipientState] = {}
    for chunk in chunks(addresses):
        rows = await select_in(conn, _STATE_COLUMNS, recipients.c.address, chunk)
        for channel, address, opted_out, last_inbound, not_on_whatsapp in rows:
            states[(channel, address)] = RecipientState(
                bool(opted_out), last_inbound, not_on_whatsapp
            )
    return states
