"""Alembic migrations, run programmatically on our own engine."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


# Any fixed number: the key of the advisory lock that queues concurrent upgrades.
_MIGRATION_LOCK_KEY = 0x6E6F7469  # "noti"


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Replicas starting together each migrate on start (development): they take
            # turns, and the later ones find nothing left to do. (SQLite's write lock
            # already does this.) The lock ends with the transaction.
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
            )
        await conn.run_sync(lambda c: command.upgrade(alembic_config(c), revision))


async def pending_revisions(engine: AsyncEngine) -> list[str]:
    """Revisions not yet applied; empty when the schema is current."""
    script = ScriptDirectory.from_config(alembic_config())

    def _pending(conn: Connection) -> list[str]:
        current = MigrationContext.configure(conn).get_current_heads()
        return [
            rev.revision
            for rev in script.iterate_revisions("heads", current[0] if current else "base")
            if rev.revision not in current
        ]

    async with engine.connect() as conn:
        return await conn.run_sync(_pending)
