"""Send times shared by every replica through one row per sender (PostgreSQL).

The row holds the sender's next slot on a fixed grid: a replica ready to send takes
the next few slots when the first is due within its lead, and the row moves on by one
spacing per slot taken, in one atomic UPDATE, whatever time the replica asked at. A
send that starts late therefore never moves the slots after it (spacing each slot from
the moment it was taken let lateness add up: 80/s gave 76/s); it delays only the slot
N after it, through a row of ``send_slot_delays`` that the replica taking that slot
takes with it, in the same statement. A grid that fell behind
(nobody sent for a while) starts again a little ahead of now, never in the past: its
first slot must still be usable when the answer arrives; it starts again on its own
places, skipping those gone by, so that the delay left for a place (the slot N after
a late one) meets that place and no other. Times are the database's
clock, so replicas on hosts whose clocks disagree still share one timeline.
"""

from __future__ import annotations

from collections.abc import Sequence

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
            -- Behind: on to the first place at least :restart ahead, still on the grid,
            -- so a delay left for a place meets that very place (0013).
            ELSE next_slot_us + :span * (
                ((SELECT now_us FROM clock) + :restart - next_slot_us + :span - 1) / :span
            ) END
        WHERE sender = :sender AND next_slot_us <= (SELECT now_us FROM clock) + :lead
        RETURNING next_slot_us - :span * :count AS slot_us
    ),
    delayed AS (
        DELETE FROM send_slot_delays AS d USING granted AS g
        WHERE d.sender = :sender AND d.place_us <= g.slot_us + :span * :count - :span / 2
        RETURNING d.place_us, d.not_before_us
    )
    SELECT
        (SELECT slot_us FROM granted) AS slot_us,
        (SELECT next_slot_us FROM send_slots WHERE sender = :sender) AS next_us,
        (SELECT now_us FROM clock) AS now_us,
        (SELECT array_agg(place_us ORDER BY place_us) FROM delayed) AS places,
        (SELECT array_agg(not_before_us ORDER BY place_us) FROM delayed) AS not_befores
    """
).bindparams(
    bindparam("span", type_=BigInteger),
    bindparam("count", type_=BigInteger),
    bindparam("restart", type_=BigInteger),
    bindparam("lead", type_=BigInteger),
)


# Built once, one statement for any number of delays (arrays, not a VALUES row per
# delay): at a high rate nearly every grant owes one, and building and compiling a
# multi-row INSERT for each write was a twentieth of the dispatcher's CPU.
_DELAY = text(
    """
    INSERT INTO send_slot_delays (sender, place_us, not_before_us)
    SELECT :sender, d.place_us, d.not_before_us
    FROM unnest(CAST(:places AS bigint[]), CAST(:not_befores AS bigint[]))
        AS d(place_us, not_before_us)
    ON CONFLICT (sender, place_us) DO UPDATE
    SET not_before_us = greatest(send_slot_delays.not_before_us, excluded.not_before_us)
    """
)

_CLOCK = text("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint")


class SendSlots:
    """The shared slot rows; used by dispatch.rate_limit.SharedLimiter."""

    def __init__(self, db: Database) -> None:
        if not db.is_postgresql:
            raise ValueError("shared send slots need PostgreSQL")
        self._db = db
        self._known: set[str] = set()

    async def take_slots(
        self, sender: str, spacing_us: int, count: int, lead_us: int, restart_us: int
    ) -> tuple[int | None, int, int, list[tuple[int, int]]]:
        """Take ``count`` consecutive slots of ``sender`` if the first is due within
        ``lead_us``: (first slot or None, next slot, now, the delays taken with the
        slots as (place, not before)), the database's microseconds."""
        # One statement, atomic by itself: autocommit spares the BEGIN and COMMIT round
        # trips, which count at a few hundred grants a second.
        async with storage_errors(), self._db.autocommitted() as conn:
            if sender not in self._known:
                await conn.execute(
                    insert(send_slots)
                    .values(sender=sender, next_slot_us=0)
                    .on_conflict_do_nothing(index_elements=["sender"])
                )
                self._known.add(sender)
            slot_us, next_us, now_us, places, not_befores = (
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
        delays = list(zip(places or [], not_befores or [], strict=True))
        first = None if slot_us is None else int(slot_us)
        return first, int(next_us), int(now_us), delays

    async def clock_us(self) -> int:
        """The database's clock, microseconds (one autocommitted SELECT)."""
        async with storage_errors(), self._db.autocommitted() as conn:
            return int((await conn.execute(_CLOCK)).scalar_one())

    async def delay_slots(self, sender: str, delays: Sequence[tuple[int, int]]) -> None:
        """Slots at these places may start no earlier than given (place, not before):
        one autocommitted INSERT; two delays of one slot keep the later."""
        latest: dict[int, int] = {}
        for place, not_before in delays:  # one row per place: ON CONFLICT touches it once
            latest[place] = max(not_before, latest.get(place, not_before))
        params = {"sender": sender, "places": list(latest), "not_befores": list(latest.values())}
        async with storage_errors(), self._db.autocommitted() as conn:
            await conn.execute(_DELAY, params)
