"""WhatsApp done properly, through the real path on a SQLite file and on PostgreSQL:
gRPC server -> dispatcher -> Twilio emulator (per-number WhatsApp outcomes) -> signed
callbacks or the reconciler's fetch -> the SMS fallback sent and delivered; the number
remembered as not on WhatsApp until it writes; 63032, 63049 and 63018 retried as each
deserves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from twilio.request_validator import RequestValidator

from notifier.emulator.faults import Faults
from notifier.emulator.server import EmulatorServer
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.databases import TestDb
from tests.support.rpc import details, field_violations
from tests.support.sidecar_engine import Running, engine_with_sidecar

pytestmark = pytest.mark.backends("sqlite", "postgresql")

NOT_ON_WA = "+14155550171"
EXPERIMENT = "+14155550172"
SILENT = "+14155550173"  # not on WhatsApp, and its callbacks are lost: the fetch tells
HELD_BACK = "+14155550174"
THROTTLED = "+14155550175"
FALLBACK = pb.Fallback(sms=True, sms_body="Your code is 1234")
TEMPLATE = "HX" + "a" * 32


def _sms_to(emulator: EmulatorServer, to: str) -> list[str]:
    """Bodies of the SMS (not WhatsApp) messages Twilio took for ``to``."""
    return [m.body or "" for m in emulator.state.accepted_to(to) if not m.is_whatsapp]


async def _fell_back(running: Running, mid: str) -> pb.GetDeliveryStatusResponse:
    return await running.engine.until(
        mid,
        lambda s: s.message.fallback_status == pb.MESSAGE_STATUS_DELIVERED,
        within=30,
    )


async def test_failed_whatsapp_sends_one_linked_sms_per_message_however_learned(
    database: TestDb, emulator: EmulatorServer
) -> None:
    emulator.faults = Faults(
        whatsapp_outcomes={NOT_ON_WA: 63024, EXPERIMENT: 63032, SILENT: 63024},
        to_drop_callbacks=[SILENT],
        duplicate_callback_fraction=1.0,  # every failure reported twice
    )
    async with engine_with_sidecar(
        database, emulator, NOTIFIER_RECONCILE_AFTER="1s", NOTIFIER_RECONCILE_GIVE_UP="1h"
    ) as running:
        eng = running.engine
        template = await eng.send(
            to=NOT_ON_WA, body=None, content_sid=TEMPLATE, fallback=FALLBACK, tags=["fb"]
        )
        free = await eng.send(to=EXPERIMENT, body="Table ready", fallback=pb.Fallback(sms=True))
        fetched = await eng.send(to=SILENT, body="hi", fallback=FALLBACK, tags=["fb"])
        for mid, code in ((template, 63024), (free, 63032), (fetched, 63024)):
            got = await _fell_back(running, mid)
            assert (got.message.status, got.message.error_code) == (pb.MESSAGE_STATUS_FAILED, code)
            assert "SMS fallback eligible" in got.message.error_meaning
            sms = (await eng.status(got.message.fallback_message_id)).message
            assert (sms.channel, sms.to, sms.fallback_of) == (pb.CHANNEL_SMS, got.message.to, mid)
            assert sms.fallback_reason == f"error {code}"
            assert sms.status == pb.MESSAGE_STATUS_DELIVERED
            assert "fallback" in [e.source for e in got.history]  # its watchers heard of it
        fetched_history = [e.source for e in (await eng.status(fetched)).history]
        assert fetched_history[-2:] == ["reconcile", "fallback"]  # learned by the fetch
        await asyncio.sleep(1.0)  # duplicated and late reports land: still one SMS each
        assert _sms_to(emulator, NOT_ON_WA) == ["Your code is 1234"]
        assert _sms_to(emulator, EXPERIMENT) == ["Table ready"]  # free text reused
        assert _sms_to(emulator, SILENT) == ["Your code is 1234"]
        listed = await eng.stub.ListMessages(
            pb.ListMessagesRequest(filter=pb.MessageFilter(tag="fb"))
        )
        assert len(listed.messages) == 4  # both originals and both SMS
        metrics = await eng.stub.GetMetrics(pb.GetMetricsRequest(tag="fb"))
        assert (metrics.fallbacks, metrics.fallbacks_delivered) == (2, 2)


async def test_no_sms_without_asking_or_for_other_codes(
    database: TestDb, emulator: EmulatorServer
) -> None:
    emulator.faults = Faults(
        whatsapp_outcomes={EXPERIMENT: 63032},
        to_outcomes={NOT_ON_WA: ("failed", 63016)},
    )
    async with engine_with_sidecar(database, emulator) as running:
        eng = running.engine
        unasked = await eng.send(to=EXPERIMENT, body="hi")
        other = await eng.send(to=NOT_ON_WA, body="hi", fallback=FALLBACK)
        delivered = await eng.send(to=SILENT, body="hi", fallback=FALLBACK)
        for mid in (unasked, other):
            await eng.until_status(mid, pb.MESSAGE_STATUS_FAILED)
        await eng.until_status(delivered, pb.MESSAGE_STATUS_READ)
        await asyncio.sleep(0.5)
        for mid in (unasked, other, delivered):
            assert (await eng.status(mid)).message.fallback_message_id == ""
        assert [_sms_to(emulator, n) for n in (EXPERIMENT, NOT_ON_WA, SILENT)] == [[], [], []]
        got = await eng.status(unasked)
        assert got.message.attempts == 1  # 63032: never retried


async def _inbound(running: Running, from_number: str, body: str) -> None:
    settings = running.settings
    url = str(settings.webhook_url)
    params = {
        "MessageSid": "SM" + "9" * 32,
        "AccountSid": "AC" + "0" * 32,
        "From": f"whatsapp:{from_number}",
        "To": "whatsapp:+14155238886",
        "Body": body,
        "NumMedia": "0",
    }
    signature = RequestValidator(settings.webhook_tokens[0]).compute_signature(url, params)
    async with httpx.AsyncClient() as client:
        answer = await client.post(url, data=params, headers={"X-Twilio-Signature": signature})
    assert answer.status_code == 200


async def test_a_number_not_on_whatsapp_is_remembered_until_it_writes(
    database: TestDb, emulator: EmulatorServer
) -> None:
    emulator.faults = Faults(whatsapp_outcomes={NOT_ON_WA: 63024})
    async with engine_with_sidecar(database, emulator) as running:
        eng = running.engine
        first = await eng.send(to=NOT_ON_WA, body="hi")
        await eng.until_status(first, pb.MESSAGE_STATUS_FAILED)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await eng.send(to=NOT_ON_WA, body="again")
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        (failure,) = [
            d
            for d in details(refused.value)
            if isinstance(d, error_details_pb2.PreconditionFailure)
        ]
        assert [v.type for v in failure.violations] == ["NOT_ON_WHATSAPP"]
        straight = await eng.send(to=NOT_ON_WA, body="again", fallback=FALLBACK)
        got = await _fell_back(running, straight)
        assert got.message.status == pb.MESSAGE_STATUS_FAILED
        sms = (await eng.status(got.message.fallback_message_id)).message
        assert sms.fallback_reason == "not on WhatsApp"
        whatsapp_sends = [m for m in emulator.state.accepted_to(NOT_ON_WA) if m.is_whatsapp]
        assert len(whatsapp_sends) == 1  # only the first: WhatsApp was skipped after it
        await _inbound(running, NOT_ON_WA, "hello, I am on WhatsApp now")
        emulator.faults = Faults()
        back = await eng.send(to=NOT_ON_WA, body="welcome back")
        await eng.until_status(back, pb.MESSAGE_STATUS_READ)


async def test_63049_waits_minutes_and_63018_is_retried_not_failed(
    database: TestDb, emulator: EmulatorServer
) -> None:
    emulator.faults = Faults(
        whatsapp_outcomes={HELD_BACK: 63049, THROTTLED: 63018}, retry_after_seconds=0.05
    )
    async with engine_with_sidecar(database, emulator) as running:
        eng = running.engine
        held = await eng.send(to=HELD_BACK, body="sale", validity={"seconds": 3600})
        throttled = await eng.send(to=THROTTLED, body="hi", validity={"seconds": 3600})
        got = await eng.until(held, lambda s: s.message.attempts == 1)
        assert (got.message.status, got.message.error_code) == (pb.MESSAGE_STATUS_PENDING, 63049)
        wait_ms = got.message.next_attempt_at.ToMilliseconds() - int(time.time() * 1000)
        assert wait_ms > 120_000  # minutes, not the seconds of other retries
        assert "marketing" in got.message.error_meaning
        # More attempts than NOTIFIER_RETRY_MAX_ATTEMPTS (3): rate limited is not failed.
        t = await eng.until(throttled, lambda s: s.message.attempts >= 4)
        assert (t.message.status, t.message.error_code) == (pb.MESSAGE_STATUS_PENDING, 63018)
        emulator.faults = Faults()
        await eng.until_status(throttled, pb.MESSAGE_STATUS_READ)


async def _bulk(items: list[pb.BulkItem]) -> AsyncIterator[pb.SendBulkRequest]:
    defaults = pb.BulkContent(content_sid=TEMPLATE, fallback=FALLBACK, tags=["bulk-fb"])
    yield pb.SendBulkRequest(defaults=defaults, items=items)


async def test_bulk_items_fall_back_and_bad_fallbacks_are_refused_whole(
    database: TestDb, emulator: EmulatorServer
) -> None:
    emulator.faults = Faults(whatsapp_outcomes={NOT_ON_WA: 63024})
    async with engine_with_sidecar(database, emulator) as running:
        eng = running.engine
        items = [pb.BulkItem(correlation_id=n, to=n) for n in (NOT_ON_WA, SILENT)]
        results = [r async for reply in eng.stub.SendBulk(_bulk(items)) for r in reply.results]
        failed_id, delivered_id = (r.accepted.message_id for r in results)
        got = await _fell_back(running, failed_id)
        assert got.message.error_code == 63024
        await eng.until_status(delivered_id, pb.MESSAGE_STATUS_READ)
        assert (await eng.status(delivered_id)).message.fallback_message_id == ""
        assert _sms_to(emulator, NOT_ON_WA) == ["Your code is 1234"]
        assert _sms_to(emulator, SILENT) == []

        before = len(database.rows("SELECT id FROM messages"))
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await eng.send(
                to=EXPERIMENT,
                body=None,
                content_sid=TEMPLATE,
                channel=pb.CHANNEL_SMS,
                fallback=pb.Fallback(sms=True),
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(field_violations(bad.value)) == {"fallback.sms", "fallback.sms_body"}
        assert len(database.rows("SELECT id FROM messages")) == before  # nothing stored

        key = {"idempotency_key": "fb-1", "to": SILENT}
        first = await eng.send(**key, fallback=FALLBACK)
        assert await eng.send(**key, fallback=FALLBACK) == first  # a replay
        with pytest.raises(grpc.aio.AioRpcError) as other:
            await eng.send(**key)  # the same key without the fallback: another payload
        assert other.value.code() == grpc.StatusCode.ALREADY_EXISTS
