"""GetMetrics over 1,000,000 messages spread over 30 days (issue 15).

Seeds a SQLite file straight through SQL (the statuses, first-reached times, error codes,
tags and attempts a month of traffic leaves; migration 0011's triggers fire on it), rebuilds
the rollups from the rows (storage/rollups.py's ``rebuild``, which also empties the journal
the triggers filled), and times the repository's GetMetrics for the last 1, 7 and 30 days.
Run it with ``python -m bench.metrics_scale [DB [N]] [--recreate]``; run it again over
the same file with another checkout's ``server/`` first on PYTHONPATH to time that
version's GetMetrics (the seed is kept when DB exists, and the rollups are rebuilt only
where the code has them; ``BENCH_RUNS`` sets the reads per window).
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

from notifier.domain.metrics import MetricsQuery
from notifier.storage.engine import create_database
from notifier.storage.migrate import upgrade
from notifier.storage.repository import Repository

DAY_MS = 24 * 3600 * 1000
N = 1_000_000
# i % 100 -> what became of message i: most delivered or read, some failed.
SEED = """
WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < :n - 1)
INSERT INTO messages (id, caller, channel, to_addr, body, status, error_code, attempts,
    next_attempt_at, priority, created_at, updated_at, sent_at, delivered_at, read_at)
SELECT printf('%026d', i), '', CASE WHEN i % 10 = 0 THEN 'sms' ELSE 'whatsapp' END,
    '+1415555' || printf('%04d', i % 10000), 'hello ' || i,
    CASE WHEN i % 100 < 70 THEN 'delivered' WHEN i % 100 < 85 THEN 'read'
         WHEN i % 100 < 92 THEN 'failed' WHEN i % 100 < 96 THEN 'undelivered'
         WHEN i % 100 < 98 THEN 'sent' WHEN i % 100 < 99 THEN 'canceled' ELSE 'pending' END,
    CASE WHEN i % 100 BETWEEN 85 AND 88 THEN 63016 WHEN i % 100 BETWEEN 89 AND 91 THEN 21211
         WHEN i % 100 BETWEEN 92 AND 95 THEN 30003 END,
    1, c, 0, c, c + 5000,
    CASE WHEN i % 100 < 98 AND i % 100 NOT BETWEEN 85 AND 91 THEN c + 1000 END,
    CASE WHEN i % 100 < 85 THEN c + 1000 + (i * 7919) % 20000 END,
    CASE WHEN i % 100 BETWEEN 70 AND 84 THEN c + 30000 END
FROM (SELECT i, :now - 1 - i * (30 * 86400000 / :n) AS c FROM s)
"""
TAGS = """
INSERT INTO message_tags (message_id, tag)
SELECT id, 'promo' FROM messages WHERE CAST(id AS INTEGER) % 4 = 0
UNION ALL SELECT id, 'orders' FROM messages WHERE CAST(id AS INTEGER) % 7 = 0
"""
ATTEMPTS = """
INSERT INTO delivery_attempts (message_id, number, started_at, outcome)
SELECT id, 1, created_at, CASE WHEN CAST(id AS INTEGER) % 20 = 0 THEN 'transient'
    ELSE 'accepted' END FROM messages WHERE status NOT IN ('pending', 'canceled')
UNION ALL SELECT id, 2, created_at + 2000, 'accepted' FROM messages
    WHERE CAST(id AS INTEGER) % 20 = 0 AND status NOT IN ('pending', 'canceled')
"""
EVENTS = """
INSERT INTO status_events (message_id, status, source, occurred_at, applied)
SELECT id, 'pending', 'api', created_at, 1 FROM messages
UNION ALL SELECT id, status, 'callback', updated_at, 1 FROM messages WHERE status != 'pending'
"""


def seed(path: Path, n: int, now: int) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN")
        conn.execute(SEED, {"n": n, "now": now})
        for sql in (TAGS, ATTEMPTS, EVENTS):
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
