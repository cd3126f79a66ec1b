"""PostgreSQL only: what SQLite's single writer made impossible and PostgreSQL allows.

Several replicas (here: several engines, each with its own pool, as separate processes
have) write at once under READ COMMITTED; these tests race them on purpose. Also the
mapping of asyncpg's errors, LISTEN/NOTIFY wake-ups with reconnects, the status feed
across out-of-order commits, and the rate limit shared by replicas.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from notifier.dispatch.rate_limit import SharedLimiter
from notifier.domain.errors import StorageUnavailable
from notifier.domain.inbound import InboundMessage
from notifier.domain.lifecycle import Purged
from notifier.domain.model import (
    AttemptRecord,
    CallbackResult,
    Channel,
    NewMessage,
    Status,
    StatusReport,
    Transition,
)
from notifier.domain.watch import WatchSpec
from notifier.status_feed import StatusFeed
from notifier.storage.engine import (
    DUE_CHANNEL,
    EVENTS_CHANNEL,
    Database,
    create_database,
    storage_errors,
)
from notifier.storage.lifecycle import PURGE_LOCK_KEY
from notifier.storage.listener import Listener
from notifier.storage.repository import Repository
from notifier.storage.send_slots import SendSlots
from tests.support.databases import TestDb, run_async

pytestmark = [pytest.mark.backends("postgresql"), pytest.mark.postgresql]

REPLICAS = 3


@pytest.fixture
async def engines(database: TestDb) -> AsyncIterator[list[Database]]:
    """One engine per simulated replica, on the test's database."""
    dbs = [create_database(database.url) for _ in range(REPLICAS)]
    yield dbs
    for db in dbs:
        await db.dispose()


def _message(i: int = 0, key: str | None = None) -> NewMessage:
    return NewMessage(
        to="+14155550100", channel=Channel.WHATSAPP, body=f"m{i}", idempotency_key=key
    )


async def _add(repo: Repository, n: int) -> list[str]:
    results = await repo.add_messages(
        [(_message(i), None) for i in range(n)], caller="", key_ttl_ms=60_000
    )
    return [r.message.id for r in results if not isinstance(r, Exception)]


async def test_concurrent_claimers_never_share_a_message(engines: list[Database]) -> None:
    repos = [Repository(db) for db in engines]
    ids = await _add(repos[0], 600)

    async def claimer(repo: Repository, owner: str) -> list[str]:
        mine: list[str] = []
        while batch := await repo.claim_due(owner, limit=7, lease_ms=60_000):
            mine += [m.id for m in batch]
        return mine

    # Two claimers per replica, all at once.
    claims = await asyncio.gather(
        *(claimer(repos[i % REPLICAS], f"r{i}") for i in range(2 * REPLICAS))
    )
    flat = [mid for claim in claims for mid in claim]
    assert sorted(flat) == sorted(ids)  # each claimed once: SKIP LOCKED, no overlap
    assert sum(1 for c in claims if c) >= 2  # they really ran side by side


async def test_an_expired_lease_is_taken_over_once(engines: list[Database]) -> None:
    repos = [Repository(db) for db in engines]
    (mid,) = await _add(repos[0], 1)
    assert [m.id for m in await repos[0].claim_due("dead", limit=5, lease_ms=1)] == [mid]
    await asyncio.sleep(0.01)
    takes = await asyncio.gather(
        *(repo.claim_due(f"r{i}", limit=5, lease_ms=60_000) for i, repo in enumerate(repos))
    )
    assert sorted(len(t) for t in takes) == [0, 0, 1]


