"""SendMessage while retention purges 1,000,000 messages (SQLite), against at rest.

A database seeded with a month of ended messages (bench/metrics_scale.py's seed: events,
attempts and tags with them) is served twice: once with the default retention (nothing
to purge: at rest), once with ``NOTIFIER_RETENTION=1s``, so the purge starts with the
server and the same SendMessage load (64 callers, another process) runs beside it. The
purge rate is the rows it deleted (messages and the rows hanging off them) per second
while it ran.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from bench.common import Figure, bench_settings, run_load, scale
from bench.metrics_scale import seed
from notifier.server import create_server
from notifier.storage.engine import create_database
from notifier.storage.migrate import upgrade

CALLERS = 64


async def _seeded(folder: Path, n: int) -> Path:
    path = folder / "purge.db"
    db = create_database(f"sqlite+aiosqlite:///{path}")
    await upgrade(db.writer)
    await db.dispose()
    seed(path, n, int(time.time() * 1000) - 60_000)  # all of it older than a minute
    return path


async def _serve(db: Path, total: int, **env: Any) -> tuple[dict[str, Any], float, int]:
    """(SendMessage load result, purge seconds so far, rows purged so far)."""
    settings = bench_settings(db, NOTIFIER_DISPATCHER_ENABLED=False, **env)
    server = await create_server(settings)
    await server.start()
    began = time.perf_counter()
    try:
        load = await run_load("unary", f"127.0.0.1:{server.port}", str(total), str(CALLERS))
        purger = server.purger
        assert purger is not None
        # The rate is what the purge achieved while the load ran beside it.
        return load, time.perf_counter() - began, purger.total.rows
    finally:
        await server.stop(1)


def _left(db: Path) -> int:
    with closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])


async def run() -> list[Figure]:
    # BENCH_PURGE_ROWS / BENCH_PURGE_SENDS: a smaller run on a loaded machine (seeding
    # and purging 1,000,000 messages takes minutes).
    n = int(os.environ.get("BENCH_PURGE_ROWS") or scale(1_000_000, 20_000))
    total = int(os.environ.get("BENCH_PURGE_SENDS") or scale(20_000, 500))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        seeded = await _seeded(folder, n)
        copy = folder / "purging.db"
        shutil.copy(seeded, copy)
        rest, _, _ = await _serve(seeded, total, NOTIFIER_REDACT_AFTER="off")
        busy, seconds, rows = await _serve(
            copy, total, NOTIFIER_RETENTION="1s", NOTIFIER_REDACT_AFTER="off"
        )
        left = await asyncio.to_thread(_left, copy)
    rate = rows / seconds if seconds else 0.0
    return [
        Figure(
            name=f"SendMessage p99 while {n:,} messages are purged (SQLite, {CALLERS} callers)",
            value=busy["p99_ms"],
            unit="ms",
            ceiling=2 * rest["p99_ms"],
            ceiling_name="2x p99 at rest",
            target="<= 2x p99 at rest",
            met=busy["p99_ms"] <= 2 * rest["p99_ms"] and not busy["errors"],
            extra={"at_rest": rest, "purging": busy},
        ),
        Figure(
            name="Retention purge rate beside that load (rows/s)",
            value=rate,
            unit="rows/s",
            ceiling=None,
            ceiling_name="",
            target="printed",
            met=None,
            note=f"{rows:,} rows in {seconds:.1f} s; {left:,} messages left",
        ),
    ]


if __name__ == "__main__":
    for figure in asyncio.run(run()):
        print(f"{figure.name}: {figure.value:.1f} {figure.unit} {figure.note} {figure.extra}")
