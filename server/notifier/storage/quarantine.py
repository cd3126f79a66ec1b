"""The SQL of the poison-message guard: failing messages claimed too often, in the claim.

Whether a message is quarantined is the domain's rule (``domain.poison``); this writes
what it decides while no other claimer can take the message: on SQLite in the claim's
own transaction, on PostgreSQL right after the claim's one statement, under the lease
it took and on the rows locked again (``Outbox._claim_at_once``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from notifier.domain.delivery import ErrorKind
from notifier.domain.model import EventSource, Status
from notifier.domain.poison import quarantine_reason
from notifier.storage.engine import EVENTS_CHANNEL, notify
from notifier.storage.rows import event_row
from notifier.storage.tables import delivery_attempts, messages, status_events


async def quarantine(conn: AsyncConnection, claims: dict[str, int], owner: str, now: int) -> None:
    """Fail each message of ``claims`` (message id -> claims so far): an ambiguous
    attempt saying why (GetMetrics counts it), FAILED with the same reason, and a
    FAILED event in its history."""
    if not claims:
        return
    counted = await conn.execute(
        select(delivery_attempts.c.message_id, func.count())
        .where(delivery_attempts.c.message_id.in_(list(claims)))
        .group_by(delivery_attempts.c.message_id)
    )
    stored = {message_id: int(n) for message_id, n in counted}
    attempts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for message_id, count in sorted(claims.items()):
        reason = quarantine_reason(count)
        attempts.append(
            {
                "message_id": message_id,
                "number": stored.get(message_id, 0) + 1,
                "started_at": now,
                "finished_at": now,
                "outcome": ErrorKind.AMBIGUOUS.value,
                "error_message": reason,
                "worker": owner,
            }
        )
        updates.append({"b_id": message_id, "p_reason": reason})
    await conn.execute(insert(delivery_attempts), attempts)
    await conn.execute(
        update(messages)
        .where(messages.c.id == bindparam("b_id"))
        .values(
            status=Status.FAILED.value,
            error_code=None,
            error_message=bindparam("p_reason"),
            attempts=messages.c.attempts + 1,
            claims=0,
            lease_owner=None,
            lease_expires_at=None,
            updated_at=now,
        ),
        updates,
    )
    await conn.execute(
        insert(status_events),
        [event_row(m, Status.FAILED, EventSource.DISPATCHER, now) for m in sorted(claims)],
    )
    await notify(conn, EVENTS_CHANNEL)
