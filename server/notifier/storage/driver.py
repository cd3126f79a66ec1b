"""The hot statements (accepting messages, callbacks, the dispatcher's claims and
recorded attempts), in fewer thread hops on SQLite.

aiosqlite runs each SQLite call on a thread of its own, and through SQLAlchemy every
statement takes three or four trips there and back (cursor, execute, fetch, close),
each a thread switch that costs more CPU than SQLite's own work on a few rows. Here
the same statements go straight to the driver in the transaction SQLAlchemy began:
one trip per statement. Errors are wrapped as SQLAlchemy wraps them (IntegrityError,
OperationalError...), so callers and ``storage_errors`` see no difference.

PostgreSQL keeps SQLAlchemy's path (a statement is one round trip either way), with
statements that do not depend on how many rows a batch has: lookups take an array
(``= ANY``), not an IN list, and inserts unnest one array per column instead of an
executemany; each is then one prepared statement per connection. An SQLite engine
whose statements someone watches (the OpenTelemetry instrumentation listens to
``before_cursor_execute``) keeps SQLAlchemy's path too: the traces keep their INSERT
spans inside the call that stored the message.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

from sqlalchemy import (
    ClauseElement,
    Column,
    Insert,
    Select,
    Table,
    Update,
    bindparam,
    column,
    func,
    insert,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.selectable import TextualSelect

from notifier.storage.engine import notify, owed_begin
from notifier.storage.rows import among, array_of


@functools.lru_cache(maxsize=64)
def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    names = ", ".join(columns)
    values = ", ".join(f":{c}" for c in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({values})"  # noqa: S608 (our own names)


def _direct(conn: AsyncConnection) -> bool:
    """Whether to go straight to the driver: SQLite, and nobody listening to statements."""
    return conn.dialect.name == "sqlite" and not conn.sync_connection.dispatch.before_cursor_execute  # type: ignore[union-attr]


# A statement for ``_on_thread``: its SQL, its parameters, and whether they are many
# rows (an executemany) or one execution's.
Statement = tuple[str, Any, bool]


async def _on_thread(conn: AsyncConnection, statements: Sequence[Statement]) -> list[Any]:
    """Run ``statements`` on the aiosqlite thread under ``conn`` in one trip, the BEGIN
    its transaction owes first (engine.py); the rows each returned, in order."""
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    begin = owed_begin(driver)
    return cast(list[Any], await driver._execute(_run, driver._conn, begin, statements))


def _run(db: sqlite3.Connection, begin: str | None, statements: Sequence[Statement]) -> list[Any]:
    """On aiosqlite's thread: ``begin`` (if owed), then each statement in turn."""
    if begin is not None:
        with _as_sqlalchemy(begin):
            db.execute(begin)
    results = []
    for sql, params, many in statements:
        with _as_sqlalchemy(sql):
            cursor = db.executemany(sql, params) if many else db.execute(sql, params)
            results.append(cursor.fetchall())
    return results


@contextmanager
def _as_sqlalchemy(sql: str) -> Iterator[None]:
    """The driver's errors as SQLAlchemy raises them (sqlite3.IntegrityError:
    sa_exc.IntegrityError), so callers and ``storage_errors`` see no difference."""
    try:
        yield
    except sqlite3.Error as error:
        raise sa_exc.DBAPIError.instance(
            sql, None, error, sqlite3.Error, hide_parameters=True
        ) from error


