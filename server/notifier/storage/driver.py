"""The hot inserts and reads of accepting messages, in fewer thread hops on SQLite.

aiosqlite runs each SQLite call on a thread of its own, and through SQLAlchemy every
statement takes three or four trips there and back (cursor, execute, fetch, close),
each a thread switch that costs more CPU than SQLite's own work on a few rows. Here
the same statements go straight to the driver in the transaction SQLAlchemy began:
one trip per statement. Errors are wrapped as SQLAlchemy wraps them (IntegrityError,
OperationalError...), so callers and ``storage_errors`` see no difference.

PostgreSQL keeps SQLAlchemy's path: there a statement is one round trip either way,
and a multi-row INSERT goes as one.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection


@functools.lru_cache(maxsize=64)
def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    names = ", ".join(columns)
    values = ", ".join(f":{c}" for c in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({values})"  # noqa: S608 (our own names)


async def _driver(conn: AsyncConnection) -> Any:
    """The aiosqlite connection under ``conn`` (its transaction already begun)."""
    raw = await conn.get_raw_connection()
    return raw.driver_connection


def _wrapped(sql: str, error: sqlite3.Error) -> sa_exc.StatementError:
    """``error`` as SQLAlchemy raises it (sqlite3.IntegrityError: sa_exc.IntegrityError)."""
    return sa_exc.DBAPIError.instance(sql, None, error, sqlite3.Error, hide_parameters=True)


async def insert_rows(
    conn: AsyncConnection, table: Table, rows: Sequence[Mapping[str, Any]]
) -> None:
    """INSERT ``rows`` (each with the same keys, Python values SQLite takes as they are:
    str, int, bool, None) into ``table``."""
    if not rows:
        return
    if conn.dialect.name != "sqlite":
        await conn.execute(insert(table), list(rows))
        return
    sql = _insert_sql(table.name, tuple(rows[0]))
    driver = await _driver(conn)
    try:
        await driver.executemany(sql, rows)
    except sqlite3.Error as error:
        raise _wrapped(sql, error) from error


async def fetch_all(
    conn: AsyncConnection, sql: str, params: Sequence[Any]
) -> list[tuple[Any, ...]]:
    """SQLite only: the rows of ``sql`` (qmark placeholders) in one trip to the driver."""
    driver = await _driver(conn)
    try:
        rows = await driver.execute_fetchall(sql, params)
    except sqlite3.Error as error:
        raise _wrapped(sql, error) from error
    return [tuple(r) for r in rows]
