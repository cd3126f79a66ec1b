"""What a failed WhatsApp message leaves behind, written in the transaction that records
the failure: its SMS fallback (``domain.fallback``) and the recipient's not-on-WhatsApp
mark. Both write paths of a failure call ``follow_failures``: the attempt recorder
(Twilio refused the send) and the status reports (a callback, or the reconciler's fetch).

Exactly once: the SMS row is inserted in the same transaction as the failing status, so
a crash keeps both or neither; the messages are read under the caller's row locks
(PostgreSQL) or SQLite's single writer, so two reports of one failure take turns and
the second sees the first's SMS; the unique index on ``fallback_of`` refuses any second
SMS that slipped past (the batch is then retried item by item and sees it).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from notifier.domain.fallback import (
    FailedSend,
    FallbackPolicy,
    fallback_reason,
    marks_not_on_whatsapp,
    sms_body,
)
from notifier.domain.model import Channel, EventSource, NewMessage, Status
from notifier.storage.engine import DUE_CHANNEL, EVENTS_CHANNEL, notify
from notifier.storage.rows import chunks, event_row, message_row, new_message_id
from notifier.storage.tables import message_tags, messages, recipients, status_events

FAILURES = frozenset({Status.FAILED, Status.UNDELIVERED})


async def follow_failures(
    conn: AsyncConnection, ids: Collection[str], now: int, policy: FallbackPolicy
) -> None:
    """For each message of ``ids`` that just failed: mark a 63024 number not on WhatsApp,
    and insert the SMS fallback the rule asks for."""
    if not ids:
        return
    rows = await _rows(conn, sorted(ids))
    if not rows:
        return
    wanted = [r for r in rows if r["fallback_sms"]]
    taken = await _with_fallback(conn, [r["id"] for r in wanted])
    opted = await _opted_out(conn, sorted({r["to_addr"] for r in wanted}))
    plan = _Fallbacks(now)
    for row in rows:
        if marks_not_on_whatsapp(Channel(row["channel"]), Status(row["status"]), row["error_code"]):
            await mark_not_on_whatsapp(
                conn, row["to_addr"], now + policy.not_on_whatsapp_ttl_ms, now
            )
        send = FailedSend(
            channel=Channel(row["channel"]),
            status=Status(row["status"]),
            error_code=row["error_code"],
            wants_sms=bool(row["fallback_sms"]),
            reached_device=row["delivered_at"] is not None or row["read_at"] is not None,
            has_fallback=row["id"] in taken or row["fallback_of"] is not None,
            opted_out=row["to_addr"] in opted,
        )
        reason = fallback_reason(send, policy)
        if reason is not None:
            plan.add(row, reason)
    await plan.insert(conn)


class _Fallbacks:
    """The SMS rows a batch of failures adds, written with one INSERT per table."""

    def __init__(self, now: int) -> None:
        self.now = now
        self.originals: list[str] = []
        self.messages: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    def add(self, original: dict[str, Any], reason: str) -> None:
        self.originals.append(original["id"])
        self.messages.append(fallback_row(original, reason, self.now))
        row = self.messages[-1]
        self.events.append(event_row(row["id"], Status.PENDING, EventSource.FALLBACK, self.now))
        # The original's watchers hear of it too: an entry in its history (its status
        # unchanged) whose message state names the SMS.
        self.events.append(
            event_row(
                original["id"], original["status"], EventSource.FALLBACK, self.now, applied=False
            )
        )

    async def insert(self, conn: AsyncConnection) -> None:
        if not self.messages:
            return
        await conn.execute(insert(messages), self.messages)
        await conn.execute(insert(status_events), self.events)
        by_original = {m["fallback_of"]: m["id"] for m in self.messages}
        tags = await conn.execute(
            select(message_tags.c.message_id, message_tags.c.tag).where(
                message_tags.c.message_id.in_(self.originals)
            )
        )
        copied = [{"message_id": by_original[m], "tag": t} for m, t in tags]
        if copied:
            await conn.execute(insert(message_tags), copied)
        await notify(conn, DUE_CHANNEL, EVENTS_CHANNEL)


def fallback_row(original: dict[str, Any], reason: str, now: int) -> dict[str, Any]:
    """The SMS standing in for ``original`` (a messages row): same number, caller, sender
    profile (its SMS From) and validity; the caller's SMS text."""
    sms = NewMessage(
        to=original["to_addr"],
        channel=Channel.SMS,
        body=sms_body(original["body"], original["fallback_body"]),
        expires_at_ms=original["expires_at"],
        sender=original["sender"],
    )
    row = message_row(sms, new_message_id(), original["caller"], original["traceparent"], now)
    return row | {"fallback_of": original["id"], "fallback_reason": reason}


async def mark_not_on_whatsapp(conn: AsyncConnection, address: str, until: int, now: int) -> None:
    """The number is not on WhatsApp until ``until``; an inbound WhatsApp message clears it."""
    where = (recipients.c.channel == Channel.WHATSAPP.value, recipients.c.address == address)
    values = {"not_on_whatsapp_until": until, "updated_at": now}
    changed = (await conn.execute(update(recipients).where(*where).values(**values))).rowcount
    if not changed:
        key = {"channel": Channel.WHATSAPP.value, "address": address}
        await conn.execute(insert(recipients), [key | values])


async def _rows(conn: AsyncConnection, ids: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for chunk in chunks(ids):
        found = await conn.execute(select(messages).where(messages.c.id.in_(chunk)))
        out += [dict(r._mapping) for r in found]
    return out


async def _with_fallback(conn: AsyncConnection, ids: list[str]) -> set[str]:
    """Which of these messages already have their SMS."""
    found: set[str] = set()
    for chunk in chunks(sorted(ids)):
        rows = await conn.execute(
            select(messages.c.fallback_of).where(messages.c.fallback_of.in_(chunk))
        )
        found |= {str(r) for r in rows.scalars()}
    return found


async def _opted_out(conn: AsyncConnection, addresses: list[str]) -> set[str]:
    """Which of these numbers opted out, on either channel: a STOP on WhatsApp is no
    leave to text them instead."""
    found: set[str] = set()
    for chunk in chunks(addresses):
        rows = await conn.execute(
            select(recipients.c.address).where(
                recipients.c.address.in_(chunk), recipients.c.opted_out.is_(True)
            )
        )
        found |= {str(r) for r in rows.scalars()}
    return found