async def test_concurrent_callbacks_apply_once(engines: list[Database], database: TestDb) -> None:
    repos = [Repository(db) for db in engines]
    (mid,) = await _add(repos[0], 1)
    sid = "SM" + "7" * 32
    attempt = AttemptRecord(1, 2, "accepted", 201, twilio_sid=sid)
    await repos[0].record_attempt(mid, attempt, Transition(Status.QUEUED, twilio_sid=sid))
    report = StatusReport(Status.DELIVERED, sid, message_id=mid)
    results = await asyncio.gather(*(repos[i % REPLICAS].apply_report(report) for i in range(12)))
    assert sorted(r for r, _ in results).count(CallbackResult.APPLIED) == 1
    assert {r for r, _ in results} == {CallbackResult.APPLIED, CallbackResult.DUPLICATE}
    rows = await asyncio.to_thread(
        database.rows,
        "SELECT count(*) FROM status_events WHERE message_id = ? AND source = 'callback'",
        mid,
    )
    assert rows == [(1,)]


async def test_concurrent_attempt_records_get_distinct_numbers(
    engines: list[Database], database: TestDb
) -> None:
    repos = [Repository(db) for db in engines]
    (mid,) = await _add(repos[0], 1)
    retry = Transition(Status.PENDING, retry_at_ms=0, error_code=20503)
    attempt = AttemptRecord(1, 2, "transient", 503, error_code=20503)
    await asyncio.gather(
        *(repos[i % REPLICAS].record_attempt(mid, attempt, retry) for i in range(9))
    )
    numbers = await asyncio.to_thread(
        database.rows,
        "SELECT number FROM delivery_attempts WHERE message_id = ? ORDER BY number",
        mid,
    )
    assert [n for (n,) in numbers] == list(range(1, 10))
    assert await repos[0].attempts_of(mid) == (Status.PENDING, 9)


async def test_concurrent_replays_of_one_key_create_one_message(
    engines: list[Database], database: TestDb
) -> None:
    repos = [Repository(db) for db in engines]
    results = await asyncio.gather(
        *(
            repos[i % REPLICAS].add_message(
                _message(0, key="same"), caller="c", request_hash="h", key_ttl_ms=60_000
            )
            for i in range(15)
        )
    )
    assert len({r.message.id for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    assert await asyncio.to_thread(database.count, "messages") == 1


async def test_concurrent_inbound_repeats_are_stored_once(
    engines: list[Database], database: TestDb
) -> None:
    repos = [Repository(db) for db in engines]
    inbound = InboundMessage("SM" + "8" * 32, "+14155550100", "whatsapp:+1415", "whatsapp", "hi")
    stored = await asyncio.gather(
        *(repos[i % REPLICAS].record_inbound(inbound, None) for i in range(9))
    )
    assert sorted(stored) == [False] * 8 + [True]
    assert await asyncio.to_thread(database.count, "inbound_messages") == 1
    assert await asyncio.to_thread(database.count, "recipients") == 1


# -- errors ------------------------------------------------------------------------


async def test_one_replica_at_a_time_purges(engines: list[Database]) -> None:
    """While one replica's purge batch holds the purge lock, another's batch does
    nothing (it does not wait either); once it ends, the other's turn comes."""
    mine, theirs = Repository(engines[0]), Repository(engines[1])
    ids = await _add(mine, 3)
    for mid in ids:
        await mine.cancel(mid)  # ended
    later = int(time.time() * 1000) + 60_000  # every change is older than this
    async with engines[2].writer.begin() as conn:  # a third replica, mid-batch
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PURGE_LOCK_KEY})
        assert await theirs.redact_batch(later, 10) == Purged()
        assert await theirs.purge_batch(later, 10) == Purged()
    assert await theirs.redact_batch(later, 10) == Purged(redacted=3)
    assert (await theirs.purge_batch(later, 10)).messages == 3


async def test_unreachable_server_is_storage_unavailable() -> None:
    db = create_database("postgresql+asyncpg://postgres@127.0.0.1:9/nothing")
    try:
        with pytest.raises(StorageUnavailable):
            await Repository(db).ping()
    finally:
        await db.dispose()


