"""The whole callback path on real ports, on a SQLite file and on PostgreSQL: gRPC
server -> dispatcher -> Twilio emulator -> signed status callback -> webhook sidecar."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from notifier.domain.histogram import RELATIVE_ERROR
from notifier.emulator.faults import Faults
from notifier.emulator.server import EmulatorServer
from notifier.server import create_sidecar
from notifier.storage.repository import Repository
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.databases import TestDb
from tests.support.engine import Engine, engine_settings, start_engine

pytestmark = pytest.mark.backends("sqlite", "postgresql")


async def _through_everything(
    database: TestDb, emulator: EmulatorServer
) -> tuple[pb.GetDeliveryStatusResponse, str]:
    eng, server, channel, sidecar = await _sidecar_engine(database, emulator)
    try:
        mid = await eng.send(body="full path")
        await eng.until_status(mid, pb.MESSAGE_STATUS_READ)
        await asyncio.sleep(0.3)  # let duplicated or late callbacks land too
        got = await eng.status(mid)
    finally:
        await channel.close()
        await server.stop(grace=1)
        await sidecar.stop()
    return got, mid


async def test_emulator_callbacks_through_the_sidecar_reach_read_with_every_time(
    database: TestDb, emulator: EmulatorServer
) -> None:
    got, _ = await _through_everything(database, emulator)
    stamps = got.message.timestamps
    order = [stamps.created, stamps.queued, stamps.sent, stamps.delivered, stamps.read]
    assert all(t.ToMilliseconds() > 0 for t in order)
    assert [t.ToMilliseconds() for t in order] == sorted(t.ToMilliseconds() for t in order)
    assert got.message.delivery_time_ms == (
        stamps.delivered.ToMilliseconds() - stamps.sent.ToMilliseconds()
    )
    statuses = [e.status for e in got.history]
    assert statuses[:2] == [pb.MESSAGE_STATUS_PENDING, pb.MESSAGE_STATUS_QUEUED]
    # The emulator posts the callbacks 20 ms apart: concurrent requests, which
    # PostgreSQL (unlike SQLite's single writer queue) may commit in either order; the
    # message still only moves forward, as the timestamps above show.
    assert sorted(statuses[2:]) == sorted(
        [pb.MESSAGE_STATUS_SENT, pb.MESSAGE_STATUS_DELIVERED, pb.MESSAGE_STATUS_READ]
    )
    assert got.message.status == pb.MESSAGE_STATUS_READ
    assert all(c.ok for c in emulator.state.callbacks)


async def test_duplicated_and_reordered_emulator_callbacks_still_end_read(
    database: TestDb, emulator: EmulatorServer
) -> None:
    emulator.faults = Faults(duplicate_callback_fraction=1.0, reorder_callbacks=True, seed=7)
    got, _ = await _through_everything(database, emulator)
    assert got.message.status == pb.MESSAGE_STATUS_READ
    callback_events = [e for e in got.history if e.source == "callback"]
    assert sorted(e.status for e in callback_events) == sorted(
        [pb.MESSAGE_STATUS_SENT, pb.MESSAGE_STATUS_DELIVERED, pb.MESSAGE_STATUS_READ]
    )  # each once, duplicates dropped
    assert sum(1 for c in emulator.state.callbacks if c.duplicate) >= 3


async def _sidecar_engine(
    database: TestDb, emulator: EmulatorServer
) -> tuple[Engine, Any, Any, Any]:
    settings = engine_settings(
        database, emulator, STATUS_CALLBACK_URL=None, NOTIFIER_HTTP_ADDR="127.0.0.1:0"
    )
    sidecar, settings = await create_sidecar(settings)
    await sidecar.start()
    server, channel = await start_engine(settings)
    return Engine(server, channel), server, channel, sidecar


async def test_emulator_outcomes_and_dropped_callbacks_end_in_the_right_state(
    database: TestDb, emulator: EmulatorServer
) -> None:
    emulator.faults = Faults(
        to_outcomes={"+14155550111": ("undelivered", 30003), "+14155550112": ("failed", 63016)},
    )
    eng, server, channel, sidecar = await _sidecar_engine(database, emulator)
    try:
        undelivered = await eng.send(to="+14155550111", body="u")
        failed = await eng.send(to="+14155550112", body="f")
        u = await eng.until_status(undelivered, pb.MESSAGE_STATUS_UNDELIVERED)
        f = await eng.until_status(failed, pb.MESSAGE_STATUS_FAILED)
        assert (u.message.error_code, u.message.error_message) == (
            30003,
            "Unreachable destination handset",
        )
        assert f.message.error_code == 63016
        assert "24-hour" in f.message.error_message
        emulator.faults = Faults(drop_callback_fraction=1.0)
        silent = await eng.send(body="no callbacks")
        await eng.until_status(silent, pb.MESSAGE_STATUS_QUEUED)
        await asyncio.sleep(0.5)  # every callback dropped: Twilio's first answer stands
        assert (await eng.status(silent)).message.status == pb.MESSAGE_STATUS_QUEUED
    finally:
        await channel.close()
        await server.stop(grace=1)
        await sidecar.stop()


async def test_metrics_of_a_real_mix_match_hand_computed_values(
    database: TestDb, emulator: EmulatorServer
) -> None:
    """Outcomes produced by the real path: dispatcher, emulator, signed callbacks, sidecar."""
    emulator.faults = Faults(
        to_outcomes={
            "+14155550121": ("failed", 63016),
            "+14155550122": ("failed", 63016),
            "+14155550123": ("undelivered", 30003),
        },
    )
    eng, server, channel, sidecar = await _sidecar_engine(database, emulator)
    try:
        ends: dict[str, int] = {}
        for i in range(4):  # WhatsApp, normal path: read
            ends[await eng.send(to=f"+1415555013{i}", body="r", tags=["mix"])] = 8
        for i in range(2):  # SMS has no read receipts: delivered
            mid = await eng.send(
                to=f"+1415555014{i}", body="d", channel=pb.CHANNEL_SMS, tags=["mix"]
            )
            ends[mid] = 7
        for to, status in (("+14155550121", 9), ("+14155550122", 9), ("+14155550123", 10)):
            ends[await eng.send(to=to, body="x", tags=["mix"])] = status
        for mid, status in ends.items():
            await eng.until_status(mid, status)
        got = await eng.stub.GetMetrics(pb.GetMetricsRequest(tag="mix"))
    finally:
        await channel.close()
        await server.stop(grace=1)
        await sidecar.stop()
    # By hand: 4 read, 2 delivered, 2 failed, 1 undelivered = 9.
    assert got.total == 9
    assert {c.status: c.count for c in got.by_status} == {
        pb.MESSAGE_STATUS_READ: 4,
        pb.MESSAGE_STATUS_DELIVERED: 2,
        pb.MESSAGE_STATUS_FAILED: 2,
        pb.MESSAGE_STATUS_UNDELIVERED: 1,
    }
    assert got.delivery_rate == pytest.approx(6 / 9)  # (2 + 4) / (6 + 2 + 1)
    assert got.read_rate == pytest.approx(4 / 6)
    assert got.failure_rate == pytest.approx(3 / 9)
    assert [(e.error_code, e.count) for e in got.error_codes] == [(63016, 2), (30003, 1)]
    times = sorted(
        d - s
        for s, d in database.rows(
            "SELECT sent_at, delivered_at FROM messages WHERE delivered_at IS NOT NULL"
        )
    )
    assert len(times) == 6
    assert got.avg_delivery_time_ms == pytest.approx(sum(times) / 6)
    # Percentiles come from histogram slots: within RELATIVE_ERROR (< 5 %) of the
    # nearest rank (the bound the proto states).
    p50, p95 = times[2], times[5]  # nearest rank: ceil(0.5 * 6) = 3rd, ceil(0.95 * 6) = 6th
    assert got.p50_delivery_time_ms == pytest.approx(p50, rel=RELATIVE_ERROR, abs=1)
    assert got.p95_delivery_time_ms == pytest.approx(p95, rel=RELATIVE_ERROR, abs=1)


async def test_an_opt_out_stops_messages_already_queued(
    database: TestDb, emulator: EmulatorServer
) -> None:
    from google.protobuf import timestamp_pb2

    from notifier.domain.inbound import Consent, InboundMessage

    eng, server, channel, sidecar = await _sidecar_engine(database, emulator)
    try:
        send_at = timestamp_pb2.Timestamp()
        send_at.FromMilliseconds(int(time.time() * 1000) + 800)
        mid = await eng.send(body="tomorrow's offer", send_at=send_at)
        repo = Repository(server.db)
        stop = InboundMessage("SM" + "8" * 32, "+14155550100", "whatsapp:+1", "whatsapp", "STOP")
        await repo.record_inbound(stop, Consent.OPT_OUT)
        got = await eng.until_status(mid, pb.MESSAGE_STATUS_FAILED)
    finally:
        await channel.close()
        await server.stop(grace=1)
        await sidecar.stop()
    assert got.message.error_code == 21610
    assert "opted out" in got.message.error_message
    assert not any(m.body == "tomorrow's offer" for m in emulator.state.accepted)
