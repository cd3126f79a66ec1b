"""Send times shared by every replica through one row per sender (PostgreSQL).

Each grant is one atomic upsert: the row's next free slot moves on by one spacing, and
the caller gets the slot it moved past. Slots are handed out strictly one spacing apart
across all replicas, whatever their number, so no window of one second holds more of
them than the rate allows. Times are the database's clock, so replicas on hosts whose
clocks disagree still share one timeline.
"""

from __future__ import annotations

from sqlalchemy import text

from notifier.storage.engine import Database
from notifier.storage.repository import _storage_errors

# The CTE reads the clock once; excluded.next_slot_us - :span is that reading.
_TAKE = text(
    """
    WITH clock AS (
        SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS now_us
    )
    INSERT INTO send_slots (sender, next_slot_us)
    SELECT :sender, now_us + :span FROM clock
    ON CONFLICT (sender) DO UPDATE
        SET next_slot_us = greatest(send_slots.next_slot_us, excluded.next_slot_us - :span)
            + :span
    RETURNING next_slot_us - :span AS slot_us, (SELECT now_us FROM clock) AS now_us
    """
)


class SendSlots:
    """The shared slot rows; used by dispatch.rate_limit.SharedLimiter."""

    def __init__(self, db: Database) -> None:
        if not db.is_postgresql:
            raise ValueError("shared send slots need PostgreSQL")
        self._db = db

    async def take_slot(self, sender: str, spacing_us: int) -> float:
        """Reserve the next slot of ``sender``; returns the seconds to wait until it."""
        async with _storage_errors(), self._db.writer.begin() as conn:
            slot_us, now_us = (
                await conn.execute(_TAKE, {"sender": sender, "span": spacing_us})
            ).one()
        return max(0.0, (int(slot_us) - int(now_us)) / 1_000_000)
