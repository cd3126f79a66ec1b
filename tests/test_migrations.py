"""The migrations build exactly the schema the code declares."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from notifier.storage.engine import create_database
from notifier.storage.migrate import pending_revisions, upgrade
from notifier.storage.tables import metadata


async def test_upgrade_matches_the_declared_schema(tmp_path: Path) -> None:
    db = create_database(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    try:
        assert await pending_revisions(db.writer) != []
        await upgrade(db.writer)
        assert await pending_revisions(db.writer) == []
        async with db.writer.connect() as conn:
            diff = await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c), metadata)
            )
        assert diff == []  # a model change without its migration fails here
    finally:
        await db.dispose()
