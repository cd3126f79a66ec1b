"""The delivery engine through the real path: server on a port, SQLite file or
PostgreSQL database, the Twilio emulator over HTTP, and each fault knob ending messages
in the right state. What waits on wall-clock time (scheduling, expiry, the rate limit,
the in-flight cap) is in tests/e2e/test_delivery_timing.py."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest
from google.protobuf import duration_pb2

from notifier.emulator import DEV_FROM
from notifier.emulator.faults import Faults
from notifier.emulator.server import EmulatorServer
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.databases import TestDb
from tests.support.engine import TO, Engine, engine_settings, requests_to, start_engine

if TYPE_CHECKING:
    pass

pytestmark = pytest.mark.backends("sqlite", "postgresql")


async def test_message_is_handed_to_twilio(engine: Engine, emulator: EmulatorServer) -> None:
    mid = await engine.send(body="Your table is ready", tags=["t"])
    got = await engine.until_status(mid, pb.MESSAGE_STATUS_QUEUED)
    (accepted,) = emulator.state.accepted
    assert got.message.twilio_sid == accepted.sid
    assert (accepted.to, accepted.from_, accepted.body) == (
        f"whatsapp:{TO}",
        DEV_FROM,
        "Your table is ready",
    )
    assert accepted.status_callback == f"http://127.0.0.1:9/api/v1/whatsapp/status?message_id={mid}"
    assert [(a.number, a.outcome, a.http_status) for a in got.attempts] == [(1, "accepted", 201)]
    assert got.message.attempts == 1
    assert [e.status for e in got.history] == [pb.MESSAGE_STATUS_PENDING, pb.MESSAGE_STATUS_QUEUED]
    assert got.message.timestamps.HasField("queued")
    by_sid = await engine.stub.GetDeliveryStatus(
        pb.GetDeliveryStatusRequest(twilio_sid=accepted.sid)
    )
    assert by_sid.message.message_id == mid


async def test_template_and_sms_media_reach_twilio_as_sent(
    engine: Engine, emulator: EmulatorServer
) -> None:
    sid = "HX" + "ab" * 16
    t = await engine.send(body=None, content_sid=sid, variables={"1": "Ana"})
    m = await engine.send(
        to="+447911123456", channel=pb.CHANNEL_SMS, media_urls=["https://e.com/a.png"]
    )
    await engine.until_status(t, pb.MESSAGE_STATUS_QUEUED)
    await engine.until_status(m, pb.MESSAGE_STATUS_QUEUED)
    template = next(a for a in emulator.state.accepted if a.content_sid)
    assert (template.content_sid, template.content_variables) == (sid, '{"1": "Ana"}')
    media = next(a for a in emulator.state.accepted if a.media_urls)
    assert (media.to, media.from_, media.media_urls) == (
        "+447911123456",
        DEV_FROM.removeprefix("whatsapp:"),
        ["https://e.com/a.png"],
    )


async def test_wait_for_acceptance_replies_with_the_sid(
    engine: Engine, emulator: EmulatorServer
) -> None:
    reply = await engine.stub.SendMessage(
        pb.SendMessageRequest(to=TO, body="wait", wait_for_acceptance=True), timeout=10
    )
    assert reply.status == pb.MESSAGE_STATUS_QUEUED
    assert reply.twilio_sid == emulator.state.accepted[0].sid


async def test_permanent_error_is_tried_once(engine: Engine, emulator: EmulatorServer) -> None:
    emulator.faults = Faults(to_errors={TO: 21211})
    mid = await engine.send(body="perm")
    got = await engine.until_status(mid, pb.MESSAGE_STATUS_FAILED)
    assert requests_to(emulator, "perm") == 1
    assert (got.message.error_code, got.message.attempts) == (21211, 1)
    assert got.message.error_message == "Invalid 'To' phone number"
    assert [(a.outcome, a.http_status, a.error_code) for a in got.attempts] == [
        ("permanent", 400, 21211)
    ]
    assert got.message.timestamps.HasField("failed")


async def test_transient_errors_retry_up_to_max_attempts(
    engine: Engine, emulator: EmulatorServer
) -> None:
    emulator.faults = Faults(error_rates={20503: 1.0})
    mid = await engine.send(body="flaky")
    got = await engine.until_status(mid, pb.MESSAGE_STATUS_FAILED)
    assert requests_to(emulator, "flaky") == 3  # NOTIFIER_RETRY_MAX_ATTEMPTS
    assert [a.outcome for a in got.attempts] == ["transient"] * 3
    assert got.message.error_code == 20503


# Attempts come 0-200 ms apart (full jitter): with the default 3, all can meet the fault
# before the test clears it. 20 leave seconds for that, and the assertions are the same.
@pytest.mark.parametrize("engine_env", [{"NOTIFIER_RETRY_MAX_ATTEMPTS": 20}])
async def test_transient_error_then_success(engine: Engine, emulator: EmulatorServer) -> None:
    emulator.faults = Faults(error_rates={30500: 1.0})
    mid = await engine.send(body="recovers")
    await engine.until(mid, lambda s: len(s.attempts) >= 1)
    emulator.faults = Faults()
    got = await engine.until_status(mid, pb.MESSAGE_STATUS_QUEUED)
    assert [a.outcome for a in got.attempts][-1] == "accepted"
    assert got.message.error_code == 0


async def test_429_waits_for_retry_after(engine: Engine, emulator: EmulatorServer) -> None:
    emulator.faults = Faults(rate_limit_burst=1, retry_after_seconds=0.6)
    mid = await engine.send(body="throttled")
    got = await engine.until_status(mid, pb.MESSAGE_STATUS_QUEUED)
    first, second = got.attempts
    assert (first.outcome, first.http_status, first.error_code) == ("rate_limited", 429, 20429)
    waited = second.started_at.ToMilliseconds() - first.finished_at.ToMilliseconds()
    assert waited >= 600  # the policy alone would wait at most 50 ms
    assert requests_to(emulator, "throttled") == 2


@pytest.mark.parametrize("engine_env", [{"NOTIFIER_AMBIGUOUS_POLICY": "fail"}])
async def test_hang_times_out_and_at_most_once_fails(
    engine: Engine, emulator: EmulatorServer
) -> None:
    emulator.faults = Faults(hang_fraction=1.0)
    mid = await engine.send(body="hung")
    got = await engine.until_status(mid, pb.MESSAGE_STATUS_FAILED)
    (attempt,) = got.attempts
    assert attempt.outcome == "ambiguous"
    elapsed = attempt.finished_at.ToMilliseconds() - attempt.started_at.ToMilliseconds()
    assert 450 <= elapsed < 2000  # NOTIFIER_TWILIO_TIMEOUT_SECONDS=0.5
    assert "no answer from Twilio" in got.message.error_message


# Attempts come 0-200 ms apart (full jitter): with the default 3, all can meet the fault
# before the test clears it. 20 leave seconds for that, and the assertions are the same.
@pytest.mark.parametrize("engine_env", [{"NOTIFIER_RETRY_MAX_ATTEMPTS": 20}])
async def test_ambiguous_500_is_retried_at_least_once(
    engine: Engine, emulator: EmulatorServer
) -> None:
    emulator.faults = Faults(error_rates={20500: 1.0}, record_on_error=True)
    mid = await engine.send(body="twice")
    await engine.until(mid, lambda s: len(s.attempts) >= 1)
    emulator.faults = Faults()
    got = await engine.until_status(mid, pb.MESSAGE_STATUS_QUEUED)
    assert got.attempts[0].outcome == "ambiguous"
    # Twilio took it the first time as well: the price of at-least-once.
    assert sum(1 for a in emulator.state.accepted if a.body == "twice") >= 2


@pytest.mark.parametrize(
    "engine_env",
    [
        {
            "NOTIFIER_RETRY_BASE_SECONDS": 2,
            "NOTIFIER_RETRY_CAP_SECONDS": 60,
            "NOTIFIER_RETRY_MAX_ATTEMPTS": 8,
        }
    ],
)
async def test_expiry_before_the_next_attempt(engine: Engine, emulator: EmulatorServer) -> None:
    emulator.faults = Faults(error_rates={20503: 1.0})
    mid = await engine.send(body="late", validity=duration_pb2.Duration(seconds=1))
    got = await engine.until_status(mid, pb.MESSAGE_STATUS_EXPIRED)
    last = max(a.started_at.ToMilliseconds() for a in got.attempts)
    assert last < got.message.expires_at.ToMilliseconds()
    assert got.message.error_code == 20503
    assert got.message.timestamps.HasField("expired")


async def test_retry_failed_messages_by_id_and_filter(
    engine: Engine, emulator: EmulatorServer
) -> None:
    emulator.faults = Faults(to_errors={TO: 21612})
    a = await engine.send(body="a", tags=["r"])
    b = await engine.send(body="b", tags=["r"])
    for mid in (a, b):
        await engine.until_status(mid, pb.MESSAGE_STATUS_FAILED)
    emulator.faults = Faults()
    by_id = await engine.stub.RetryMessages(pb.RetryMessagesRequest(message_ids=[a]))
    assert list(by_id.message_ids) == [a]
    await engine.until_status(a, pb.MESSAGE_STATUS_QUEUED)
    by_filter = await engine.stub.RetryMessages(
        pb.RetryMessagesRequest(filter=pb.MessageFilter(tag="r"))
    )
    assert list(by_filter.message_ids) == [b]
    got = await engine.until_status(b, pb.MESSAGE_STATUS_QUEUED)
    assert [x.outcome for x in got.attempts] == ["permanent", "accepted"]
    assert [e.source for e in got.history] == ["api", "dispatcher", "operator", "dispatcher"]


async def test_graceful_stop_finishes_in_flight_sends(
    database: TestDb, emulator: EmulatorServer
) -> None:
    emulator.faults = Faults(latency_seconds=0.4)
    server, chan = await start_engine(
        engine_settings(database, emulator, NOTIFIER_TWILIO_TIMEOUT_SECONDS=2)
    )
    eng = Engine(server, chan)
    ids = [await eng.send(body=f"g{i}") for i in range(5)]
    # Each is in flight once it reaches the emulator, which holds it 0.4 s.
    await emulator.state.wait_for(lambda s: len(s.requests) == 5)
    await server.stop(grace=3)
    await chan.close()
    server, chan = await start_engine(
        engine_settings(database, emulator, NOTIFIER_DISPATCHER_ENABLED=False)
    )
    try:
        eng = Engine(server, chan)
        for mid in ids:
            assert (await eng.status(mid)).message.status == pb.MESSAGE_STATUS_QUEUED
    finally:
        await chan.close()
        await server.stop(grace=1)


async def test_stop_after_grace_releases_unfinished_sends(
    database: TestDb, emulator: EmulatorServer
) -> None:
    emulator.faults = Faults(latency_seconds=2.0)
    server, chan = await start_engine(engine_settings(database, emulator))
    mid = await Engine(server, chan).send(body="slow")
    await asyncio.sleep(0.3)
    await server.stop(grace=0.2)
    await chan.close()
    emulator.faults = Faults()
    # Released, not left leased for a minute: a new server sends it at once.
    server, chan = await start_engine(engine_settings(database, emulator))
    try:
        got = await Engine(server, chan).until_status(mid, pb.MESSAGE_STATUS_QUEUED, within=5)
    finally:
        await chan.close()
        await server.stop(grace=1)
    assert got.message.twilio_sid


async def test_api_key_and_messaging_service(database: TestDb) -> None:
    key, secret = "SK" + "12" * 16, "s" * 32
    async with EmulatorServer(api_key=key, api_secret=secret) as emu:
        settings = engine_settings(
            database,
            emu,
            TWILIO_AUTH_TOKEN=None,
            TWILIO_API_KEY=key,
            TWILIO_API_SECRET=secret,
            TWILIO_WHATSAPP_FROM=None,
            TWILIO_MESSAGING_SERVICE_SID="MG" + "34" * 16,
        )
        server, chan = await start_engine(settings)
        try:
            eng = Engine(server, chan)
            mid = await eng.send(body="via service", validity=duration_pb2.Duration(seconds=600))
            got = await eng.until_status(mid, pb.MESSAGE_STATUS_ACCEPTED)
        finally:
            await chan.close()
            await server.stop(grace=1)
        (accepted,) = emu.state.accepted
        assert accepted.messaging_service_sid == "MG" + "34" * 16
        assert accepted.validity_period is not None
        assert 590 <= accepted.validity_period <= 600
        assert got.message.twilio_sid == accepted.sid


async def test_call_deadline_becomes_the_expiry(database: TestDb, emulator: EmulatorServer) -> None:
    server, chan = await start_engine(
        engine_settings(database, emulator, NOTIFIER_DISPATCHER_ENABLED=False)
    )
    try:
        eng = Engine(server, chan)
        before = int(time.time() * 1000)
        reply = await eng.stub.SendMessage(
            pb.SendMessageRequest(to=TO, body="otp", expire_at_deadline=True), timeout=5
        )
        got = await eng.status(reply.message_id)
    finally:
        await chan.close()
        await server.stop(grace=1)
    expires = got.message.expires_at.ToMilliseconds()
    assert before + 4_000 < expires <= before + 5_100


@pytest.mark.parametrize("engine_env", [{"NOTIFIER_RATE_LIMIT_PER_SECOND": 1}])
async def test_validity_ending_while_waiting_for_the_rate_limit_expires_it_unsent(
    engine: Engine, emulator: EmulatorServer
) -> None:
    """One send a second: the second message's turn comes a second after the first was
    sent, past its one-second validity; it expires without reaching Twilio. (The first
    has time to spare: on a loaded machine, with PostgreSQL's shared limiter reading the
    database's clock before its first slot, it once took more than a second to go.)"""
    first = await engine.send(body="first", validity=duration_pb2.Duration(seconds=60))
    second = await engine.send(body="second", validity=duration_pb2.Duration(seconds=1))
    await engine.until_status(first, pb.MESSAGE_STATUS_QUEUED)
    got = await engine.until_status(second, pb.MESSAGE_STATUS_EXPIRED, within=10)
    assert list(got.attempts) == []
    assert [a.body for a in emulator.state.accepted] == ["first"]
