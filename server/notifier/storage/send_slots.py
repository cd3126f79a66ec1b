"""Send times shared by every replica through one row per sender (PostgreSQL).

The row holds the sender's next slot on a fixed grid: a replica ready to send takes
the next few slots when the first is due within its lead, and the row moves on by one
spacing per slot taken, in one atomic UPDATE, whatever time the replica asked at. A
send that starts late therefore never moves the slots after it (spacing each slot from
the moment it was taken let lateness add up: 80/s gave 76/s). A grid that fell behind
(nobody sent for a while) starts again a little ahead of now, never in the past: its
first slot must still be usable when the answer arrives. Times are the database's
clock, so replicas on hosts whose clocks disagree still share one timeline.
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
        SET next_slot_us = :span * :count + CASE
            WHEN next_slot_us >= (SELECT now_us FROM clock) THEN next_slot_us
            ELSE (SELECT now_us FROM clock) + :restart END
        WHERE sender = :sender AND next_slot_us <= (SELECT now_us FROM clock) + :lead
        RETURNING next_slot_us - :span * :count AS slot_us
    )
    SELECT
        (SELECT slot_us FROM granted) AS slot_us,
        (SELECT next_slot_us FROM send_slots WHERE sender = :sender) AS next_us,
        (SELECT now_us FROM clock) AS now_us
    """
).bindparams(
    bindparam("span", type_=BigInteger),
    bindparam("count", type_=BigInteger),
    bindparam("restart", type_=BigInteger),
    bindparam("lead", type_=BigInteger),
)


_PUSH = text(
    "UPDATE send_slots SET next_slot_us = next_slot_us + :by WHERE sender = :sender"
).bindparams(bindparam("by", type_=BigInteger))


class SendSlots:
    """The shared slot rows; used by dispatch.rate_limit.SharedLimiter."""

    def __init__(self, db: Database) -> None:
        if not db.is_postgresql:
            raise ValueError("shared send slots need PostgreSQL")
        self._db = db
        self._known: set[str] = set()

    async def take_slots(
        self, sender: str, spacing_us: int, count: int, lead_us: int, restart_us: int
    ) -> tuple[int | None, int, int]:
        """Take ``count`` consecutive slots of ``sender`` if the first is due within
        ``lead_us``: (first slot or None, next slot, now), the database's microseconds."""
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
                        "lead": lead_us,
                        "restart": restart_us,
                    },
                )
            ).one()
        return (None if slot_us is None else int(slot_us)), int(next_us), int(now_us)

    async def push_slots(self, sender: str, by_us: int) -> None:
        """Move the sender's next slot on by ``by_us`` (one autocommitted UPDATE)."""
        async with storage_errors(), self._db.writer.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(_PUSH, {"sender": sender, "by": by_us})
