"""Test databases on both backends: a fresh one per test, read as an operator would.

PostgreSQL: one migrated template database per session, and per test
``CREATE DATABASE ... TEMPLATE`` of it (a file copy on the server: tens of ms), dropped
after the test. Names carry a random prefix, as other people may share the server.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import sqlite3
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

T = TypeVar("T")

PG_SERVER = os.environ.get("NOTIFIER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
"""Where the PostgreSQL variants run (CI has PostgreSQL there). When it cannot be
reached they fail: a missing database must not pass as a skipped test."""
PG_ADMIN_DB = "test"


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a loop of its own, in another thread, so sync
    helpers work from inside async tests (whose loop must not be re-entered)."""

    async def go() -> T:
        return await make()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, go()).result()


async def _admin(admin_dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _placeholders(sql: str) -> str:
    """sqlite3's ``?`` placeholders as asyncpg's ``$1, $2, ...``."""
    counter = iter(range(1, 1000))
    return re.sub(r"\?", lambda _m: f"${next(counter)}", sql)


@dataclass(frozen=True)
class TestDb:
    """One test's database: its URL for Notifier, and plain SQL access for the test."""

    __test__ = False  # not a test class, despite the name

    backend: str
    url: str
    path: Path | None = None  # the SQLite file
    name: str | None = None  # the PostgreSQL database
    server: str = PG_SERVER  # the PostgreSQL server it is on

    @property
    def is_postgresql(self) -> bool:
        return self.backend == "postgresql"

    @property
    def dsn(self) -> str:
        assert self.name is not None
        return f"{self.server}/{self.name}"

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run ``sql`` (``?`` placeholders) on a connection of its own; all rows."""
        if self.path is not None:
            with sqlite3.connect(self.path, timeout=30) as conn:
                return [tuple(r) for r in conn.execute(sql, params).fetchall()]

        async def query() -> list[tuple[Any, ...]]:
            conn = await asyncpg.connect(self.dsn, timeout=10)
            try:
                return [tuple(r) for r in await conn.fetch(_placeholders(sql), *params)]
            finally:
                await conn.close()

        return run_async(query)

    def record(self, sql: str, *params: Any) -> dict[str, Any] | None:
        """The first row of ``sql`` by column name (None without rows)."""
        if self.path is not None:
            with sqlite3.connect(self.path, timeout=30) as conn:
                conn.row_factory = sqlite3.Row
                found = conn.execute(sql, params).fetchone()
                return dict(found) if found is not None else None

        async def query() -> dict[str, Any] | None:
            conn = await asyncpg.connect(self.dsn, timeout=10)
            try:
                found = await conn.fetchrow(_placeholders(sql), *params)
                return dict(found) if found is not None else None
            finally:
                await conn.close()

        return run_async(query)

    def execute(self, sql: str, *params: Any) -> None:
        """Run a write in its own transaction, committed on return."""
        if self.path is not None:
            with sqlite3.connect(self.path, timeout=30) as conn:
                conn.execute(sql, params)
            return

        async def write() -> None:
            conn = await asyncpg.connect(self.dsn, timeout=10)
            try:
                await conn.execute(_placeholders(sql), *params)
            finally:
                await conn.close()

        run_async(write)

    def count(self, table: str) -> int:
        ((n,),) = self.rows(f"SELECT count(*) FROM {table}")  # noqa: S608 - test tables
        return int(n)


def sqlite_db(path: Path) -> TestDb:
    return TestDb("sqlite", f"sqlite+aiosqlite:///{path}", path=path)


def _pg_db(name: str, server: str = PG_SERVER) -> TestDb:
    where = server.removeprefix("postgresql://")
    return TestDb("postgresql", f"postgresql+asyncpg://{where}/{name}", name=name, server=server)


class PgDatabases:
    """Creates and drops this session's PostgreSQL databases (on ``server``, through its
    existing database ``admin_db``)."""

    def __init__(self, server: str = PG_SERVER, admin_db: str = PG_ADMIN_DB) -> None:
        self.server = server
        self._admin_dsn = f"{server}/{admin_db}"
        self.prefix = f"notifier_t_{secrets.token_hex(4)}"
        self._template: str | None = None
        self._count = 0

    def template(self) -> str:
        """The migrated template, made on first use."""
        if self._template is None:
            from notifier.storage.engine import create_database
            from notifier.storage.migrate import upgrade

            name = f"{self.prefix}_tmpl"
            run_async(lambda: _admin(self._admin_dsn, f'CREATE DATABASE "{name}"'))

            async def migrate() -> None:
                db = create_database(_pg_db(name, self.server).url)
                try:
                    await upgrade(db.writer)
                finally:
                    await db.dispose()

            run_async(migrate)
            self._template = name
        return self._template

    def create(self, *, migrated: bool = True) -> TestDb:
        """A fresh database: a copy of the migrated template, or an empty one."""
        self._count += 1
        name = f"{self.prefix}_{self._count}"
        template = self.template() if migrated else "template0"
        run_async(
            lambda: _admin(self._admin_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        )
        return _pg_db(name, self.server)

    def drop(self, db: TestDb) -> None:
        sql = f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)'
        run_async(lambda: _admin(self._admin_dsn, sql))

    def close(self) -> None:
        if self._template is not None:
            self.drop(_pg_db(self._template, self.server))


def count_rows(db: Path | TestDb, table: str) -> int:
    """Read the database the way an operator would: a separate connection."""
    if isinstance(db, TestDb):
        return db.count(table)
    with sqlite3.connect(db) as conn:
        (n,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
        return int(n)
