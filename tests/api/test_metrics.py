"""GetMetrics through a real server on a real SQLite file.

The fixtures' server has no dispatcher (no Twilio credentials), so every message sent
here stays PENDING. Outcomes are then written straight into the SQLite file (status,
first-reached times, error codes, attempt rows), standing in for what the dispatcher
and the status callbacks record; those paths have tests of their own. Every expected
figure is worked out by hand next to its assertion, so a reader can check it.
"""

from __future__ import annotations

import asyncio
import functools
import math
import sqlite3
import time
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from notifier.domain.delivery import meaning
from notifier.domain.histogram import RELATIVE_ERROR
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.rollups import rebuild_sql
from tests.support.rpc import field_violations

if TYPE_CHECKING:
    from notifier_proto.v1.notifier_pb2_grpc import NotifierAsyncStub as Stub

HOUR_MS = 3600 * 1000
DAY_MS = 24 * HOUR_MS


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _ts(ms: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


async def _send(
    stub: Stub,
    *,
    tags: Sequence[str] = (),
    channel: pb.Channel = pb.CHANNEL_WHATSAPP,
    send_at_ms: int | None = None,
) -> str:
    reply = await stub.SendMessage(
        pb.SendMessageRequest(
            to="+14155550100",
            body="hi",
            tags=list(tags),
            channel=channel,
            send_at=_ts(send_at_ms) if send_at_ms is not None else None,
        )
    )
    return reply.message_id


def _record_sync(
    db_path: Path,
    message_id: str,
    *,
    status: str | None = None,
    sent_at: int | None = None,
    delivered_at: int | None = None,
    read_at: int | None = None,
    error_code: int | None = None,
    created_at: int | None = None,
    attempts: Sequence[str] = (),
) -> None:
    """Write what the dispatcher and callbacks would have recorded for one message."""
    # BEGIN IMMEDIATE: take the write lock up front (waiting for the server's health
    # check if need be) instead of failing on a read-to-write upgrade.
    with closing(sqlite3.connect(db_path, timeout=30, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        if status is not None:
            conn.execute(
                "UPDATE messages SET status = ?, sent_at = ?, delivered_at = ?, read_at = ?,"
                " error_code = ?, attempts = ? WHERE id = ?",
                (status, sent_at, delivered_at, read_at, error_code, len(attempts), message_id),
            )
        if created_at is not None:
            conn.execute(
                "UPDATE messages SET created_at = ?, next_attempt_at = ? WHERE id = ?",
                (created_at, created_at, message_id),
            )
        conn.executemany(
            "INSERT INTO delivery_attempts (message_id, number, started_at, finished_at, outcome)"
            " VALUES (?, ?, ?, ?, ?)",
            [(message_id, n, 1_000 * n, 1_000 * n + 10, o) for n, o in enumerate(attempts, 1)],
        )
        for sql in rebuild_sql():  # what the service's own writes keep in step
            conn.execute(sql)
        conn.execute("COMMIT")


async def _record(db_path: Path, message_id: str, **facts: Any) -> None:
    """In a thread: the server under test shares this event loop, and a blocking write
    here would wait on a transaction the blocked loop can never finish."""
    await asyncio.to_thread(functools.partial(_record_sync, db_path, message_id, **facts))


async def _metrics(stub: Stub, **kw: object) -> pb.GetMetricsResponse:
    return await stub.GetMetrics(pb.GetMetricsRequest(**kw))  # type: ignore[arg-type]


def _by_status(reply: pb.GetMetricsResponse) -> dict[int, int]:
    return {s.status: s.count for s in reply.by_status}


def _codes(reply: pb.GetMetricsResponse) -> list[tuple[int, str, int]]:
    return [(e.error_code, e.error_message, e.count) for e in reply.error_codes]


# The scenario: 20 messages created now. Names: d = delivered, r = read, f = failed,
# u = undelivered, s = sent, p = pending (due), sc = scheduled.
DELIVERY_MS = {
    "d1": 1000, "d2": 2000, "d3": 3000, "d4": 4000, "d5": 5000, "d6": 6000,
    "r1": 500, "r2": 7000, "r3": 12000, "r4": 30000,
}  # fmt: skip
ERROR_CODES = {"f1": 63016, "f2": 63016, "f3": 21211, "u1": 30003, "u2": 30003}
# Attempt outcomes per message; a message that reached Twilio has at least "accepted".
ATTEMPTS = {
    "d1": ("rate_limited", "accepted"),
    "r1": ("ambiguous", "accepted"),
    "f1": ("permanent",),
    "f2": ("transient", "transient", "permanent"),
    "f3": ("ambiguous", "permanent"),
    "p1": ("transient",),  # retried later: PENDING again, due now
}
PROMO = {"d1", "d2", "r1", "f1", "p1"}
SMS = {"d6"}
PENDING_AGE_MS = 60_000


async def _scenario(stub: Stub, db_path: Path) -> dict[str, str]:
    now = _now_ms()
    names = [*DELIVERY_MS, *ERROR_CODES, "s1", "s2", "p1", "p2"]
    ids = {
        name: await _send(
            stub,
            tags=["promo"] if name in PROMO else [],
            channel=pb.CHANNEL_SMS if name in SMS else pb.CHANNEL_WHATSAPP,
        )
        for name in names
    }
    ids["sc"] = await _send(stub, send_at_ms=now + HOUR_MS)
    sent = now - HOUR_MS  # when Twilio reported "sent" (any fixed time will do)
    for name, ms in DELIVERY_MS.items():
        read = name.startswith("r")
        await _record(
            db_path,
            ids[name],
            status="read" if read else "delivered",
            sent_at=sent,
            delivered_at=sent + ms,
            read_at=sent + ms + 100 if read else None,
            attempts=ATTEMPTS.get(name, ("accepted",)),
        )
    for name, code in ERROR_CODES.items():
        failed = name.startswith("f")
        await _record(
            db_path,
            ids[name],
            status="failed" if failed else "undelivered",
            sent_at=None if failed else sent,  # undelivered: sent, then lost on the way
            error_code=code,
            attempts=ATTEMPTS.get(name, ("accepted",)),
        )
    for name in ("s1", "s2"):
        await _record(db_path, ids[name], status="sent", sent_at=sent, attempts=("accepted",))
    await _record(db_path, ids["p1"], created_at=now - PENDING_AGE_MS, attempts=ATTEMPTS["p1"])
    await _record(db_path, ids["p2"], created_at=now - PENDING_AGE_MS + 1_000)
    return ids


async def test_metrics_of_a_known_mix(stub: Stub, db_path: Path) -> None:
    await _scenario(stub, db_path)
    reply = await _metrics(stub)  # default window: the last 24 hours, all 20 messages

    assert reply.total == 20  # 6 + 4 + 3 + 2 + 2 + 2 + 1
    assert _by_status(reply) == {
        pb.MESSAGE_STATUS_PENDING: 2,
        pb.MESSAGE_STATUS_SCHEDULED: 1,
        pb.MESSAGE_STATUS_SENT: 2,
        pb.MESSAGE_STATUS_DELIVERED: 6,
        pb.MESSAGE_STATUS_READ: 4,
        pb.MESSAGE_STATUS_FAILED: 3,
        pb.MESSAGE_STATUS_UNDELIVERED: 2,
    }
    # Only statuses with messages, in lifecycle order.
    assert [s.status for s in reply.by_status] == [
        pb.MESSAGE_STATUS_PENDING,
        pb.MESSAGE_STATUS_SCHEDULED,
        pb.MESSAGE_STATUS_SENT,
        pb.MESSAGE_STATUS_DELIVERED,
        pb.MESSAGE_STATUS_READ,
        pb.MESSAGE_STATUS_FAILED,
        pb.MESSAGE_STATUS_UNDELIVERED,
    ]
    # sent_or_later = sent 2 + delivered 6 + read 4 = 12; delivered_or_read = 6 + 4 = 10;
    # failed + undelivered = 3 + 2 = 5; known outcomes = 12 + 5 = 17.
    assert reply.delivery_rate == pytest.approx(10 / 17)
    assert reply.read_rate == pytest.approx(4 / 10)
    assert reply.failure_rate == pytest.approx(5 / 17)
    # Delivery times (ms), sorted: 500 1000 2000 3000 4000 5000 6000 7000 12000 30000.
    # Mean: 70500 / 10 = 7050. Nearest rank, N = 10: p50 is rank ceil(0.50 * 10) = 5
    # -> 4000; p95 is rank ceil(0.95 * 10) = 10 -> 30000. Each time is alone in its
    # histogram slot, so the percentiles are exact (otherwise within RELATIVE_ERROR).
    assert reply.avg_delivery_time_ms == pytest.approx(7050)
    assert reply.p50_delivery_time_ms == 4000
    assert reply.p95_delivery_time_ms == 30000
    # 30003 x2 (u1, u2), 63016 x2 (f1, f2), 21211 x1 (f3): most frequent first, ties
    # by code.
    assert _codes(reply) == [
        (30003, meaning(30003), 2),
        (63016, meaning(63016), 2),
        (21211, "Invalid 'To' phone number", 1),
    ]
    # Attempt rows: d1 2, d2-d6 5, r1 2, r2-r4 3, s 2, u 2, f1 1, f2 3, f3 2, p1 1 = 23,
    # over 18 messages (all but p2 and sc): retries = 23 - 18 = 5
    # (d1 1 + r1 1 + f2 2 + f3 1). Ambiguous: r1 and f3 = 2.
    assert reply.retries == 5
    assert reply.ambiguous_outcomes == 2
    # Now: p1 and p2 are PENDING and due; p1 is the oldest, created 60 s before the
    # scenario's "now"; sc is SCHEDULED.
    assert reply.queue_depth == 2
    assert reply.scheduled == 1
    age = reply.oldest_pending_age.ToMilliseconds()
    assert PENDING_AGE_MS <= age < PENDING_AGE_MS + 30_000  # plus the test's own run time


async def test_channel_filter(stub: Stub, db_path: Path) -> None:
    await _scenario(stub, db_path)
    sms = await _metrics(stub, channel=pb.CHANNEL_SMS)
    # Only d6: delivered in 6000 ms after one attempt; no SMS message waits.
    assert sms.total == 1
    assert _by_status(sms) == {pb.MESSAGE_STATUS_DELIVERED: 1}
    assert (sms.delivery_rate, sms.read_rate, sms.failure_rate) == (1.0, 0.0, 0.0)  # 1/1, 0/1
    assert (sms.avg_delivery_time_ms, sms.p50_delivery_time_ms, sms.p95_delivery_time_ms) == (
        6000,
        6000,
        6000,
    )
    assert (sms.retries, sms.ambiguous_outcomes, list(sms.error_codes)) == (0, 0, [])
    assert (sms.queue_depth, sms.scheduled) == (0, 0)
    assert sms.oldest_pending_age.ToMilliseconds() == 0

    whatsapp = await _metrics(stub, channel=pb.CHANNEL_WHATSAPP)
    # Everything but d6: 19 messages; delivered_or_read 9 of 16 known outcomes;
    # mean delivery time (70500 - 6000) / 9.
    assert whatsapp.total == 19
    assert whatsapp.delivery_rate == pytest.approx(9 / 16)
    assert whatsapp.avg_delivery_time_ms == pytest.approx(64500 / 9)
    assert (whatsapp.queue_depth, whatsapp.scheduled) == (2, 1)


async def test_tag_filter(stub: Stub, db_path: Path) -> None:
    await _scenario(stub, db_path)
    promo = await _metrics(stub, tag="promo")
    # Tagged: d1 (1000 ms), d2 (2000 ms), r1 (500 ms), f1 (63016), p1 (pending).
    assert promo.total == 5
    assert _by_status(promo) == {
        pb.MESSAGE_STATUS_PENDING: 1,
        pb.MESSAGE_STATUS_DELIVERED: 2,
        pb.MESSAGE_STATUS_READ: 1,
        pb.MESSAGE_STATUS_FAILED: 1,
    }
    # sent_or_later 3, delivered_or_read 3, failed 1: known outcomes 4.
    assert promo.delivery_rate == pytest.approx(3 / 4)
    assert promo.read_rate == pytest.approx(1 / 3)
    assert promo.failure_rate == pytest.approx(1 / 4)
    # Times 500 1000 2000: mean 3500 / 3; p50 rank ceil(1.5) = 2 -> 1000;
    # p95 rank ceil(2.85) = 3 -> 2000.
    assert promo.avg_delivery_time_ms == pytest.approx(3500 / 3)
    assert (promo.p50_delivery_time_ms, promo.p95_delivery_time_ms) == (1000, 2000)
    assert _codes(promo) == [(63016, meaning(63016), 1)]
    # Attempt rows d1 2 + d2 1 + r1 2 + f1 1 + p1 1 = 7 over 5 messages: 2 retries;
    # r1's ambiguous attempt is the only one.
    assert (promo.retries, promo.ambiguous_outcomes) == (2, 1)
    # The outbox figures follow the tag too: p1 waits, sc is not tagged.
    assert (promo.queue_depth, promo.scheduled) == (1, 0)
    assert (await _metrics(stub, tag="nobody")).total == 0


async def test_window_filtering(stub: Stub, db_path: Path) -> None:
    now = _now_ms()
    recent = await _send(stub)
    inside = await _send(stub)  # 23 h old: still in the default 24-hour window
    outside = await _send(stub)  # 25 h old: just out of it
    ancient = await _send(stub)  # 10 days old, still PENDING and due
    await _record(
        db_path,
        recent,
        status="delivered",
        sent_at=now,
        delivered_at=now + 800,
        attempts=("accepted",),
    )
    await _record(db_path, inside, created_at=now - 23 * HOUR_MS)
    await _record(
        db_path,
        outside,
        status="failed",
        error_code=21211,
        created_at=now - 25 * HOUR_MS,
        attempts=("ambiguous", "permanent"),
    )
    await _record(db_path, ancient, created_at=now - 10 * DAY_MS)

    default = await _metrics(stub)
    # recent and inside only; outside's failure, code and retry are not in the window.
    assert default.total == 2
    assert _by_status(default) == {pb.MESSAGE_STATUS_PENDING: 1, pb.MESSAGE_STATUS_DELIVERED: 1}
    assert (default.delivery_rate, default.failure_rate) == (1.0, 0.0)  # 1/1, 0/1
    assert default.avg_delivery_time_ms == 800
    assert (list(default.error_codes), default.retries, default.ambiguous_outcomes) == ([], 0, 0)
    # The outbox figures ignore the window: inside and ancient wait; ancient is 10 days old.
    assert default.queue_depth == 2
    assert default.oldest_pending_age.ToMilliseconds() >= 10 * DAY_MS

    # [now - 2 days, now - 1 day) holds only outside.
    earlier = await _metrics(stub, start_time=_ts(now - 2 * DAY_MS), end_time=_ts(now - DAY_MS))
    assert earlier.total == 1
    assert _by_status(earlier) == {pb.MESSAGE_STATUS_FAILED: 1}
    assert earlier.failure_rate == 1.0  # 1 / (0 + 1)
    assert _codes(earlier) == [(21211, meaning(21211), 1)]
    assert (earlier.retries, earlier.ambiguous_outcomes) == (1, 1)  # 2 rows - 1 message
    assert earlier.queue_depth == 2

    # Start inclusive, end exclusive.
    at = now - 10 * DAY_MS
    assert (await _metrics(stub, start_time=_ts(at), end_time=_ts(at + 1))).total == 1
    assert (await _metrics(stub, start_time=_ts(at - 10), end_time=_ts(at))).total == 0
    # Only end set: the 24 hours before it, [now - 26 h, now - 2 h): inside (23 h old)
    # and outside (25 h old), not recent.
    only_end = await _metrics(stub, end_time=_ts(now - 2 * HOUR_MS))
    assert _by_status(only_end) == {pb.MESSAGE_STATUS_PENDING: 1, pb.MESSAGE_STATUS_FAILED: 1}
    # Only start set: up to now.
    assert (await _metrics(stub, start_time=_ts(now - 30 * DAY_MS))).total == 4


async def test_empty_window_is_all_zeros(stub: Stub, db_path: Path) -> None:
    assert await _metrics(stub) == pb.GetMetricsResponse(oldest_pending_age=duration_pb2.Duration())
    await _scenario(stub, db_path)
    # A window with no message: no division by zero, every windowed figure 0; the
    # outbox figures still describe now.
    past = await _metrics(stub, start_time=_ts(DAY_MS), end_time=_ts(2 * DAY_MS))
    assert (past.total, list(past.by_status), list(past.error_codes)) == (0, [], [])
    assert (past.delivery_rate, past.read_rate, past.failure_rate) == (0.0, 0.0, 0.0)
    assert (
        past.avg_delivery_time_ms,
        past.p50_delivery_time_ms,
        past.p95_delivery_time_ms,
    ) == (0.0, 0.0, 0.0)
    assert (past.retries, past.ambiguous_outcomes) == (0, 0)
    assert (past.queue_depth, past.scheduled) == (2, 1)


def _nearest_rank(values: Sequence[int], pct: int) -> int:
    """The textbook nearest-rank percentile: the value at rank ceil(pct/100 * N)."""
    return sorted(values)[math.ceil(pct * len(values) / 100) - 1]


async def test_percentiles_are_nearest_rank(stub: Stub, db_path: Path) -> None:
    # 37 delivery times with repeats, in no order, plus one whose "delivered" callback
    # was recorded before its "sent" one: it counts as 0 ms, as GetDeliveryStatus says.
    times = [(i * 7919) % 9973 for i in range(1, 31)] + [4000] * 5 + [31, 9999]
    sent = _now_ms() - HOUR_MS
    for ms in times:
        mid = await _send(stub)
        await _record(db_path, mid, status="delivered", sent_at=sent, delivered_at=sent + ms)
    mid = await _send(stub)
    await _record(db_path, mid, status="delivered", sent_at=sent, delivered_at=sent - 500)
    values = [*times, 0]
    reply = await _metrics(stub)
    # N = 38: p50 is rank ceil(19.0) = 19, p95 rank ceil(36.1) = 37 (1-based).
    assert len(values) == 38
    # Percentiles come from the rollups' histogram slots (issue 15): within the error
    # bound the proto states (sqrt(1.1) - 1 < 5 %) of the exact nearest-rank value.
    assert sorted(values)[18] == _nearest_rank(values, 50) == 4000
    assert sorted(values)[36] == _nearest_rank(values, 95)
    assert reply.p50_delivery_time_ms == pytest.approx(4000, rel=RELATIVE_ERROR)
    assert reply.p95_delivery_time_ms == pytest.approx(sorted(values)[36], rel=RELATIVE_ERROR)
    assert reply.avg_delivery_time_ms == pytest.approx(sum(values) / len(values))

    # One value: every percentile is that value.
    sms = await _send(stub, channel=pb.CHANNEL_SMS)
    await _record(db_path, sms, status="read", sent_at=sent, delivered_at=sent + 1234, read_at=sent)
    one = await _metrics(stub, channel=pb.CHANNEL_SMS)
    assert (one.p50_delivery_time_ms, one.p95_delivery_time_ms) == (1234, 1234)


async def test_invalid_requests_name_their_fields(stub: Stub) -> None:
    now = _now_ms()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _metrics(stub, start_time=_ts(now), end_time=_ts(now - 1), tag="bad tag!")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(info.value)) == {"end_time", "tag"}
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _metrics(stub, start_time=_ts(now), end_time=_ts(now))  # empty: end == start
    assert set(field_violations(info.value)) == {"end_time"}
    with pytest.raises(grpc.aio.AioRpcError) as info:  # start in the future, end now
        await _metrics(stub, start_time=_ts(now + HOUR_MS))
    assert set(field_violations(info.value)) == {"end_time"}
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _metrics(stub, start_time=_ts(now - 367 * DAY_MS), end_time=_ts(now))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "366 days" in field_violations(info.value)["start_time"]
    # Exactly 366 days is allowed.
    full = await _metrics(stub, start_time=_ts(now - 366 * DAY_MS), end_time=_ts(now))
    assert full.total == 0
