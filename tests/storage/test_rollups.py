"""GetMetrics' rollups kept by the service's own writes, on both backends.

Messages go through the repository's real write paths (accept, attempt records, status
callbacks, cancel, requeue); the rollups those writes maintained must equal the ones
rebuilt from the rows, and GetMetrics over whole hours must say the same once the
message rows are gone (as after retention).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from alembic import command
from sqlalchemy import text

from notifier.domain.histogram import LOWS
from notifier.domain.metrics import Metrics, MetricsQuery
from notifier.domain.model import (
    AttemptRecord,
    Channel,
    NewMessage,
    Status,
    StatusReport,
    Transition,
)
from notifier.storage.engine import create_database
from notifier.storage.migrate import alembic_config, upgrade
from notifier.storage.repository import Repository
from notifier.storage.rollups import HOUR_MS, rebuild
from tests.support.databases import TestDb
from tests.support.watching import until

pytestmark = pytest.mark.backends("sqlite", "postgresql")

T0 = 1_800_000_000_000 // HOUR_MS * HOUR_MS  # an hour boundary
ROLLUPS = (
    "rollup_statuses",
    "rollup_statuses_daily",
    "rollup_delivery",
    "rollup_delivery_daily",
    "rollup_attempts",
)
DAY_MS = 24 * HOUR_MS


class Clock:
    def __init__(self) -> None:
        self.ms = T0 + 60_000

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
async def repo(database: TestDb) -> AsyncIterator[tuple[Repository, Clock]]:
    db = create_database(database.url)
    await upgrade(db.writer)  # SQLite files start empty; PostgreSQL's are migrated
    clock = Clock()
    yield Repository(db, clock), clock
    await db.dispose()


def _msg(i: int, tags: tuple[str, ...] = (), channel: Channel = Channel.WHATSAPP) -> NewMessage:
    return NewMessage(to=f"+1415555{i:04d}", channel=channel, body=f"b{i}", tags=tags)


async def _life(repo: Repository, clock: Clock) -> list[str]:
    """Twelve messages through every status-changing write, over two creation hours."""
    ids = []
    for i in range(12):
        tags = ("promo",) if i % 3 == 0 else ()
        channel = Channel.SMS if i == 5 else Channel.WHATSAPP
        clock.ms = T0 + 60_000 + (i // 6) * HOUR_MS  # six in each of two hours
        accepted = await repo.add_message(
            _msg(i, tags, channel), caller="", request_hash=None, key_ttl_ms=60_000
        )
        ids.append(accepted.message.id)
    clock.ms = T0 + 3 * HOUR_MS
    for n, mid in enumerate(ids[:9]):
        sid = f"SM{n:032d}"
        if n == 0:  # a retry first, and an ambiguous one
            retry = Transition(Status.PENDING, retry_at_ms=0, error_code=20500)
            await repo.record_attempt(mid, AttemptRecord(1, 2, "ambiguous", 500), retry)
        ok = AttemptRecord(1, 2, "accepted", 201, twilio_sid=sid)
        await repo.record_attempt(mid, ok, Transition(Status.QUEUED, twilio_sid=sid))
        await repo.apply_report(StatusReport(Status.SENT, sid, message_id=mid))
        clock.ms += 1_000 * (n + 1)
        if n < 6:
            await repo.apply_report(StatusReport(Status.DELIVERED, sid, message_id=mid))
        elif n < 8:
            report = StatusReport(Status.UNDELIVERED, sid, message_id=mid, error_code=30003)
            await repo.apply_report(report)
    failed = Transition(Status.FAILED, error_code=21211, error_message="bad")
    await repo.record_attempt(ids[9], AttemptRecord(1, 2, "permanent", 400), failed)
    await repo.cancel(ids[10])
    return ids


async def _tables(
    database: TestDb, tables: tuple[str, ...] = ROLLUPS
) -> dict[str, set[tuple[object, ...]]]:
    def read() -> dict[str, set[tuple[object, ...]]]:
        found = {}
        for table in tables:
            sql = f"SELECT * FROM {table}"  # noqa: S608 - our own table names
            found[table] = {tuple(r) for r in database.rows(sql)}
        return found

    return await asyncio.to_thread(read)


def _nonzero(rows: set[tuple[object, ...]], table: str) -> set[tuple[object, ...]]:
    """Rows that count something (a status change leaves its old status's row at 0)."""
    if table.startswith("rollup_statuses"):
        return {r for r in rows if r[-1] != 0}
    keys = 5  # tag, bucket, channel, owner, sender
    if table.startswith("rollup_delivery"):
        return {r for r in rows if r[keys + 1] != 0}  # after the slot: n
    return {r for r in rows if any(r[keys:])}


async def test_maintained_rollups_equal_a_rebuild(
    repo: tuple[Repository, Clock], database: TestDb
) -> None:
    await _life(*repo)
    assert await _tables(database) == {t: set() for t in ROLLUPS}  # all in the journal yet
    await _rebuilt_equal_kept(database, repo[0], batch=5)  # small: partial folds add up
    rebuilt = await _tables(database)
    assert _nonzero(rebuilt["rollup_statuses"], "rollup_statuses")  # not trivially empty


async def _metrics(repo: Repository, days: int = 0, **kw: object) -> Metrics:
    """The two hours of the scenario, or (``days``) whole days around them."""
    start, end = T0, T0 + 2 * HOUR_MS
    if days:
        start = T0 // DAY_MS * DAY_MS - DAY_MS
        end = start + days * DAY_MS
    query = MetricsQuery(start_ms=start, end_ms=end, **kw)  # type: ignore[arg-type]
    return await repo.metrics(query, now_ms=T0 + 3 * HOUR_MS)


async def test_whole_hours_survive_deleted_rows(
    repo: tuple[Repository, Clock], database: TestDb
) -> None:
    repository, clock = repo
    await _life(repository, clock)
    before = await _metrics(repository)
    promo = await _metrics(repository, tag="promo")
    # Whole days (the daily histogram) and ragged hours agree with the two hours.
    assert await _metrics(repository, days=3) == before
    assert await _metrics(repository, days=3, tag="promo") == promo
    assert before.total == 12
    assert before.by_status[Status.DELIVERED] == 6
    assert before.by_status[Status.UNDELIVERED] == 2
    assert (before.retries, before.ambiguous_outcomes) == (1, 1)
    assert [(e.code, e.count) for e in before.error_codes] == [(30003, 2), (21211, 1)]
    # Delivery times 1..6 s, each alone in its slot: exact.
    assert before.avg_delivery_time_ms == 3500
    assert (before.p50_delivery_time_ms, before.p95_delivery_time_ms) == (3000, 6000)
    assert promo.total == 4  # messages 0, 3, 6, 9
    # Per owner and sender (issue 16's filters): every message here is caller "" and
    # sender "default".
    assert await _metrics(repository, owner="") == before
    assert await _metrics(repository, sender="default") == before
    assert (await _metrics(repository, owner="someone-else")).total == 0
    assert (await _metrics(repository, days=3, sender="other")).total == 0
    # Folding the journal into the rollups changes no figure.
    while await repository.fold_rollups(7):
        pass
    assert await _metrics(repository) == before
    assert await _metrics(repository, days=3, tag="promo") == promo
    # Every message row gone (retention deletes terminal ones; this goes further): the
    # windowed figures stay, only the outbox's "now" figures follow the rows.
    await asyncio.to_thread(database.execute, "DELETE FROM messages")
    before = replace(before, queue_depth=0, oldest_pending_age_ms=0)
    assert await _metrics(repository) == before
    assert await _metrics(repository, tag="promo") == promo
    assert await _metrics(repository, days=3) == before


async def _rebuilt_equal_kept(database: TestDb, repo: Repository, batch: int = 50) -> None:
    """Fold the journal; the rollups must equal a rebuild from the rows."""
    while await repo.fold_rollups(batch):
        pass
    kept = await _tables(database)
    db = create_database(database.url)
    try:
        async with db.writer.begin() as conn:
            for stmt in rebuild():
                await conn.execute(stmt)
    finally:
        await db.dispose()
    rebuilt = await _tables(database)
    for table in ROLLUPS:
        assert _nonzero(kept[table], table) == _nonzero(rebuilt[table], table), table


AT_0010 = tuple(t for t in ROLLUPS if t != "rollup_statuses_daily")  # 0012 added it


async def test_migration_0011_builds_the_rollups_from_the_stored_rows(
    repo: tuple[Repository, Clock], database: TestDb
) -> None:
    """Rows stored before the triggers (revision 0010, rollups emptied) get the rollups
    the triggers would have kept, from the migrations' own frozen SQL (0011 the hourly
    rollups and the delivery days, 0012 the status days from the hourly rows)."""
    await _life(*repo)
    while await repo[0].fold_rollups(50):
        pass
    kept = await _tables(database)
    db = create_database(database.url)
    try:
        async with db.writer.begin() as conn:
            await conn.run_sync(lambda c: command.downgrade(alembic_config(c), "0010"))
            for table in (*AT_0010, "journal_statuses", "journal_delivery", "journal_attempts"):
                await conn.execute(text(f"DELETE FROM {table}"))  # noqa: S608 - our names
        assert await _tables(database, AT_0010) == {t: set() for t in AT_0010}
        await upgrade(db.writer)
    finally:
        await db.dispose()
    built = await _tables(database)
    for table in ROLLUPS:
        assert _nonzero(built[table], table) == _nonzero(kept[table], table), table
    assert _nonzero(built["rollup_statuses"], "rollup_statuses")  # not trivially empty


async def test_two_transactions_changing_one_message_keep_the_rollups_exact(
    repo: tuple[Repository, Clock], database: TestDb
) -> None:
    """A status callback and the reconciler's give-up change one message at once, each
    on its own connection (two replicas). On PostgreSQL the interleaving is forced: a
    third transaction holds the message's row lock; the callback queues on it first,
    then the give-up selects the message (unlocked) and queues behind. When the lock
    goes, the callback moves QUEUED -> DELIVERED, then the give-up runs on the delivered
    message. A writer that read the message's figures before taking the lock (the first
    design: the give-up read them, then updated) logged both moves from QUEUED and left
    GetMetrics counting a QUEUED no message has."""
    repository, clock = repo
    accepted = await repository.add_message(
        _msg(1), caller="", request_hash=None, key_ttl_ms=60_000
    )
    mid, sid = accepted.message.id, "SM" + "7" * 32
    ok = AttemptRecord(1, 2, "accepted", 201, twilio_sid=sid)
    await repository.record_attempt(mid, ok, Transition(Status.QUEUED, twilio_sid=sid))
    clock.ms += HOUR_MS
    other_db = create_database(database.url)
    other = Repository(other_db, clock)  # a second replica: its own connections
    delivered = StatusReport(Status.DELIVERED, sid, message_id=mid)
    try:
        if not database.is_postgresql:  # one writer at a time: no interleaving to force
            await asyncio.gather(
                repository.apply_report(delivered),
                other.give_up_reconciling(now_ms=clock.ms, give_up_ms=1),
            )
        else:
            holder = create_database(database.url)
            try:
                async with holder.writer.connect() as lock:
                    await lock.execute(text("BEGIN"))
                    await lock.execute(
                        text("SELECT id FROM messages WHERE id = :id FOR UPDATE"), {"id": mid}
                    )
                    callback = asyncio.create_task(repository.apply_report(delivered))
                    await until(lambda: _waiting_on_locks(database) == 1, within=30)
                    give_up = asyncio.create_task(
                        other.give_up_reconciling(now_ms=clock.ms, give_up_ms=1)
                    )
                    await until(lambda: _waiting_on_locks(database) == 2, within=30)
                    await lock.execute(text("COMMIT"))
                    await callback
                    await give_up  # finds the message delivered now: nothing to mark
            finally:
                await holder.dispose()
    finally:
        await other_db.dispose()
    assert database.rows("SELECT status FROM messages WHERE id = ?", mid) == [("delivered",)]
    await _rebuilt_equal_kept(database, repository)
    metrics = await repository.metrics(
        MetricsQuery(start_ms=T0, end_ms=T0 + 2 * HOUR_MS), now_ms=clock.ms
    )
    assert metrics.total == 1
    assert {s: n for s, n in metrics.by_status.items() if n} == {Status.DELIVERED: 1}


def _waiting_on_locks(database: TestDb) -> int:
    """Backends of this database waiting for a lock (PostgreSQL)."""
    rows = database.rows(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock'"
    )
    return int(rows[0][0])


async def test_the_triggers_histogram_is_the_domains(
    repo: tuple[Repository, Clock], database: TestDb
) -> None:
    """Migration 0011 froze the slot starts its triggers use; they are LOWS."""
    rows = database.rows("SELECT low, slot FROM histogram_lows ORDER BY low")
    assert [int(low) for low, _ in rows] == list(LOWS)
    assert [int(slot) for _, slot in rows] == list(range(len(LOWS)))