async def insert_rows(
    conn: AsyncConnection, table: Table, rows: Sequence[Mapping[str, Any]]
) -> None:
    """INSERT ``rows`` (each with the same keys, Python values SQLite takes as they are:
    str, int, bool, None) into ``table``."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        await conn.execute(_unnest_insert(table, tuple(rows[0])), columns_of(rows))
        return
    if not _direct(conn):
        await conn.execute(insert(table), list(rows))
        return
    sql = _insert_sql(table.name, tuple(rows[0]))
    await _on_thread(conn, [(sql, rows, True)])


Rows = Sequence[Mapping[str, Any]]
# A step of ``execute_all``: rows for a table (an INSERT), for a statement of bound
# parameters (an INSERT or UPDATE) executed once per row, or for a key column (its
# table's rows updated by key, as ``update_rows``).
Step = tuple[Table | Insert | Update | Column[Any], Rows]


async def execute_all(conn: AsyncConnection, steps: Sequence[Step]) -> None:
    """Each step in turn (``insert_rows`` for a table, ``execute_many`` for a
    statement, ``update_rows`` for a key column); steps without rows are skipped.

    SQLite: every step in one trip to the driver's thread. Each trip is a thread switch
    there and back, and a wait for the event loop to take the answer: a recorded batch
    of sends (attempts, the messages' updates, their events) made three where one does.
    """
    steps = [(what, rows) for what, rows in steps if rows]
    if not _direct(conn):
        for what, rows in steps:
            if isinstance(what, Table):
                await insert_rows(conn, what, rows)
            elif isinstance(what, Column):
                await update_rows(conn, what, rows)
            else:
                await execute_many(conn, what, rows)
        return
    statements = [_sqlite_step(what, rows) for what, rows in steps]
    await _on_thread(conn, statements)


def _sqlite_step(what: Table | Insert | Update | Column[Any], rows: Rows) -> Statement:
    """A step as SQLite's SQL and its rows (the statement's fixed values added)."""
    if isinstance(what, Table):
        return _insert_sql(what.name, tuple(rows[0])), rows, True
    if isinstance(what, Column):
        return _update_sql(what.table.name, what.name, tuple(rows[0])), rows, True
    sql, fixed = _compiled(what, tuple(rows[0]) if isinstance(what, Insert) else ())
    return sql, [fixed | dict(row) for row in rows] if fixed else rows, True


async def insert_tables(
    conn: AsyncConnection, inserts: Sequence[tuple[Table, Rows]], *channels: str
) -> None:
    """``insert_rows`` for each (table, rows), in order, and ``notify(channels)``.

    SQLite: every INSERT in one trip to the driver's thread (``execute_all``).
    PostgreSQL: the NOTIFY goes with the last INSERT (``insert_and_notify``); it is
    delivered at commit, so where it stands in the transaction changes nothing.
    """
    inserts = [(table, rows) for table, rows in inserts if rows]
    if conn.dialect.name != "postgresql":
        await execute_all(conn, inserts)
        return
    if not inserts:
        await notify(conn, *channels)
        return
    *first, (table, rows) = inserts
    for earlier, earlier_rows in first:
        await insert_rows(conn, earlier, earlier_rows)
    await insert_and_notify(conn, table, rows, *channels)


async def insert_and_notify(
    conn: AsyncConnection, table: Table, rows: Rows, *channels: str
) -> None:
    """``insert_rows(table, rows)`` then ``notify(channels)``; on PostgreSQL in one
    statement (the insert as a data-modifying WITH clause of ``SELECT pg_notify(...)``):
    one round trip instead of two, each a send, a wake-up and a receive here.

    One table only: the rollup triggers of one table read the others, and a statement
    does not see what its sibling WITH clauses wrote, so separate inserts stay apart.
    """
    if conn.dialect.name != "postgresql" or not rows or not channels:
        await insert_rows(conn, table, rows)
        await notify(conn, *channels)
        return
    statement = _insert_notifying(table, tuple(rows[0]), channels)
    await conn.execute(statement, columns_of(rows))


@functools.lru_cache(maxsize=64)
def _insert_notifying(table: Table, names: tuple[str, ...], channels: tuple[str, ...]) -> Any:
    inserted = _unnest_insert(table, names).cte("inserted")
    return select(*(func.pg_notify(c, "") for c in channels)).add_cte(inserted)


@functools.lru_cache(maxsize=64)
def _unnest_insert(table: Table, names: tuple[str, ...]) -> Insert:
    """PostgreSQL: ``INSERT INTO table (names) SELECT unnest(:names...)``, one array per
    column. One statement and one row of parameters whatever the number of rows: an
    executemany binds and executes each row on its own, and the statement is prepared
    once per connection. Arrays unnested side by side keep their order, so rows go in
    as given."""
    arrays = [func.unnest(bindparam(f"u_{n}", type_=array_of(table.c[n]))).label(n) for n in names]
    return insert(table).from_select(list(names), select(*arrays))


def unnested(columns: Mapping[str, Column[Any]]) -> Any:
    """PostgreSQL: ``unnest(:u_a, :u_b, ...) AS d(a, b, ...)``, one array parameter per
    name, typed as its column: a batch of rows as one FROM, so that one UPDATE changes
    them all. An executemany binds and runs each row on its own (the recorder's UPDATE
    took 72 us of the server's time a row that way). Its parameters: ``columns_of``."""
    arrays = [bindparam(f"u_{n}", type_=array_of(c)) for n, c in columns.items()]
    names = [column(n, c.type) for n, c in columns.items()]
    return func.unnest(*arrays).table_valued(*names).render_derived(name="d")


@functools.lru_cache(maxsize=64)
def _unnest_update(key: Column[Any], names: tuple[str, ...]) -> Update:
    """PostgreSQL: ``update_rows`` in one statement (``unnested``)."""
    rows = unnested({n: key.table.c[n] for n in names})
    values = {n: rows.c[n] for n in names if n != key.name}
    return update(key.table).where(key == rows.c[key.name]).values(values)


def columns_of(rows: Rows) -> dict[str, list[Any]]:
    """The parameters of ``_unnest_insert`` and ``unnested``: each column's values, in
    row order."""
    return {f"u_{n}": [row[n] for row in rows] for n in rows[0]}


@functools.lru_cache(maxsize=64)
def _select_sql(
    table: str, columns: tuple[str, ...], equal: tuple[str, ...], within: str, count: int
) -> str:
    conditions = [f"{name} = ?" for name in equal]
    conditions.append(f"{within} IN ({', '.join('?' * count)})")
    where = " AND ".join(conditions)
    return f"SELECT {', '.join(columns)} FROM {table} WHERE {where}"  # noqa: S608 (our own names)


async def select_in(
    conn: AsyncConnection,
    columns: Sequence[Column[Any]],
    within: Column[Any],
    values: Sequence[Any],
    equal: Sequence[tuple[Column[Any], Any]] = (),
) -> Sequence[Sequence[Any]]:
    """``SELECT columns FROM within's table WHERE within IN values`` (and each of
    ``equal``'s columns equal to its value): the rows, as tuples in ``columns``'s order.
    Keep ``values`` under SQLite's limit on bound parameters (rows.chunks)."""
    if conn.dialect.name == "postgresql":
        found = _select_any(tuple(columns), within, tuple(c for c, _ in equal))
        params = {f"eq_{c.name}": v for c, v in equal} | {"among": list(values)}
        return cast(Sequence[Sequence[Any]], (await conn.execute(found, params)).all())
    if not _direct(conn):
        where = [column == value for column, value in equal]
        stmt = select(*columns).where(*where, within.in_(values))
        return (await conn.execute(stmt)).all()
    sql = _select_sql(
        within.table.name,
        tuple(c.name for c in columns),
        tuple(c.name for c, _ in equal),
        within.name,
        len(values),
    )
    (rows,) = await _on_thread(conn, [(sql, (*(v for _, v in equal), *values), False)])
    return [tuple(r) for r in rows]


@functools.lru_cache(maxsize=64)
def _select_any(
    columns: tuple[Column[Any], ...], within: Column[Any], equal: tuple[Column[Any], ...]
) -> Select[Any]:
    """PostgreSQL: ``select_in`` as one statement built once (``within = ANY(:among)``,
    each of ``equal`` bound by name): built anew for every call, with its cache key
    worked out again, it was ~3 % of a SendMessage's event loop."""
    where = [column == bindparam(f"eq_{column.name}") for column in equal]
    return select(*columns).where(*where, among(within, "among"))


@functools.lru_cache(maxsize=64)
def _update_sql(table: str, key: str, columns: tuple[str, ...]) -> str:
    assignments = ", ".join(f"{c} = :{c}" for c in columns if c != key)
    return f"UPDATE {table} SET {assignments} WHERE {key} = :{key}"  # noqa: S608 (our own names)


async def update_rows(
    conn: AsyncConnection, key: Column[Any], rows: Sequence[Mapping[str, Any]]
) -> None:
    """``UPDATE key's table SET ... WHERE key = row[key]`` for each of ``rows`` (each
    with the same keys, ``key``'s name among them; values SQLite takes as they are; no
    key twice). PostgreSQL: one statement for them all (``unnested``)."""
    if not rows:
        return
    table, columns = key.table, tuple(rows[0])
    if conn.dialect.name == "postgresql":
        await conn.execute(_unnest_update(key, columns), columns_of(rows))
        return
    if not _direct(conn):
        values: dict[str, Any] = {c: bindparam(f"p_{c}") for c in columns if c != key.name}
        stmt = update(table).where(key == bindparam(f"p_{key.name}")).values(values)
        await conn.execute(stmt, [{f"p_{c}": row[c] for c in columns} for row in rows])
        return
    sql = _update_sql(table.name, key.name, columns)
    await _on_thread(conn, [(sql, rows, True)])


# Statements built with SQLAlchemy (one text for both backends), compiled once for
# SQLite with named parameters: each row's keys, or the expanded IN lists.
_NAMED = sqlite.dialect(paramstyle="named")


@functools.lru_cache(maxsize=64)
def _compiled(stmt: ClauseElement, keys: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    """``stmt``'s SQL for SQLite and its fixed parameters (the values it was built with).
    ``keys``: an INSERT's columns (those of its rows)."""
    compiled = cast(SQLCompiler, stmt.compile(dialect=_NAMED, column_keys=list(keys) or None))
    fixed = {k: v for k, v in compiled.params.items() if not compiled.binds[k].required}
    return compiled.string, fixed


@functools.lru_cache(maxsize=256)
def _expanded(sql: str, lengths: tuple[tuple[str, int], ...]) -> str:
    """``sql`` with each expanding parameter (``IN :name``) as that many parameters."""
    for name, count in lengths:
        names = ", ".join(f":{name}__{i}" for i in range(count))
        sql = sql.replace(f"__[POSTCOMPILE_{name}]", names)
    return sql


async def fetch_dicts(
    conn: AsyncConnection, stmt: Select[Any] | TextualSelect | Update, params: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The rows of ``stmt`` (a SELECT, or an UPDATE ... RETURNING; lists in ``params``
    fill its expanding IN parameters), each as a dict of its columns."""
    if not _direct(conn):
        return [dict(row) for row in (await conn.execute(stmt, params)).mappings()]
    sql, fixed = _compiled(stmt, ())
    values = fixed | dict(params)
    lists = {k: values.pop(k) for k, v in list(values.items()) if isinstance(v, list | tuple)}
    sql = _expanded(sql, tuple((k, len(v)) for k, v in lists.items()))
    for name, items in lists.items():
        values |= {f"{name}__{i}": v for i, v in enumerate(items)}
    (rows,) = await _on_thread(conn, [(sql, values, False)])
    columns = [str(name) for name in stmt.exported_columns.keys()]  # noqa: SIM118 (a collection)
    return [dict(zip(columns, row, strict=True)) for row in rows]


async def execute_many(
    conn: AsyncConnection, stmt: Insert | Update, rows: Sequence[Mapping[str, Any]]
) -> None:
    """``stmt`` (an INSERT, or an UPDATE of bound parameters) once per row of ``rows``
    (each with the same keys)."""
    if not rows:
        return
    if not _direct(conn):
        await conn.execute(stmt, list(rows))
        return
    sql, fixed = _compiled(stmt, tuple(rows[0]) if isinstance(stmt, Insert) else ())
    await _on_thread(conn, [(sql, [fixed | dict(row) for row in rows], True)])
