"""Sender profiles on the real path (issue 16): the server, its dispatcher and the Twilio
emulator over HTTP, on a SQLite file and on PostgreSQL (where each sender's limit is
shared through its own send_slots row). Each message reaches the emulator with its
sender's From (or messaging service), and two senders' limits are independent and each
exact. The typed client passes a sender through."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from notifier.emulator import DEV_FROM
from notifier.emulator.server import EmulatorServer
from notifier_client import NotifierClient
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.databases import TestDb
from tests.support.engine import Engine, engine_settings, start_engine

pytestmark = pytest.mark.backends("sqlite", "postgresql")

MG = "MG" + "1" * 32
BRAND = "whatsapp:+14155550111"
SMS = "+14155550122"
SENDERS = {
    "brand": {"whatsapp_from": BRAND, "rate_per_second": 5},
    "sms": {"sms_from": SMS},
    "svc": {"messaging_service_sid": MG},
}


@pytest.fixture
async def profiled(database: TestDb, emulator: EmulatorServer) -> AsyncIterator[Engine]:
    settings = engine_settings(
        database,
        emulator,
        NOTIFIER_SENDERS=json.dumps(SENDERS),
        NOTIFIER_RATE_LIMIT_PER_SECOND=10,
    )
    server, channel = await start_engine(settings)
    yield Engine(server, channel)
    await channel.close()
    await server.stop(grace=1)


def _received(emulator: EmulatorServer, body: str) -> tuple[str | None, str | None]:
    (request,) = [r for r in emulator.state.requests if r.param("Body") == body]
    return request.param("From"), request.param("MessagingServiceSid")


async def test_each_message_goes_out_from_its_senders_from(
    profiled: Engine, emulator: EmulatorServer
) -> None:
    cases = [
        ("", pb.CHANNEL_WHATSAPP, (DEV_FROM, None)),
        ("default", pb.CHANNEL_SMS, (DEV_FROM.removeprefix("whatsapp:"), None)),
        ("brand", pb.CHANNEL_WHATSAPP, (BRAND, None)),
        ("sms", pb.CHANNEL_SMS, (SMS, None)),
        ("svc", pb.CHANNEL_WHATSAPP, (None, MG)),
    ]
    ids = [
        await profiled.send(body=f"via {i}", sender=sender, channel=channel)
        for i, (sender, channel, _) in enumerate(cases)
    ]
    for mid in ids:  # QUEUED, or ACCEPTED through a messaging service
        await profiled.until(mid, lambda s: s.message.twilio_sid != "")
    for i, (sender, _, expected) in enumerate(cases):
        assert _received(emulator, f"via {i}") == expected, sender
        assert (await profiled.status(ids[i])).message.sender == (sender or "default")


# The limiter keeps sends N apart at least a second and a few ms apart (grant_rule.py);
# between a send and its arrival at the emulator, a loaded machine adds delays of its
# own that no limiter controls, and the emulator stamps arrivals on the server's own
# event loop, so a stall stamps the requests it held up together (over 55 ms made a
# 0.95 s window fail in test_delivery_timing on a slow host). Windows this much shorter
# than a second leave those out and still catch any limit that is not kept: a burst, or
# a rate 20% too high (6 sends at 6/s, 11 at 12/s, span 0.83 s).
_ARRIVAL_JITTER = 0.1


def _worst_window(times: list[float]) -> int:
    """The most arrivals in any window of one second (less the arrival jitter)."""
    span = 1.0 - _ARRIVAL_JITTER
    return max(sum(1 for t in times if start <= t < start + span) for start in times)


async def test_two_senders_rate_limits_are_independent_and_exact(
    profiled: Engine, emulator: EmulatorServer
) -> None:
    brand = [profiled.send(body=f"b{i}", sender="brand") for i in range(10)]
    default = [profiled.send(body=f"d{i}") for i in range(20)]
    ids = await asyncio.gather(*brand, *default)
    for mid in ids:
        await profiled.until_status(mid, pb.MESSAGE_STATUS_QUEUED, within=30)
    by_from: dict[str | None, list[float]] = {}
    bodies: dict[str | None, set[str | None]] = {}
    for request in emulator.state.requests:
        by_from.setdefault(request.param("From"), []).append(request.monotonic)
        bodies.setdefault(request.param("From"), set()).add(request.param("Body"))
    brand_times, default_times = sorted(by_from[BRAND]), sorted(by_from[DEV_FROM])
    # Every message from its own sender (a send retried after a timeout on a loaded
    # machine arrives twice, and counts against the limit like any other).
    assert (len(bodies[BRAND]), len(bodies[DEV_FROM])) == (10, 20)
    # Each exact: never more than its own rate in any one-second window...
    assert _worst_window(brand_times) <= 5
    assert _worst_window(default_times) <= 10
    assert brand_times[-1] - brand_times[0] >= 1.0  # 10 at 5/s cannot take less
    assert default_times[-1] - default_times[0] >= 1.0  # 20 at 10/s neither
    # ...and independent: together they went faster than either limit alone allows.
    assert _worst_window(sorted(brand_times + default_times)) > 10


async def test_the_client_passes_a_sender(profiled: Engine, emulator: EmulatorServer) -> None:
    async with NotifierClient(f"127.0.0.1:{profiled.server.port}") as client:
        reply = await client.send("+14155550100", "from the client", sender="brand")
        await profiled.until_status(reply.message_id, pb.MESSAGE_STATUS_QUEUED)
        listed = await client.list(pb.MessageFilter(sender="brand"))
        metrics = await client.metrics(sender="brand")
    assert _received(emulator, "from the client") == (BRAND, None)
    assert [m.message_id for m in listed.messages] == [reply.message_id]
    assert metrics.total == 1


async def test_a_slow_senders_backlog_leaves_the_others_their_slots(
    database: TestDb, emulator: EmulatorServer
) -> None:
    """Six send slots; a sender limited to one send in two seconds, with eight messages
    waiting, may hold two of them (its share), so the default sender's three messages,
    stored after them, find free slots and go out before the slow sender's second send
    instead of queueing behind its backlog (which would hold all six slots)."""
    slow = {"slow": {"whatsapp_from": BRAND, "rate_per_second": 0.5}}
    settings = engine_settings(
        database,
        emulator,
        NOTIFIER_SENDERS=json.dumps(slow),
        NOTIFIER_DISPATCH_CONCURRENCY=6,
        NOTIFIER_DISPATCHER_ENABLED=False,
    )
    idle, channel = await start_engine(settings)  # store everything first, then send
    engine = Engine(idle, channel)
    for i in range(8):
        await engine.send(body=f"slow {i}", sender="slow")
    quick = [await engine.send(body=f"quick {i}") for i in range(3)]
    await channel.close()
    await idle.stop(grace=1)
    server, channel = await start_engine(settings.model_copy(update={"dispatcher_enabled": True}))
    try:
        engine = Engine(server, channel)
        for mid in quick:
            await engine.until_status(mid, pb.MESSAGE_STATUS_QUEUED)
        await engine.until(quick[0], lambda _: _count(emulator, "slow") >= 2)
    finally:
        await channel.close()
        await server.stop(grace=1)
    order = [r.param("Body") or "" for r in emulator.state.requests]
    second_slow = [i for i, body in enumerate(order) if body.startswith("slow")][1]
    assert all(order.index(f"quick {i}") < second_slow for i in range(3)), order


def _count(emulator: EmulatorServer, prefix: str) -> int:
    return sum(1 for r in emulator.state.requests if (r.param("Body") or "").startswith(prefix))
