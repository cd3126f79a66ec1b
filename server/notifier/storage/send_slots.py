"""Send times shared by every replica through one row per sender (PostgreSQL).

The row holds the earliest time the sender's next send may start. A replica ready to
send asks for that slot; it gets it only if the slot has come (within a small
tolerance), and the row then moves on to max(slot, now) + spacing in the same atomic
UPDATE. Granting a slot only when it is due, not ahead of time, matters: a replica that
wakes late then pushes the next slot later instead of sending closer to the following
one, so sends at the far end stay at least one spacing apart (as the per-process limiter
ensures by stamping the time it really sends). Times are the database's clock, so
replicas on hosts whose clocks disagree still share one timeline.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, bindparam, text
from sqlalchemy.dialects.postgresql import insert

from notifier.storage.engine import Database, storage_errors
from notifier.storage.tables import send_slots

# The UPDATE sees the row as it is after waiting for its lock (READ COMMITTED re-checks
# the WHERE); the outer SELECT sees the snapshot before it, which is good enough to say
# how long to sleep before asking again.
_TAKE = text(
    """
    WITH clock AS (
        SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS now_us
    ),
    granted AS (
        UPDATE send_slots
        SET next_slot_us = greatest(next_slot_us, (SELECT now_us FROM clock)) + :span * :count
        WHERE sender = :sender AND next_slot_us <= (SELECT now_us FROM clock) + :tolerance
        RETURNING next_slot_us - :span * :count AS slot_us
    )
    SELECT
        (SELECT slot_us FROM granted) AS slot_us,
        (SELECT next_slot_us FROM send_slots WHERE sender = :sender) AS next_us,
        (SELECT now_us FROM clock) AS now_us
    """
).bindparams(bindparam("span", type_=BigInteger), bindparam("count", type_=BigInteger))


class SendSlots:
    """The shared slot rows; used by dispatch.rate_limit.SharedLimiter."""

    def __init__(self, db: Database) -> None:
        if not db.is_postgresql:
            raise ValueError("shared send slots need PostgreSQL")
        self._db = db
        self._known: set[str] = set()

    async def take_slots(
        self, sender: str, spacing_us: int, count: int, tolerance_us: int
    ) -> tuple[bool, float]:
        """Try to take ``count`` consecutive slots of ``sender`` now: (granted, seconds).

        Granted: the first slot starts after that many seconds (at most the tolerance),
        the others follow one spacing apart. Not granted: the next slot is still further
        ahead than the tolerance; that many seconds until it.
        """
        # One statement, atomic by itself: autocommit spares the BEGIN and COMMIT round
        # trips, which count at a few hundred grants a second.
        async with storage_errors(), self._db.writer.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            if sender not in self._known:
                await conn.execute(
                    insert(send_slots)
                    .values(sender=sender, next_slot_us=0)
                    .on_conflict_do_nothing(index_elements=["sender"])
                )
                self._known.add(sender)
            slot_us, next_us, now_us = (
                await conn.execute(
                    _TAKE,
                    {
                        "sender": sender,
                        "span": spacing_us,
                        "count": count,
                        "tolerance": tolerance_us,
                    },
                )
            ).one()
        if slot_us is not None:
            return True, max(0.0, (int(slot_us) - int(now_us)) / 1_000_000)
        return False, max(0.0, (int(next_us) - int(now_us)) / 1_000_000)
