"""A deterministic failure between Twilio's answer and the commit, made by the database
itself: a trigger that refuses to store accepted attempts (of one message, or all)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


async def refuse_accepted_attempts(
    engine: AsyncEngine, message_id: str | None = None, *, outcome: str = "accepted"
) -> None:
    """From now on, storing an attempt with ``outcome`` (of ``message_id``, or of any
    message) fails with a database error that is not "storage unavailable"."""
    only = f" AND NEW.message_id = '{message_id}'" if message_id else ""
    async with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            await conn.execute(
                text(
                    "CREATE TRIGGER refuse_attempt BEFORE INSERT ON delivery_attempts "
                    f"WHEN NEW.outcome = '{outcome}'{only} "
                    "BEGIN SELECT RAISE(ABORT, 'attempt refused by the test'); END"
                )
            )
            return
        await conn.execute(
            text(
                "CREATE FUNCTION refuse_attempt() RETURNS trigger AS $$ BEGIN "
                f"IF NEW.outcome = '{outcome}'{only} THEN "
                "RAISE EXCEPTION 'attempt refused by the test'; END IF; RETURN NEW; END $$ "
                "LANGUAGE plpgsql"
            )
        )
        await conn.execute(
            text(
                "CREATE TRIGGER refuse_attempt BEFORE INSERT ON delivery_attempts "
                "FOR EACH ROW EXECUTE FUNCTION refuse_attempt()"
            )
        )
