"""The purge loop's round (notifier/purger.py) over real storage, on both backends:
it drains batch after batch until nothing old enough is left, and with redaction
``off`` it leaves bodies alone while retention still deletes."""

from __future__ import annotations

import asyncio

import pytest

from notifier.domain.lifecycle import Lifecycle, Purged
from notifier.domain.model import Channel, NewMessage
from notifier.purger import Purger
from notifier.storage.engine import Database
from notifier.storage.repository import Repository
from tests.support.databases import TestDb

pytestmark = pytest.mark.backends("sqlite", "postgresql")

T0 = 1_800_000_000_000
DAY_MS = 86_400_000


class Clock:
    def __init__(self) -> None:
        self.ms = T0

    def __call__(self) -> int:
        return self.ms


async def _ended(repo: Repository, n: int) -> list[str]:
    """``n`` canceled messages, last changed at T0."""
    ids = []
    for i in range(n):
        message = NewMessage(to=f"+1415555{i:04d}", channel=Channel.WHATSAPP, body=f"b{i}")
        accepted = await repo.add_message(message, caller="", request_hash=None, key_ttl_ms=1)
        await repo.cancel(accepted.message.id)
        ids.append(accepted.message.id)
    return ids


async def _bodies(database: TestDb) -> list[object]:
    rows = await asyncio.to_thread(database.rows, "SELECT body FROM messages ORDER BY id")
    return [r[0] for r in rows]


async def test_a_round_drains_every_batch(db: Database, database: TestDb) -> None:
    clock = Clock()
    repo = Repository(db, clock)
    await _ended(repo, 5)
    limits = Lifecycle(retention_ms=30 * DAY_MS, redact_after_ms=DAY_MS)
    purger = Purger(repo, limits, clock=clock, batch=2)  # three batches of at most two
    clock.ms = T0 + 2 * DAY_MS
    assert await purger.run_once() == Purged(redacted=5)
    assert await _bodies(database) == [None] * 5
    clock.ms = T0 + 31 * DAY_MS
    done = await purger.run_once()
    assert (done.messages, done.redacted) == (5, 0)
    assert await asyncio.to_thread(database.count, "messages") == 0


async def test_redaction_off_keeps_bodies_until_retention(db: Database, database: TestDb) -> None:
    clock = Clock()
    repo = Repository(db, clock)
    await _ended(repo, 2)
    purger = Purger(repo, Lifecycle(retention_ms=30 * DAY_MS, redact_after_ms=None), clock=clock)
    clock.ms = T0 + 29 * DAY_MS
    assert await purger.run_once() == Purged()
    assert sorted(map(str, await _bodies(database))) == ["b0", "b1"]
    clock.ms = T0 + 31 * DAY_MS
    assert (await purger.run_once()).messages == 2
