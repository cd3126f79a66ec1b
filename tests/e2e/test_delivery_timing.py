"""The delivery engine on real clocks, on a SQLite file and on PostgreSQL: messages
scheduled, cancelled before their time or expired before their first attempt; the rate
limit held over one-second windows; the in-flight cap over rounds of slow answers.

Moved out of tests/api/test_delivery.py to keep ``make test-fast`` under a minute: each
waits for wall-clock time to pass (1 s to 3 s apiece)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from notifier.emulator.faults import Faults
from notifier.emulator.server import EmulatorServer
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.databases import TestDb
from tests.support.engine import Engine, engine_settings, requests_to, start_engine

pytestmark = pytest.mark.backends("sqlite", "postgresql")


async def test_expired_message_is_never_sent(database: TestDb, emulator: EmulatorServer) -> None:
    idle, chan = await start_engine(
        engine_settings(database, emulator, NOTIFIER_DISPATCHER_ENABLED=False)
    )
    mid = await Engine(idle, chan).send(body="stale", validity=duration_pb2.Duration(seconds=1))
    await chan.close()
    await idle.stop(grace=1)
    await asyncio.sleep(1.2)
    server, chan = await start_engine(engine_settings(database, emulator))
    try:
        got = await Engine(server, chan).until_status(mid, pb.MESSAGE_STATUS_EXPIRED)
    finally:
        await chan.close()
        await server.stop(grace=1)
    assert requests_to(emulator, "stale") == 0
    assert list(got.attempts) == []


async def test_scheduled_message_waits_for_send_at(
    engine: Engine, emulator: EmulatorServer
) -> None:
    send_at = timestamp_pb2.Timestamp()
    send_at.FromMilliseconds(int(time.time() * 1000) + 1200)
    mid = await engine.send(body="later", send_at=send_at)
    assert (await engine.status(mid)).message.status == pb.MESSAGE_STATUS_SCHEDULED
    got = await engine.until_status(mid, pb.MESSAGE_STATUS_QUEUED)
    assert got.attempts[0].started_at.ToMilliseconds() >= send_at.ToMilliseconds()


async def test_cancel_scheduled_is_never_sent(engine: Engine, emulator: EmulatorServer) -> None:
    send_at = timestamp_pb2.Timestamp()
    send_at.FromMilliseconds(int(time.time() * 1000) + 500)
    mid = await engine.send(body="never", send_at=send_at)
    await engine.stub.CancelMessage(pb.CancelMessageRequest(message_id=mid))
    await asyncio.sleep(1.0)
    assert (await engine.status(mid)).message.status == pb.MESSAGE_STATUS_CANCELED
    assert requests_to(emulator, "never") == 0
    queued = await engine.send(body="gone")
    await engine.until_status(queued, pb.MESSAGE_STATUS_QUEUED)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await engine.stub.CancelMessage(pb.CancelMessageRequest(message_id=queued))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("engine_env", [{"NOTIFIER_RATE_LIMIT_PER_SECOND": 20}])
async def test_no_one_second_window_exceeds_the_rate(
    engine: Engine, emulator: EmulatorServer
) -> None:
    ids = await asyncio.gather(*(engine.send(body=f"r{i}") for i in range(50)))
    for mid in ids:
        await engine.until_status(mid, pb.MESSAGE_STATUS_QUEUED)
    times = sorted(r.monotonic for r in emulator.state.requests)
    assert len(times) == 50
    # Windows of 0.9 s: the limiter keeps sends N apart a second and a few ms apart, and a
    # loaded machine adds delays between a grant and its arrival here that no limiter
    # controls. The emulator stamps arrivals on the server's own event loop, so a stall
    # stamps the requests it held up together: with 0.95 s windows a CI rehearsal on a
    # slow host saw 21 (a stall over 55 ms). A burst, or a rate 12% too high (21 sends in
    # 0.9 s), still fails; make bench measures the limit exactly, out of process.
    worst = max(sum(1 for t in times if start <= t < start + 0.9) for start in times)
    assert worst <= 20
    assert times[-1] - times[0] >= 2.0  # 50 at 20/s cannot take less


@pytest.mark.parametrize("engine_env", [{"NOTIFIER_DISPATCH_CONCURRENCY": 3}])
async def test_in_flight_cap(engine: Engine, emulator: EmulatorServer) -> None:
    emulator.faults = Faults(latency_seconds=0.3)
    ids = [await engine.send(body=f"c{i}") for i in range(9)]
    for mid in ids:
        await engine.until_status(mid, pb.MESSAGE_STATUS_QUEUED)
    arrivals = sorted(r.monotonic for r in emulator.state.requests)
    # Each request is held 0.3 s: more than 3 arriving within 0.25 s means more than 3 in flight.
    assert max(sum(1 for t in arrivals if s <= t < s + 0.25) for s in arrivals) <= 3
    assert arrivals[-1] - arrivals[0] >= 0.55  # three rounds of three
