"""The migrations build exactly the schema the code declares, on both backends."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect

from notifier.storage.engine import create_database
from notifier.storage.migrate import alembic_config, pending_revisions, upgrade
from notifier.storage.tables import metadata
from tests.support.databases import TestDb

pytestmark = pytest.mark.backends("sqlite", "postgresql")


def _diff(conn: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(conn), metadata))


async def test_upgrade_matches_the_declared_schema(empty_database: TestDb) -> None:
    db = create_database(empty_database.url)
    try:
        assert await pending_revisions(db.writer) != []
        await upgrade(db.writer)
        assert await pending_revisions(db.writer) == []
        async with db.writer.connect() as conn:
            diff = await conn.run_sync(_diff)
        assert diff == []  # a model change without its migration fails here
    finally:
        await db.dispose()


async def test_downgrade_to_base_and_up_again(empty_database: TestDb) -> None:
    db = create_database(empty_database.url)
    try:
        await upgrade(db.writer)
        async with db.writer.begin() as conn:
            await conn.run_sync(lambda c: command.downgrade(alembic_config(c), "base"))
        async with db.writer.connect() as conn:
            left = await conn.run_sync(lambda c: inspect(c).get_table_names())
        assert left == ["alembic_version"]
        await upgrade(db.writer)
        assert await pending_revisions(db.writer) == []
        async with db.writer.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await db.dispose()
