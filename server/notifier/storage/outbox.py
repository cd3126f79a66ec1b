"""The outbox, as the dispatcher uses it: claims, leases, attempts and their effects."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from typing import Any

from sqlalchemy import (
    BigInteger,
    BindParameter,
    ColumnElement,
    Integer,
    bindparam,
    case,
    func,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from notifier.domain.deferral import resend_after
from notifier.domain.errors import NotFound
from notifier.domain.model import (
    AttemptRecord,
    EventSource,
    MessageRecord,
    Status,
    Transition,
)
from notifier.domain.poison import quarantines
from notifier.domain.retry import RetryPolicy
from notifier.storage.driver import (
    columns_of,
    execute_all,
    fetch_dicts,
    insert_and_notify,
    insert_rows,
    unnested,
    update_rows,
)
from notifier.storage.engine import DUE_CHANNEL, EVENTS_CHANNEL, notify
from notifier.storage.fallbacks import FAILURES, follow_failures
from notifier.storage.quarantine import quarantine
from notifier.storage.rows import (
    CHUNK,
    STAMP_COLUMNS,
    among,
    chunks,
    event_row,
    record,
)
from notifier.storage.store import Store
from notifier.storage.tables import (
    CLAIM_INDEX,
    IN_OUTBOX,
    OUTBOX,
    delivery_attempts,
    messages,
    status_events,
)

AttemptResult = tuple[str, AttemptRecord | None, Transition]
log = logging.getLogger(__name__)

# The dispatcher's statements, built once: each claim and each batch of results runs
# them with new parameters, and SQLAlchemy then neither rebuilds them nor works out
# their cache keys again (a fifth of the recorder's CPU when they were built per call).
_IDS: BindParameter[str] = bindparam("ids", expanding=True)
# The claim's scan. DUE_LOCKED and DUE_SQLITE are public for the test of their plans.
_DUE = (
    select(messages.c.id, messages.c.claims)
    .where(
        text(IN_OUTBOX),  # literal: the partial index over the outbox serves it
        messages.c.next_attempt_at <= bindparam("now"),
        or_(
            messages.c.lease_expires_at.is_(None),
            messages.c.lease_expires_at < bindparam("now"),
        ),
    )
    .order_by(messages.c.priority, messages.c.next_attempt_at, messages.c.id)
    .limit(bindparam("limit", type_=Integer))
)
# PostgreSQL: rows another claimer holds are skipped.
DUE_LOCKED = _DUE.with_for_update(skip_locked=True, key_share=True)
# SQLite (its single writer already excludes other claimers): the same scan, held to the
# claim's index. SQLite never runs ANALYZE here, and without statistics it took the
# status index and sorted the backlog. SQLAlchemy renders no INDEXED BY for SQLite.
DUE_SQLITE = (
    text(
        f"SELECT id, claims FROM messages INDEXED BY {CLAIM_INDEX} WHERE {IN_OUTBOX}"  # noqa: S608 - constants
        " AND next_attempt_at <= :now AND (lease_expires_at IS NULL OR lease_expires_at < :now)"
        " ORDER BY priority, next_attempt_at, id LIMIT :limit"
    )
    .bindparams(bindparam("now", type_=BigInteger), bindparam("limit", type_=Integer))
    .columns(messages.c.id, messages.c.claims)
)


def _lease(which: ColumnElement[bool]) -> Any:
    return (
        update(messages)
        .where(which)
        .values(
            lease_owner=bindparam("owner"),
            lease_expires_at=bindparam("lease"),
            claims=messages.c.claims + 1,
        )
        .returning(*messages.c)
    )


_LEASE = _lease(messages.c.id.in_(_IDS))
# PostgreSQL: the scan and the lease in one statement, autocommitted (Outbox._claim_at_once):
# one round trip where BEGIN, the scan, the lease and COMMIT took four. The rows come
# back as the lease left them, in the scan's order.
_DUE_NOW = DUE_LOCKED.subquery("due")
_LEASED = (
    update(messages)
    .where(messages.c.id == _DUE_NOW.c.id)
    .values(
        lease_owner=bindparam("owner"),
        lease_expires_at=bindparam("lease", type_=BigInteger),
        claims=messages.c.claims + 1,
    )
    .returning(*messages.c)
    .cte("leased")
)
_CLAIM_ANY = select(_LEASED).order_by(_LEASED.c.priority, _LEASED.c.next_attempt_at, _LEASED.c.id)
# PostgreSQL: which of the messages just leased are still ours, locked for their quarantine.
_HELD = (
    select(messages.c.id)
    .where(
        among(messages.c.id, "ids"),
        messages.c.lease_owner == bindparam("owner"),
        text(IN_OUTBOX),
    )
    .with_for_update(key_share=True)
)
_ROWS = select(messages).where(messages.c.id.in_(_IDS))
_STATE_COLUMNS = (
    messages.c.id,
    messages.c.status,
    messages.c.twilio_sid,
    messages.c.attempts,
    messages.c.error_code,
    messages.c.error_message,
    messages.c.expires_at,
)
# The attempts a message has stored so far, as a column of a statement about it.
_STORED = (
    select(func.count())
    .where(delivery_attempts.c.message_id == messages.c.id)
    .scalar_subquery()
    .label("stored")
)
_SIDS: BindParameter[str] = bindparam("sids", expanding=True)
# The messages' state, the attempts stored so far and the messages holding the batch's
# SIDs, in one statement. SQLite (one writer: nothing changes between the statement
# and the write): as it is, for a batch that fits one statement.
_STATE_AND_HOLDERS = select(*_STATE_COLUMNS, _STORED).where(
    or_(messages.c.id.in_(_IDS), messages.c.twilio_sid.in_(_SIDS))
)
_STATE_COUNTED = select(*_STATE_COLUMNS, _STORED).where(messages.c.id.in_(_IDS))
_HOLDERS = select(messages.c.twilio_sid, messages.c.id).where(messages.c.twilio_sid.in_(_SIDS))
# PostgreSQL: the batch's rows are locked first, FOR NO KEY UPDATE (Store._locked), so
# a callback waits for this record; then one read (arrays, rows.among) brings what the
# SQLite statement brings. READ COMMITTED gives it a snapshot of its own, taken after
# the lock: it sees the attempts of a record that held the lock before us (a subquery
# of the locking statement would not, and two numbers would clash), and under our lock
# nobody changes the rows it reads. A UNION ALL of two SELECTs, not one with an OR,
# so each ANY() has its own index.
_LOCK = select(messages.c.id).where(among(messages.c.id, "ids")).with_for_update(key_share=True)
_STATE_AND_HOLDERS_ANY = union_all(
    select(*_STATE_COLUMNS, _STORED).where(among(messages.c.id, "ids")),
    select(*_STATE_COLUMNS, _STORED).where(among(messages.c.twilio_sid, "sids")),
)


class Outbox(Store):
    async def status_counts(self) -> tuple[dict[str, int], int, int | None]:
        """(messages per status, due PENDING messages, oldest due PENDING creation time)."""
        now = self._clock()
        async with self._reading() as conn:
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
        async with self._reading() as conn:
            count = (
                await conn.execute(
                    select(func.count()).select_from(messages).where(messages.c.status.in_(OUTBOX))
                )
            ).scalar_one()
        return int(count)

    async def oldest_due_at(self) -> int | None:
        """When the longest-waiting due PENDING message became due (epoch ms), or None:
        the first entry of the (status, next_attempt_at) index, not a scan."""
        now = self._clock()
        async with self._reading() as conn:
            oldest = (
                await conn.execute(
                    select(func.min(messages.c.next_attempt_at)).where(
                        messages.c.status == Status.PENDING.value,
                        messages.c.next_attempt_at <= now,
                    )
                )
            ).scalar_one()
        return None if oldest is None else int(oldest)

    async def claim_due(
        self, owner: str, *, limit: int, lease_ms: int, max_claims: int | None = None
    ) -> list[MessageRecord]:
        """Lease up to ``limit`` due messages to ``owner``, oldest due first.

        A lease that runs out (its worker died) makes the message claimable again. Each
        claim is counted with the claim; with ``max_claims``, a message already claimed
        that often without a recorded outcome is failed here instead (``domain.poison``)
        and returned with status FAILED, for the caller to report.
        """
        if limit <= 0:
            return []
        # A write like the recorder's: on SQLite it shares their commit (group commit).
        # In a transaction of its own, each claim cost one more fsync on the single
        # writer, which the recorder's writes queued behind while every message they
        # carried held its send slot.
        if not self._db.is_sqlite:
            return await self._claim_at_once(owner, limit, lease_ms, max_claims, self._clock())
        claim = partial(self._claim, owner, limit, lease_ms, max_claims, self._clock())
        return await self._write(claim)

    async def _claim_at_once(
        self, owner: str, limit: int, lease_ms: int, max_claims: int | None, now: int
    ) -> list[MessageRecord]:
        """PostgreSQL: lease the due messages in one autocommitted statement, then fail
        those claimed too often (the poison guard) in a transaction of their own.

        The lease keeps other claimers off them meanwhile, and the second write fails
        only those still leased here (locked first: a lease that ran out meanwhile went
        to whoever took it). If that write fails, the others are still returned and
        sent; the poisoned stay leased, unsent, and the next claim after their lease
        judges them again."""
        params = {"now": now, "limit": limit, "owner": owner, "lease": now + lease_ms}
        async with self._autocommitted() as conn:
            rows = await fetch_dicts(conn, _CLAIM_ANY, params)
        # The count before this claim is what the guard judges (as on SQLite).
        before = {row["id"]: int(row["claims"]) - 1 for row in rows}
        poisoned = {i: n for i, n in before.items() if max_claims and quarantines(n, max_claims)}
        if not poisoned:
            return [record(row, ()) for row in rows]
        failed: dict[str, dict[str, Any]] = {}
        try:
            failed = await self._write(partial(self._quarantine, poisoned, owner, now))
        except Exception:  # the healthy ones must not wait a lease for it
            log.exception("could not fail %d messages claimed too often", len(poisoned))
        return [
            record(failed.get(row["id"], row), ())
            for row in rows
            if row["id"] not in poisoned or row["id"] in failed
        ]

    async def _quarantine(
        self, poisoned: dict[str, int], owner: str, now: int, conn: AsyncConnection
    ) -> dict[str, dict[str, Any]]:
        """Fail those of ``poisoned`` still leased to ``owner``; their rows as left."""
        held = await fetch_dicts(conn, _HELD, {"ids": list(poisoned), "owner": owner})
        mine = {row["id"]: poisoned[row["id"]] for row in held}
        if not mine:
            return {}
        await quarantine(conn, mine, owner, now)
        return {row["id"]: row for row in await fetch_dicts(conn, _ROWS, {"ids": list(mine)})}

    async def _claim(
        self,
        owner: str,
        limit: int,
        lease_ms: int,
        max_claims: int | None,
        now: int,
        conn: AsyncConnection,
    ) -> list[MessageRecord]:
        """SQLite (its single writer excludes other claimers): the scan, the guard, the
        lease, in the group commit; straight to the driver (storage/driver.py)."""
        found = {
            row["id"]: int(row["claims"])
            for row in await fetch_dicts(conn, DUE_SQLITE, {"now": now, "limit": limit})
        }
        if not found:
            return []
        poisoned = {i: n for i, n in found.items() if max_claims and quarantines(n, max_claims)}
        await quarantine(conn, poisoned, owner, now)
        claimed = [i for i in found if i not in poisoned]
        rows: list[dict[str, Any]] = []
        if claimed:
            # RETURNING: the claimed rows as the lease left them, without reading them
            # again.
            leased = {"ids": claimed, "owner": owner, "lease": now + lease_ms}
            rows += await fetch_dicts(conn, _LEASE, leased)
        if poisoned:
            rows += await fetch_dicts(conn, _ROWS, {"ids": list(poisoned)})
        by_id = {row["id"]: record(row, ()) for row in rows}
        return [by_id[i] for i in found]

    async def record_attempt(
        self, message_id: str, attempt: AttemptRecord | None, transition: Transition
    ) -> None:
        """Store an attempt and its effect on the message in one transaction."""
        await self.record_attempts([(message_id, attempt, transition)])

    async def record_attempts(self, results: Sequence[AttemptResult]) -> None:
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
        self, conn: AsyncConnection, results: list[AttemptResult], now: int
    ) -> None:
        ids = sorted({message_id for message_id, _, _ in results})
        sids = sorted({t.twilio_sid for _, _, t in results if t.twilio_sid is not None})
        plan = _AttemptPlan(now, self._retry)
        if not self._db.is_sqlite:
            await conn.execute(_LOCK, {"ids": ids})
            await _read_at_once(conn, plan, ids, sids, _STATE_AND_HOLDERS_ANY)
        elif len(ids) + len(sids) <= CHUNK:
            await _read_at_once(conn, plan, ids, sids, _STATE_AND_HOLDERS)
        else:
            await _read_in_chunks(conn, plan, ids, sids)
        for result in results:
            plan.add(*result)
        await plan.write(conn)
        await follow_failures(conn, plan.failed, now, self._fallback)

    async def release(self, owner: str, ids: Sequence[str]) -> int:
        """Give back leases that were never used, so another worker takes them now."""
        if not ids:
            return 0
        async with self._transaction() as conn:
            result = await conn.execute(
                update(messages)
                .where(
                    messages.c.id.in_(list(ids)),
                    messages.c.lease_owner == owner,
                    messages.c.status.in_(OUTBOX),
                )
                .values(
                    lease_owner=None,
                    lease_expires_at=None,
                    # never used: the claim does not count towards the poison guard
                    claims=case((messages.c.claims > 0, messages.c.claims - 1), else_=0),
                )
            )
            if result.rowcount:
                await notify(conn, DUE_CHANNEL)
            return int(result.rowcount)

    async def attempts_of(self, message_id: str) -> tuple[Status, int]:
        async with self._reading() as conn:
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


class _AttemptPlan:
    """What a batch of attempt results writes, decided in order against the messages'
    state as the earlier results of the batch left it."""

    def __init__(self, now: int, policy: RetryPolicy) -> None:
        self.now = now
        self.policy = policy  # how a send a report deferred goes again
        self.resent: list[str] = []  # re-queued here after a report deferred their send
        self.state: dict[str, dict[str, Any]] = {}  # message id -> status, sid, attempts
        self.numbers: dict[str, int] = {}  # message id -> attempts stored so far
        self.held: dict[str, str] = {}  # Twilio SID -> the message that holds it
        self.attempts: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.moved: dict[str, dict[str, Any]] = {}  # their status changes
        self.late: dict[str, dict[str, Any]] = {}  # their status stays (a callback won)
        self.failed: set[str] = set()  # failed here: their SMS fallback may follow

    def add(self, message_id: str, attempt: AttemptRecord | None, transition: Transition) -> None:
        row = self.state.get(message_id)
        if row is None:
            return  # deleted meanwhile: nothing to record against
        attempt, transition = self._unique_sid(message_id, attempt, transition)
        if attempt is not None:
            self._add_attempt(message_id, row, attempt)
        # Only a message still in the outbox changes status here: a callback that
        # already moved it on (or an operator's cancel) wins.
        if row["status"] not in OUTBOX:
            # A callback (or a cancel) moved it on first; keep the attempt's facts.
            if row["twilio_sid"] is None and transition.twilio_sid is not None:
                row["twilio_sid"] = transition.twilio_sid
            if self._resend_deferred(message_id, row, transition):
                return
            if message_id not in self.moved:
                self.late[message_id] = {"b_id": message_id}
            return
        self.late.pop(message_id, None)
        values = self.moved.setdefault(message_id, {"p_next": None})
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
        if transition.status in FAILURES:
            self.failed.add(message_id)
        if transition.status is not Status.PENDING:
            self.events.append(
                event_row(
                    message_id,
                    transition.status,
                    EventSource.DISPATCHER,
                    self.now,
                    transition.error_code,
                )
            )

    def _resend_deferred(
        self, message_id: str, row: dict[str, Any], transition: Transition
    ) -> bool:
        """A report failed this very send with a deferral code (63049, 63018) before this
        record landed: re-queue it now, as the report would have (domain/deferral.py)."""
        if transition.twilio_sid is None or row["twilio_sid"] != transition.twilio_sid:
            return False
        code = row["error_code"]
        resend = resend_after(
            Status(row["status"]),
            code,
            attempts=row["attempts"],
            expires_at_ms=row["expires_at"],
            now_ms=self.now,
            policy=self.policy,
        )
        if resend is None:
            return False
        if self.attempts and self.attempts[-1]["message_id"] == message_id:
            self.attempts[-1] |= {"outcome": resend.outcome, "error_code": code}
        row |= {"status": Status.PENDING.value, "twilio_sid": None}
        self.late.pop(message_id, None)
        self.moved[message_id] = {
            "b_id": message_id,
            "p_next": resend.at_ms,
            "p_status": Status.PENDING.value,
            "p_error_code": code,
            "p_error_message": row["error_message"],
        }
        self.resent.append(message_id)
        self.events.append(
            event_row(message_id, Status.PENDING, EventSource.DEFERRAL, self.now, code)
        )
        return True

    def _unique_sid(
        self, message_id: str, attempt: AttemptRecord | None, transition: Transition
    ) -> tuple[AttemptRecord | None, Transition]:
        """Twilio's answer kept whatever it says: a SID another message already holds
        (messages.twilio_sid is unique; real Twilio never repeats one, a mock or a
        replayed answer may) stays on the attempt, flagged, and not on the message."""
        sid = transition.twilio_sid
        if sid is None:
            return attempt, transition
        holder = self.held.setdefault(sid, message_id)
        if holder == message_id:
            return attempt, transition
        log.warning("Twilio SID %s of %s is already held by %s", sid, message_id, holder)
        flag = f"Twilio's SID {sid} is already held by message {holder}; kept on this attempt"
        if attempt is not None:
            attempt = replace(attempt, error_message=flag)
        return attempt, replace(transition, twilio_sid=None)

    def _add_attempt(self, message_id: str, row: dict[str, Any], attempt: AttemptRecord) -> None:
        self.numbers[message_id] = self.numbers.get(message_id, 0) + 1
        row["attempts"] += 1
        self.attempts.append(
            {
                "message_id": message_id,
                "number": self.numbers[message_id],
                "started_at": attempt.started_at_ms,
                "finished_at": attempt.finished_at_ms,
                "outcome": attempt.outcome,
                "http_status": attempt.http_status,
                "error_code": attempt.error_code,
                "error_message": attempt.error_message,
                "twilio_sid": attempt.twilio_sid,
            }
        )

    async def write(self, conn: AsyncConnection) -> None:
        for message_id, values in (self.moved | self.late).items():
            row = self.state[message_id]
            values |= {"p_attempts": row["attempts"], "p_twilio_sid": row["twilio_sid"]}
        moved, late = list(self.moved.values()), list(self.late.values())
        # A new send: no step times yet (the old ones stay in the history).
        stamps = dict.fromkeys(STAMP_COLUMNS.values())
        unstamped = [{"id": i} | stamps for i in dict.fromkeys(self.resent)]
        if conn.dialect.name != "postgresql":
            # SQLite: every write in one trip to the driver's thread (driver.execute_all);
            # it has no NOTIFY.
            for row in moved + late:
                row["p_now"] = self.now
            steps = [(delivery_attempts, self.attempts), (_MOVED, moved), (_LATE, late)]
            await execute_all(
                conn, [*steps, (messages.c.id, unstamped), (status_events, self.events)]
            )
            return
        await insert_rows(conn, delivery_attempts, self.attempts)
        await _update_many(conn, moved, self.now, moved=True)
        await _update_many(conn, late, self.now, moved=False)
        await update_rows(conn, messages.c.id, unstamped)
        if self.events:
            await insert_and_notify(conn, status_events, self.events, EVENTS_CHANNEL)


async def _read_at_once(
    conn: AsyncConnection, plan: _AttemptPlan, ids: list[str], sids: list[str], statement: Any
) -> None:
    """The messages' state, their attempts so far and the SIDs' holders, in one
    ``statement`` (_STATE_AND_HOLDERS or its PostgreSQL form)."""
    wanted, held = set(ids), set(sids)
    for row in await fetch_dicts(conn, statement, {"ids": ids, "sids": sids}):
        if row["twilio_sid"] in held:
            plan.held[str(row["twilio_sid"])] = str(row["id"])
        if row["id"] in wanted:
            plan.numbers[row["id"]] = int(row.pop("stored"))
            plan.state[row["id"]] = row


async def _read_in_chunks(
    conn: AsyncConnection, plan: _AttemptPlan, ids: list[str], sids: list[str]
) -> None:
    """SQLite, a batch too big for one statement: the same reads, a chunk of ids (or
    SIDs) per statement."""
    for chunk in chunks(ids):
        for row in await fetch_dicts(conn, _STATE_COUNTED, {"ids": list(chunk)}):
            plan.numbers[row["id"]] = int(row.pop("stored"))
            plan.state[row["id"]] = row
    for chunk in chunks(sids):
        holders = await conn.execute(_HOLDERS, {"sids": chunk})
        plan.held |= {str(sid): str(holder) for sid, holder in holders}


async def _update_many(
    conn: AsyncConnection, rows: list[dict[str, Any]], now: int, *, moved: bool
) -> None:
    """PostgreSQL: leases given back, attempts counted, and (``moved``) the new status;
    rows whose status stays put keep their next_attempt_at unless PENDING. One
    statement for the batch (driver.unnested), not one execution a row. (SQLite: in
    ``_AttemptPlan.write``'s one trip.)"""
    if rows:
        statement = _MOVED_ANY if moved else _LATE_ANY
        await conn.execute(statement, {"p_now": now} | columns_of(rows))


# Each row's values in _given_back, and the columns whose types they take.
_PER_ROW = {
    "b_id": messages.c.id,
    "p_attempts": messages.c.attempts,
    "p_twilio_sid": messages.c.twilio_sid,
    "p_status": messages.c.status,
    "p_error_code": messages.c.error_code,
    "p_error_message": messages.c.error_message,
    "p_next": messages.c.next_attempt_at,
}


def _given_back(moved: bool, batch: Any = None) -> Any:
    """The UPDATE of a recorded message: one execution a row (``batch`` None), or on
    PostgreSQL the whole batch at once from ``batch`` (driver.unnested)."""

    def row(name: str) -> Any:
        if batch is not None:
            return batch.c[name]
        return bindparam(name, type_=_PER_ROW[name].type)

    values: dict[str, Any] = {
        "lease_owner": None,
        "lease_expires_at": None,
        "updated_at": bindparam("p_now", type_=BigInteger),
        "claims": 0,  # an outcome is recorded: the poison guard counts from zero again
        "attempts": row("p_attempts"),
        "twilio_sid": row("p_twilio_sid"),
    }
    if moved:
        values |= {
            "status": row("p_status"),
            "error_code": row("p_error_code"),
            "error_message": row("p_error_message"),
            "next_attempt_at": func.coalesce(row("p_next"), messages.c.next_attempt_at),
        }
    return update(messages).where(messages.c.id == row("b_id")).values(**values)


_MOVED = _given_back(moved=True)
_LATE = _given_back(moved=False)
_MOVED_ANY = _given_back(moved=True, batch=unnested(_PER_ROW))
_LATE_ANY = _given_back(
    moved=False, batch=unnested({n: _PER_ROW[n] for n in ("b_id", "p_attempts", "p_twilio_sid")})
)
