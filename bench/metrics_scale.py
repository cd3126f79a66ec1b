"""GetMetrics over 1,000,000 messages spread over 30 days (issue 15).

Seeds a SQLite file straight through SQL (the statuses, first-reached times, error codes,
tags and attempts a month of traffic leaves; migration 0011's triggers fire on it), rebuilds
the rollups from the rows (storage/rollups.py's ``rebuild``, which also empties the journal
the triggers filled), and times the repository's GetMetrics for the last 1, 7 and 30 days.
Run it with ``python -m bench.metrics_scale [DB [N]] [--recreate]``; run it again over
the same file with another checkout's ``server/`` first on PYTHONPATH to time that
version's GetMetrics (the seed is kept when DB exists, and the rollups are rebuilt only
where the code has them; ``BENCH_RUNS`` sets the reads per window).

In ``make bench`` (``run``) the same month is seeded on both backends (PostgreSQL: a
fresh database, the same rows through ``generate_series``) and GetMetrics is timed the
way a caller sees it: over gRPC, against a real server on that database.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

import grpc

from bench.backends import BACKENDS, LABEL, Backend, backend, connect
from bench.common import Figure, bench_settings, scale
from notifier.domain.metrics import MetricsQuery
from notifier.server import create_server
from notifier.storage.engine import create_database
from notifier.storage.migrate import upgrade
from notifier.storage.repository import Repository
from notifier_proto.v1 import notifier_pb2 as pb
from notifier_proto.v1 import notifier_pb2_grpc

DAY_MS = 24 * 3600 * 1000
N = 1_000_000
TARGET_MS = 100  # SPEC section 9
WINDOWS = ((1, None), (7, None), (30, None), (30, "promo"))
# i % 100 -> what became of message i: most delivered or read, some failed. The text is
# shared by both backends; {placeholders} hold what their dialects spell differently.
SEED = """
INSERT INTO messages (id, caller, channel, to_addr, body, status, error_code, attempts,
    next_attempt_at, priority, created_at, updated_at, sent_at, delivered_at, read_at)
SELECT {id}, '', CASE WHEN i % 10 = 0 THEN 'sms' ELSE 'whatsapp' END,
    '+1415555' || {number}, 'hello ' || i,
    CASE WHEN i % 100 < 70 THEN 'delivered' WHEN i % 100 < 85 THEN 'read'
         WHEN i % 100 < 92 THEN 'failed' WHEN i % 100 < 96 THEN 'undelivered'
         WHEN i % 100 < 98 THEN 'sent' WHEN i % 100 < 99 THEN 'canceled' ELSE 'pending' END,
    CASE WHEN i % 100 BETWEEN 85 AND 88 THEN 63016 WHEN i % 100 BETWEEN 89 AND 91 THEN 21211
         WHEN i % 100 BETWEEN 92 AND 95 THEN 30003 END,
    1, c, 0, c, c + 5000,
    CASE WHEN i % 100 < 98 AND i % 100 NOT BETWEEN 85 AND 91 THEN c + 1000 END,
    CASE WHEN i % 100 < 85 THEN c + 1000 + (i * 7919) % 20000 END,
    CASE WHEN i % 100 BETWEEN 70 AND 84 THEN c + 30000 END
FROM {rows}
"""
TAGS = """
INSERT INTO message_tags (message_id, tag)
SELECT id, 'promo' FROM messages WHERE {n} % 4 = 0
UNION ALL SELECT id, 'orders' FROM messages WHERE {n} % 7 = 0
"""
ATTEMPTS = """
INSERT INTO delivery_attempts (message_id, number, started_at, outcome)
SELECT id, 1, created_at, CASE WHEN {n} % 20 = 0 THEN 'transient'
    ELSE 'accepted' END FROM messages WHERE status NOT IN ('pending', 'canceled')
UNION ALL SELECT id, 2, created_at + 2000, 'accepted' FROM messages
    WHERE {n} % 20 = 0 AND status NOT IN ('pending', 'canceled')
"""
EVENTS = """
INSERT INTO status_events (message_id, status, source, occurred_at, applied)
SELECT id, 'pending', 'api', created_at, {true} FROM messages
UNION ALL SELECT id, status, 'callback', updated_at, {true} FROM messages
    WHERE status != 'pending'
