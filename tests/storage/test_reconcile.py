"""The reconciler's data on real SQLite files and PostgreSQL: news (a callback) starts a
message's fetch schedule again, a fetch planned from older news does not undo that, and
on PostgreSQL one replica at a time has the turn."""

from __future__ import annotations

import pytest

from notifier.config import Settings
from notifier.domain.model import Status, StatusReport
from notifier.domain.reconcile import Candidate, FetchState
from notifier.server import prepare_storage
from notifier.storage.engine import Database
from notifier.storage.repository import Repository
from tests.support.webhooks import SID, queued_message

pytestmark = pytest.mark.backends("sqlite", "postgresql")

T0 = 1_800_000_000_000
AFTER = 1_000  # ms


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


async def _due(repo: Repository, now: int) -> list[Candidate]:
    return await repo.reconcile_candidates(now_ms=now, after_ms=AFTER, limit=10)


async def test_a_callback_starts_the_fetch_schedule_again(db: Database) -> None:
    clock = Clock()
    repo = Repository(db, clock)
    mid = await queued_message(repo)
    assert [(c.message_id, c.fetches) for c in await _due(repo, T0 + AFTER)] == [(mid, 0)]
    # Two fetches found nothing new: the third is due 12 intervals after the news.
    await repo.record_fetches([FetchState(mid, T0, 2, T0 + 12 * AFTER)])
    assert await _due(repo, T0 + 5 * AFTER) == []
    clock.now = T0 + 6 * AFTER  # the "sent" callback comes at last
    await repo.apply_report(StatusReport(Status.SENT, SID, message_id=mid))
    # A fetch that was under way meanwhile, planned from the older news, changes nothing.
    await repo.record_fetches([FetchState(mid, T0, 3, T0 + 36 * AFTER)])
    assert await _due(repo, clock.now + AFTER - 1) == []
    (due,) = await _due(repo, clock.now + AFTER)  # one interval after the news
    assert (due.message_id, due.status, due.fetches) == (mid, Status.SENT, 0)


@pytest.mark.backends("postgresql")
async def test_one_replica_at_a_time_has_the_turn(db: Database, settings: Settings) -> None:
    other = await prepare_storage(settings)
    try:
        mine, theirs = Repository(db), Repository(other)
        async with mine.reconcile_turn() as ours:
            assert ours
            async with theirs.reconcile_turn() as also:
                assert not also
        async with theirs.reconcile_turn() as now_theirs:
            assert now_theirs
    finally:
        await other.dispose()