async def test_too_many_connections_is_storage_unavailable(database: TestDb) -> None:
    role = f"{database.name}_limited"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(database.dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    await asyncio.to_thread(
        run_async, lambda: admin(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 0')
    )
    db = create_database(database.url.replace("://postgres@", f"://{role}@"))
    try:
        with pytest.raises(StorageUnavailable, match="too many connections"):
            await Repository(db).ping()
    finally:
        await db.dispose()
        await asyncio.to_thread(run_async, lambda: admin(f'DROP ROLE "{role}"'))


@pytest.mark.parametrize(
    ("errcode", "transient"),
    [
        ("serialization_failure", True),
        ("deadlock_detected", True),
        ("lock_not_available", True),
        ("admin_shutdown", True),
        ("division_by_zero", False),
    ],
)
async def test_error_classes(engines: list[Database], errcode: str, transient: bool) -> None:
    raise_it = text(f"DO $$ BEGIN RAISE EXCEPTION 'boom' USING ERRCODE = '{errcode}'; END $$")
    expected: type[Exception] = StorageUnavailable if transient else Exception
    with pytest.raises(expected) as info:
        async with storage_errors(), engines[0].writer.begin() as conn:
            await conn.execute(raise_it)
    if not transient:
        assert not isinstance(info.value, StorageUnavailable)  # a bug stays a bug


# -- LISTEN/NOTIFY ----------------------------------------------------------------


async def _until(check: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_listener_wakes_on_commit_and_survives_losing_its_connection(
    engines: list[Database], database: TestDb
) -> None:
    due: list[float] = []
    events: list[float] = []
    listener = Listener(engines[0].asyncpg_dsn())
    listener.subscribe(DUE_CHANNEL, lambda: due.append(time.monotonic()))
    listener.subscribe(EVENTS_CHANNEL, lambda: events.append(time.monotonic()))
    listener.start()
    try:
        await asyncio.wait_for(listener.wait_connected(), 5)
        await _until(lambda: len(due) == 1)  # the look-once wake-up on connecting
        sent = time.monotonic()
        await _add(Repository(engines[1]), 1)  # another "replica" stores a message
        await _until(lambda: len(due) == 2 and len(events) == 2)
        assert due[-1] - sent < 0.5  # woken at the commit, not by a poll
        # Kill the listening backend, as a PostgreSQL restart or failover would.
        killed = await asyncio.to_thread(
            database.rows,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = ? AND query LIKE 'LISTEN%'",
            database.name,
        )
        assert killed == [(True,)]
        await _until(lambda: listener.connections == 2, within=10)
        await _until(lambda: len(due) == 3)  # woken once on reconnecting
        await _add(Repository(engines[2]), 1)
        await _until(lambda: len(due) == 4)
    finally:
        await listener.close()


async def test_status_feed_sees_events_committed_out_of_id_order(
    engines: list[Database], database: TestDb
) -> None:
    repo = Repository(engines[0])
    (mid,) = await _add(repo, 1)
    feed = StatusFeed(repo, poll_seconds=0.02, gap_grace_seconds=10)
    watch = feed.watch(WatchSpec(message_ids=(mid,)))
    first = asyncio.create_task(anext(watch))
    await _until(lambda: feed.subscriber_count == 1)
    slow = await asyncpg.connect(database.dsn)
    try:
        tx = slow.transaction()
        await tx.start()
        # Takes the next event id and holds it uncommitted...
        await slow.execute(
            "INSERT INTO status_events (message_id, status, source, occurred_at, applied)"
            " VALUES ($1, 'sent', 'callback', 1, true)",
            mid,
        )
        # ...while a later id commits first.
        await repo.cancel(mid)
        change = await asyncio.wait_for(first, 5)
        assert change.event.status is Status.CANCELED
        await asyncio.sleep(0.1)  # the feed polls past the gap meanwhile
        await tx.commit()
        late = await asyncio.wait_for(anext(watch), 5)
        assert (late.event.status, late.event_id) == (Status.SENT, change.event_id - 1)
    finally:
        await slow.close()
        await watch.aclose()
        await feed.close()


# -- the shared rate limit -----------------------------------------------------------


async def test_replicas_share_one_rate_limit(engines: list[Database]) -> None:
    rate = 20
    limiters = [SharedLimiter(SendSlots(db), "whatsapp:+1", rate) for db in engines]
    stamps: list[float] = []

    async def send(limiter: SharedLimiter) -> None:
        await limiter.acquire()
        stamps.append(time.monotonic())

    await asyncio.gather(*(send(limiters[i % REPLICAS]) for i in range(3 * rate)))
    stamps.sort()
    worst = max(sum(1 for t in stamps if start <= t < start + 1.0) for start in stamps)
    assert worst <= rate  # each replica alone would have let 20 a second through
    assert stamps[-1] - stamps[0] >= (3 * rate - 1) / rate * 0.95


async def test_late_sends_delay_their_partners_and_no_window_holds_more(
    engines: list[Database],
) -> None:
    """The event loop blocked 0-12 ms at a time (a busy dispatcher): sends start late,
    and each late one delays the slot N after it, whichever replica takes that slot,
    instead of giving its own up; still no one-second window holds more than the rate."""
    rate = 40
    limiters = [SharedLimiter(SendSlots(db), "whatsapp:+2", rate) for db in engines]
    stamps: list[float] = []
    busy = True

    async def block() -> None:
        draw = random.Random(7)
        while busy:
            time.sleep(draw.uniform(0, 0.012))  # noqa: ASYNC251 - blocking the loop is the point
            await asyncio.sleep(0.002)

    async def send(limiter: SharedLimiter) -> None:
        await limiter.acquire()
        stamps.append(time.monotonic())

    blocker = asyncio.create_task(block())
    try:
        await asyncio.gather(*(send(limiters[i % REPLICAS]) for i in range(3 * rate)))
    finally:
        busy = False
        await blocker
    stamps.sort()
    worst = max(sum(1 for t in stamps if start <= t < start + 1.0) for start in stamps)
    assert worst <= rate
    assert sum(limiter.delayed_seconds for limiter in limiters) > 0  # late sends delayed some


async def test_sends_far_below_the_limit_seldom_wait_for_the_database(
    engines: list[Database],
) -> None:
    """Slots are taken for the pace sends come at, not one request per send: taking only
    the slots wanted at the moment made each send at a far-off limit wait for a round
    trip (21 ms on average on a busy PostgreSQL, holding its send slot meanwhile)."""
    slots = SendSlots(engines[0])
    takes = 0
    take = slots.take_slots

    async def counted(*args: Any) -> Any:
        nonlocal takes
        takes += 1
        return await take(*args)

    slots.take_slots = counted  # type: ignore[method-assign,assignment]
    limiter = SharedLimiter(slots, "whatsapp:+4", 100_000)
    sends = 300
    for _ in range(sends):
        await limiter.acquire()
        await asyncio.sleep(0.002)  # one send every 2 ms, one at a time
    assert takes <= sends // 4  # one request per send before


async def test_delays_owed_meanwhile_go_in_one_write(engines: list[Database]) -> None:
    """At a far-off limit every send is late for its slot (the slots of one request all
    start at once, the sends come over the next 50 ms), so each owes its partner a
    delay: written as soon as owed, that was a write per round trip; gathered for 50 ms,
    a few writes carry them all, and they still land long before their slots."""
    slots = SendSlots(engines[0])
    writes: list[int] = []
    delay = slots.delay_slots

    async def counted(sender: str, delays: Any) -> None:
        writes.append(len(delays))
        await delay(sender, delays)

    slots.delay_slots = counted  # type: ignore[method-assign]
    limiter = SharedLimiter(slots, "whatsapp:+5", 100_000)
    began = time.monotonic()
    for _ in range(300):
        await limiter.acquire()
        await asyncio.sleep(0.002)  # one send every 2 ms
    await asyncio.sleep(0.2)  # the last delays written
    assert sum(writes) >= 100, "late sends owe delays"
    assert len(writes) <= (time.monotonic() - began) / 0.05 + 1


async def test_delays_for_places_nobody_takes_do_not_pile_up(engines: list[Database]) -> None:
    """At a far-off limit nearly every send owes its partner a delay, for a place a
    second on that the grid, starting again ahead of the clock at each take, almost
    never takes. Each take drops every delay below its slots, so after 3 s what is left
    is about the last second's (a third); a take that dropped only its own slots' delays
    left 12,227 of 12,526."""
    places: set[int] = set()

    def counting(slots: SendSlots) -> SendSlots:
        write = slots.delay_slots

        async def delay_slots(sender: str, delays: Any) -> None:
            places.update(place for place, _ in delays)
            await write(sender, delays)

        slots.delay_slots = delay_slots  # type: ignore[method-assign]
        return slots

    limiters = [SharedLimiter(counting(SendSlots(db)), "whatsapp:+6", 100_000) for db in engines]
    stop = time.monotonic() + 3.0

    async def sender(limiter: SharedLimiter) -> None:
        while time.monotonic() < stop:
            await limiter.acquire()
            await asyncio.sleep(0.01)  # the request to Twilio

    await asyncio.gather(*(sender(limiter) for limiter in limiters for _ in range(16)))
    await asyncio.sleep(0.2)  # the last delays written
    async with engines[0].writer.connect() as conn:
        left = (
            await conn.execute(
                text("SELECT count(*) FROM send_slot_delays WHERE sender = 'whatsapp:+6'")
            )
        ).scalar_one()
    assert len(places) > 1000, "late sends owe delays"
    assert left < len(places) * 0.6, f"{left} of {len(places)} delays left"


async def test_a_delay_is_taken_with_its_slot_and_only_once(engines: list[Database]) -> None:
    """The replica that takes a delayed slot gets its delay and removes it; a delay
    written twice, in two writes or in one, keeps the later time; the others' slots
    come without one."""
    first, other = SendSlots(engines[0]), SendSlots(engines[1])
    span, lead = 1_000_000, 60_000_000  # a second apart (the grid stays ahead), all due
    slot, _, _, none = await first.take_slots("whatsapp:+3", span, 2, lead, 1000)
    assert slot is not None
    assert none == []
    place = slot + 3 * span  # the second of the next two
    await first.delay_slots("whatsapp:+3", [(place, place + 700), (place + span * 9, place)])
    # Twice in one write (the grant's delay, then the request's): the later kept too.
    await first.delay_slots("whatsapp:+3", [(place, place + 400), (place, place + 600)])
    got, _, _, delays = await other.take_slots("whatsapp:+3", span, 2, lead, 1000)
    assert (got, delays) == (slot + 2 * span, [(place, place + 700)])
    again, _, _, later = await first.take_slots("whatsapp:+3", span, 2, lead, 1000)
    assert (again, later) == (slot + 4 * span, [])
    *_, last = await other.take_slots("whatsapp:+3", span, 8, lead, 1000)
    assert last == [(place + span * 9, place)]


async def test_an_over_long_value_is_refused_not_cut(database: TestDb) -> None:
    """Batch inserts unnest arrays cast without the columns' lengths: a cast to
    VARCHAR(128) would cut a longer caller silently, where a plain INSERT refuses it."""
    db = create_database(database.url)
    try:
        repo = Repository(db)
        with pytest.raises(sa_exc.DBAPIError, match="too long"):
            await repo.add_messages([(_message(), None)], caller="c" * 200, key_ttl_ms=60_000)
        async with db.reader.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM messages"))).scalar_one() == 0
    finally:
        await db.dispose()
