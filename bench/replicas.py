"""Three ``notifier serve grpc`` replicas on one PostgreSQL database, beside one.

Each replica is a process of its own, sending to the emulator (its own process too).
The outbox is filled once every replica listens, then one NOTIFY wakes them; the clock
stops when nothing is pending. On a 2-core machine three replicas (plus PostgreSQL and
the emulator) share two cores: the point is what a message costs, not the scaling.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from bench.backends import Backend, backend, connect
from bench.common import Child, Figure, emulator_process, scale, serve_grpc
from bench.dispatch import CONCURRENCY
from notifier.storage.engine import DUE_CHANNEL

REPLICAS = 3


async def _start(db: Backend, url: str) -> Child:
    return await serve_grpc(
        db.url,
        url,
        NOTIFIER_RATE_LIMIT_PER_SECOND=1_000_000,
        NOTIFIER_DISPATCH_CONCURRENCY=CONCURRENCY,
    )


async def _rate(db: Backend, url: str, replicas: int, total: int) -> float:
    children: list[Child] = []
    try:
        children = list(await asyncio.gather(*(_start(db, url) for _ in range(replicas))))
        await db.fill(total)
        conn = await connect(db.dsn)
        try:
            began = time.perf_counter()
            await conn.execute("SELECT pg_notify($1, '')", DUE_CHANNEL)
            # One connection of our own: the PostgreSQL server may be shared, and its
            # connection slots are scarce with three replicas' pools open.
            pending = "SELECT count(*) FROM messages WHERE status = 'pending'"
            while await conn.fetchval(pending):  # noqa: ASYNC110 - the database is what we watch
                await asyncio.sleep(0.05)
            return total / (time.perf_counter() - began)
        finally:
            await conn.close()
    finally:
        await asyncio.gather(*(c.stop() for c in children))


async def run() -> Figure:
    total = scale(10_000, 300)
    rates: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for count in (1, REPLICAS):
            async with (
                emulator_process() as url,
                backend("postgresql", Path(tmp), f"replicas{count}") as db,
            ):
                rates[count] = await _rate(db, url, count, total)
    return Figure(
        name=f"Dispatch, {REPLICAS} serve grpc replicas on one PostgreSQL database",
        value=rates[REPLICAS],
        unit="/s",
        ceiling=rates[1],
        ceiling_name="one replica, same run",
        target="-",
        met=None,
        note=f"{total:,} messages; {os.cpu_count()} cores on this machine (replicas, "
        "PostgreSQL and the emulator share them: the cost per message, not the scaling)",
    )
