"""The two storage backends a benchmark runs on: a SQLite file, or a fresh PostgreSQL
database on the server at ``NOTIFIER_TEST_POSTGRES`` (created, migrated, dropped after).

Each yields a ``Backend``: the URL Notifier is given, and the setup a benchmark needs
(a queue written with bulk SQL, a count of rows), which is not what is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import asyncpg

from bench.common import any_row, count_rows, create_schema, fill_outbox, rounds

PG_SERVER = os.environ.get("NOTIFIER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
PG_ADMIN_DB = "test"
BACKENDS = ("sqlite", "postgresql")
LABEL = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


@dataclass(frozen=True)
class Backend:
    name: str
    url: str
    path: Path | None = None  # SQLite
    dsn: str | None = None  # PostgreSQL, for asyncpg

    @property
    def label(self) -> str:
        return LABEL[self.name]

    async def fill(self, count: int, *, status: str = "pending", with_sids: bool = False) -> None:
        """``count`` template messages in the outbox, as SendMessage stores them."""
        if self.path is not None:
            await asyncio.to_thread(
                fill_outbox, self.path, count, status=status, with_sids=with_sids
            )
            return
        conn = await connect(self.dsn)
        try:
            await _pg_fill(conn, count, status, with_sids)
        finally:
            await conn.close()

    async def count(self, where: str) -> int:
        """``SELECT count(*) FROM messages WHERE ...``"""
        if self.path is not None:
            return await asyncio.to_thread(count_rows, self.path, where)
        conn = await connect(self.dsn)
        try:
            return int(await conn.fetchval(f"SELECT count(*) FROM messages WHERE {where}"))  # noqa: S608
        finally:
            await conn.close()

    @contextlib.asynccontextmanager
    async def watcher(self) -> AsyncIterator[Callable[[str], Awaitable[bool]]]:
        """Whether any message ``WHERE ...`` is left, asked every few ms while a bench
        waits for the server to finish, on one connection held meanwhile. The question is
        whether one is left, not how many: ``count(*)`` of the pending messages every 50
        ms was a fifth of PostgreSQL's statement time during the dispatch part (2.6 ms a
        poll, pg_stat_statements), work on the machine's two cores that the server's
        figure then paid for; on SQLite it ran in this process, whose CPU a bench counts
        as the server's. A connection per poll was a twentieth more (a backend started)."""
        if self.path is not None:
            path = self.path
            yield lambda where: asyncio.to_thread(any_row, path, where)
            return
        conn = await connect(self.dsn)

        async def any_left(where: str) -> bool:
            sql = f"SELECT EXISTS (SELECT 1 FROM messages WHERE {where})"  # noqa: S608
            return bool(await conn.fetchval(sql))

        try:
            yield any_left
        finally:
            await conn.close()


async def connect(dsn: str | None, tries: int = 50) -> asyncpg.Connection:
    """A connection, waiting for a free slot: the server may be shared with test runs
    that fill its ``max_connections`` for a moment."""
    for _ in range(tries - 1):
        try:
            return await asyncpg.connect(dsn)
        except asyncpg.TooManyConnectionsError:
            await asyncio.sleep(0.2)
    return await asyncpg.connect(dsn)


async def _pg_fill(conn: asyncpg.Connection, count: int, status: str, with_sids: bool) -> None:
    now = int(time.time() * 1000)
    sid = "'SM' || lpad(to_hex(i), 32, '0')" if with_sids else "NULL"
    variables = json.dumps({"1": "customer"})
    sql = (
        "INSERT INTO messages (id, caller, channel, to_addr, content_sid, variables, status,"
        " twilio_sid, attempts, next_attempt_at, priority, created_at, updated_at)"
        " SELECT '01BENCH' || lpad(i::text, 19, '0'), '', 'whatsapp',"
        " '+1415555' || lpad((i % 10000)::text, 4, '0'), $1, $2, $3,"
        " {sid}, 0, $4, 0, $4, $4 FROM generate_series(0, $5 - 1) AS i"
    )
    await conn.execute(
        sql.format(sid=sid),
        "HX" + "ab" * 16,
        variables,
        status,
        now,
        count,
    )
    await conn.execute(
        "INSERT INTO status_events (message_id, status, source, occurred_at, applied)"
        " SELECT id, status, 'api', created_at, true FROM messages"
    )
    # Autovacuum analyzes a table this changed within a minute; the run starts now.
    # Without statistics the planner took the claim's index for empty and sorted the
    # whole backlog on every claim, which a server with a day's queue never does.
    await conn.execute("ANALYZE messages, status_events")


@contextlib.asynccontextmanager
async def backend(name: str, folder: Path, label: str) -> AsyncIterator[Backend]:
    """A migrated, empty database of backend ``name``; ``label`` names it (one per run)."""
    if name == "sqlite":
        path = folder / f"{label}.db"
        await create_schema(path)
        yield Backend(name, f"sqlite+aiosqlite:///{path}", path=path)
        return
    db_name = f"bench_{label}_{secrets.token_hex(4)}"
    admin = await connect(f"{PG_SERVER}/{PG_ADMIN_DB}")
    try:
        await admin.execute(f'CREATE DATABASE "{db_name}"')
        try:
            url = f"{PG_SERVER.replace('postgresql://', 'postgresql+asyncpg://')}/{db_name}"
            await _migrate(url)
            yield Backend(name, url, dsn=f"{PG_SERVER}/{db_name}")
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _migrate(url: str) -> None:
    from notifier.storage.engine import create_database
    from notifier.storage.migrate import upgrade

    db = create_database(url)
    try:
        await upgrade(db.writer)
    finally:
        await db.dispose()


Leg: TypeAlias = dict[str, Any]


async def interleaved(
    label: str,
    ceiling: tuple[str, Callable[[], Awaitable[Leg]]],
    leg: Callable[[Backend], Awaitable[Leg]],
) -> dict[str, list[Leg]]:
    """Every round's legs (``bench.common.rounds``), keyed by the ceiling's name and
    BACKENDS: each round runs the ceiling, then ``leg`` on a fresh database of each
    backend, in turn, so every leg's rounds span the same minutes as the others'."""
    name, measure = ceiling
    legs: dict[str, list[Leg]] = {name: [], **{b: [] for b in BACKENDS}}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds()):
            legs[name].append(await measure())
            for b in BACKENDS:
                async with backend(b, Path(tmp), f"{label}{r}") as db:
                    legs[b].append(await leg(db))
    return legs