"""
SQLITE = {
    "id": "printf('%026d', i)",
    "number": "printf('%04d', i % 10000)",
    "rows": "(WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < :n - 1)"
    " SELECT i, :now - 1 - i * (30 * 86400000 / :n) AS c FROM s)",
    "n": "CAST(id AS INTEGER)",
    "true": "1",
}
POSTGRESQL = {
    "id": "lpad(i::text, 26, '0')",
    "number": "lpad((i % 10000)::text, 4, '0')",
    "rows": "(SELECT i, $1::bigint - 1 - i * (30::bigint * 86400000 / $2::bigint) AS c"
    " FROM generate_series(0::bigint, $2::bigint - 1) AS i) AS s",
    "n": "id::bigint",
    "true": "true",
}


def _statements(dialect: dict[str, str]) -> list[str]:
    return [sql.format(**dialect) for sql in (SEED, TAGS, ATTEMPTS, EVENTS)]


async def seed_postgresql(dsn: str, n: int, now: int) -> None:
    conn = await connect(dsn)
    try:
        async with conn.transaction():
            # Row triggers off while the month is written: the rollups are rebuilt from
            # the rows afterwards (on SQLite the rebuild empties the journal they filled).
            await conn.execute("SET LOCAL session_replication_role = replica")
            first, *rest = _statements(POSTGRESQL)
            await conn.execute(first, now, n)
            for sql in rest:
                await conn.execute(sql)
        # What autovacuum does to a month of rows long before anyone reads it: without
        # it every index-only read of the backlog visits the table (133 ms, not 67 ms).
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


def seed(path: Path, n: int, now: int) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN")
        first, *rest = _statements(SQLITE)
        conn.execute(first, {"n": n, "now": now})
        for sql in rest:
            conn.execute(sql)
        conn.execute("COMMIT")


async def build_rollups(url: str, *, recreate: bool = False) -> float | None:
    """Seconds to build the rollups from the rows (what migration 0009 does);
    ``recreate``: drop and create their tables first (after a change to their keys)."""
    if importlib.util.find_spec("notifier.storage.rollups") is None:
        return None
    from notifier.storage.rollups import KINDS, rebuild

    db = create_database(url)
    began = time.perf_counter()
    async with db.writer.begin() as conn:
        if recreate:
            tables = [k.table for k in KINDS] + [k.journal for k in KINDS]
            for table in tables + [k.daily for k in KINDS if k.daily is not None]:
                await conn.run_sync(table.drop, checkfirst=True)
                await conn.run_sync(table.create)
        for stmt in rebuild():
            await conn.execute(stmt)
    await db.dispose()
    return time.perf_counter() - began


async def time_metrics(
    url: str, now: int, days: int, tag: str | None = None, runs: int = 5
) -> float:
    """Median milliseconds of ``runs`` GetMetrics reads (after one warm-up)."""
    db = create_database(url)
    repo = Repository(db)
    query = MetricsQuery(start_ms=now - days * DAY_MS, end_ms=now, tag=tag)
    times = []
    for _ in range(runs + 1):
        began = time.perf_counter()
        await repo.metrics(query, now_ms=now)
        times.append((time.perf_counter() - began) * 1000)
    await db.dispose()
    return statistics.median(times[1:])


async def _grpc_times(url: str, now: int, runs: int) -> dict[str, float]:
    """Median milliseconds of GetMetrics over gRPC (after one warm-up), per window."""
    server = await create_server(
        bench_settings(url, NOTIFIER_DISPATCHER_ENABLED=False, NOTIFIER_REDACT_AFTER="off")
    )
    await server.start()
    times: dict[str, float] = {}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = notifier_pb2_grpc.NotifierStub(channel)
            for days, tag in WINDOWS:
                request = pb.GetMetricsRequest(tag=tag or "")
                request.start_time.FromMilliseconds(now - days * DAY_MS)
                request.end_time.FromMilliseconds(now)
                took = []
                for _ in range(runs + 1):
                    began = time.perf_counter()
                    reply = await stub.GetMetrics(request)
                    took.append((time.perf_counter() - began) * 1000)
                if not reply.total:
                    raise RuntimeError(f"GetMetrics over {days} d counted no message")
                times[f"{days}d" + (f" tag {tag}" if tag else "")] = statistics.median(took[1:])
    finally:
        await server.stop(1)
    return times


async def _month(db: Backend, n: int, runs: int) -> dict[str, float]:
    now = int(time.time() * 1000)
    if db.path is not None:
        await asyncio.to_thread(seed, db.path, n, now)
    else:
        assert db.dsn is not None
        await seed_postgresql(db.dsn, n, now)
    await build_rollups(db.url)
    return await _grpc_times(db.url, now, runs)


async def run() -> list[Figure]:
    n = scale(N, 20_000)
    runs = int(os.environ.get("BENCH_RUNS", "5"))
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in BACKENDS:
            async with backend(name, Path(tmp), "metrics") as db:
                results[name] = await _month(db, n, runs)
    figures = []
    for name, times in results.items():
        others = ", ".join(f"{k} {v:.0f} ms" for k, v in times.items() if k != "30d")
        figures.append(
            Figure(
                name=f"GetMetrics over 30 days ({LABEL[name]}) of {n:,} messages, over gRPC",
                value=times["30d"],
                unit="ms",
                ceiling=None,
                ceiling_name="",
                target=f"< {TARGET_MS} ms",
                met=times["30d"] < TARGET_MS,
                note=f"median of {runs} reads; {others}",
                extra=times,
            )
        )
    return figures


async def main(path: Path, n: int, *, fresh: bool, recreate: bool, runs: int) -> None:
    url = f"sqlite+aiosqlite:///{path}"
    stamp = path.with_suffix(".now")
    if recreate:
        print(f"rollups rebuilt in {await build_rollups(url, recreate=True):.1f} s")
    if fresh:
        now = int(time.time() * 1000)
        db = create_database(url)
        await upgrade(db.writer)
        await db.dispose()
        began = time.perf_counter()
        seed(path, n, now)
        print(f"seeded {n} messages in {time.perf_counter() - began:.1f} s")
        stamp.write_text(str(now))
        built = await build_rollups(url)
        if built is not None:
            print(f"rollups built from the rows in {built:.1f} s")
    now = int(stamp.read_text())
    for days in (1, 7, 30):
        ms = await time_metrics(url, now, days, runs=runs)
        tagged = await time_metrics(url, now, days, tag="promo", runs=runs)
        print(f"GetMetrics {days:>2} d: {ms:9.1f} ms   (tag promo: {tagged:9.1f} ms)")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    target = Path(args[0] if args else Path(tempfile.gettempdir()) / "notifier-metrics.db")
    count = int(args[1]) if len(args) > 1 else N
    runs = int(os.environ.get("BENCH_RUNS", "5"))
    fresh = not target.exists()
    asyncio.run(main(target, count, fresh=fresh, recreate="--recreate" in sys.argv, runs=runs))
