"""The dispatcher's claim from a deep outbox, beside the same claim from a shallow one,
on both backends.

A claim leases the 64 due messages that go first (priority, then due time). Over an
index that could not give that order, every claim read and sorted the whole due
backlog, so a large queue slowed its own dispatch (35 ms a claim on PostgreSQL at
100,000 queued, 21 ms on SQLite; migration 0014). Each figure is the median of
``CLAIMS`` claims through the repository, each lease given back before the next.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from bench.backends import BACKENDS, LABEL, Backend, backend
from bench.common import Figure, scale
from notifier.storage.engine import create_database
from notifier.storage.repository import Repository

CLAIMS = 50
LIMIT = 64  # twice NOTIFIER_DISPATCH_CONCURRENCY's default: a claim runs ahead of sends


async def _claim_ms(db: Backend) -> float:
    database = create_database(db.url)
    repo = Repository(database)
    try:
        took: list[float] = []
        for _ in range(CLAIMS):
            began = time.perf_counter()
            batch = await repo.claim_due("bench", limit=LIMIT, lease_ms=60_000)
            took.append(time.perf_counter() - began)
            await repo.release("bench", [m.id for m in batch])
        return statistics.median(took) * 1000
    finally:
        await database.dispose()


async def _claim_at(name: str, folder: Path, queued: int) -> float:
    async with backend(name, folder, f"backlog{queued}") as db:
        await db.fill(queued)
        return await _claim_ms(db)


async def run() -> list[Figure]:
    deep, shallow = scale(200_000, 2_000), scale(2_000, 200)
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in BACKENDS:
            at_deep = await _claim_at(name, Path(tmp), deep)
            at_shallow = await _claim_at(name, Path(tmp), shallow)
            figures.append(
                Figure(
                    name=f"Claim of {LIMIT} due messages, deep outbox ({LABEL[name]}): "
                    f"{deep:,} queued",
                    value=at_deep,
                    unit="ms",
                    ceiling=at_shallow,
                    ceiling_name=f"the same claim, {shallow:,} queued",
                    target="-",
                    met=None,
                    note=f"median of {CLAIMS} claims, each lease given back before the next",
                )
            )
    return figures
