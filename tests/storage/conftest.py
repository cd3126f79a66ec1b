"""Fixtures of the storage tests alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.databases import PgDatabases, TestDb, sqlite_db


@pytest.fixture
def empty_database(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[TestDb]:
    """Like ``database`` but with no schema at all (for migration tests)."""
    if backend == "sqlite":
        yield sqlite_db(tmp_path / "empty.db")
        return
    pg: PgDatabases = request.getfixturevalue("pg_databases")
    db = pg.create(migrated=False)
    try:
        yield db
    finally:
        pg.drop(db)
