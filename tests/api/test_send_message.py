"""SendMessage and GetDeliveryStatus through a real server, on SQLite and on PostgreSQL."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.databases import TestDb, count_rows
from tests.support.rpc import details, field_violations

if TYPE_CHECKING:
    from notifier_proto.v1.notifier_pb2_grpc import NotifierAsyncStub as Stub

pytestmark = pytest.mark.backends("sqlite", "postgresql")

SID = "HX" + "0123456789abcdef" * 2


async def test_accepted_message_is_stored_and_reported(stub: Stub) -> None:
    sent = await stub.SendMessage(
        pb.SendMessageRequest(to="whatsapp:+14155550100", body="Your table is ready", tags=["t1"])
    )
    assert len(sent.message_id) == 26
    assert sent.status == pb.MESSAGE_STATUS_PENDING
    assert not sent.replayed
    got = await stub.GetDeliveryStatus(pb.GetDeliveryStatusRequest(message_id=sent.message_id))
    msg = got.message
    assert (msg.message_id, msg.to, msg.channel) == (
        sent.message_id,
        "+14155550100",
        pb.CHANNEL_WHATSAPP,
    )
    assert msg.status == pb.MESSAGE_STATUS_PENDING
    assert list(msg.tags) == ["t1"]
    assert msg.timestamps.created == sent.created_at
    assert [e.status for e in got.history] == [pb.MESSAGE_STATUS_PENDING]
    assert got.history[0].source == "api"


async def test_ids_sort_by_creation_time(stub: Stub) -> None:
    ids = []
    for i in range(5):
        r = await stub.SendMessage(pb.SendMessageRequest(to="+14155550100", body=f"n{i}"))
        ids.append(r.message_id)
    assert ids == sorted(ids)
    assert len(set(ids)) == 5


async def test_scheduled_template_message(stub: Stub) -> None:
    send_at = timestamp_pb2.Timestamp()
    send_at.GetCurrentTime()
    send_at.seconds += 3600
    send_at.nanos = 0  # Notifier keeps milliseconds
    sent = await stub.SendMessage(
        pb.SendMessageRequest(
            to="+447911123456",
            content_sid=SID,
            variables={"1": "Ana"},
            send_at=send_at,
            validity=duration_pb2.Duration(seconds=600),
        )
    )
    assert sent.status == pb.MESSAGE_STATUS_SCHEDULED
    got = await stub.GetDeliveryStatus(pb.GetDeliveryStatusRequest(message_id=sent.message_id))
    assert got.message.send_at == send_at
    assert got.message.expires_at.seconds == send_at.seconds + 600


async def test_invalid_request_gets_every_violation_and_stores_nothing(
    stub: Stub, database: TestDb
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SendMessage(
            pb.SendMessageRequest(
                to="555-0100",
                content_sid="HX123",
                variables={"bad key": "x"},
                media_urls=["http://insecure.example/a.png"],
                tags=["ok", ""],
                idempotency_key=" padded ",
            )
        )
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = field_violations(err)
    assert set(found) == {
        "to",
        "content_sid",
        'variables["bad key"]',
        "media_urls",
        "media_urls[0]",
        "tags[1]",
        "idempotency_key",
    }
    assert "E.164" in found["to"]
    assert "Traceback" not in (err.details() or "")
    assert count_rows(database, "messages") == 0
    assert count_rows(database, "status_events") == 0


async def test_sms_channel_and_prefix_conflict(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SendMessage(
            pb.SendMessageRequest(to="whatsapp:+14155550100", channel=pb.CHANNEL_SMS, body="x")
        )
    assert "whatsapp: prefix" in field_violations(info.value)["to"]
    ok = await stub.SendMessage(
        pb.SendMessageRequest(to="+14155550100", channel=pb.CHANNEL_SMS, body="x")
    )
    got = await stub.GetDeliveryStatus(pb.GetDeliveryStatusRequest(message_id=ok.message_id))
    assert got.message.channel == pb.CHANNEL_SMS


async def test_idempotent_replay_returns_the_same_message(stub: Stub, database: TestDb) -> None:
    req = pb.SendMessageRequest(
        to="+14155550100", body="OTP 123456", idempotency_key="otp-1", tags=["a", "b"]
    )
    first = await stub.SendMessage(req)
    # Same payload written differently: prefix, tag order.
    again = await stub.SendMessage(
        pb.SendMessageRequest(
            to="whatsapp:+14155550100", body="OTP 123456", idempotency_key="otp-1", tags=["b", "a"]
        )
    )
    assert again.message_id == first.message_id
    assert again.replayed
    assert not first.replayed
    assert again.created_at == first.created_at
    assert count_rows(database, "messages") == 1


async def test_reused_key_with_other_payload_is_already_exists(
    stub: Stub, database: TestDb
) -> None:
    first = await stub.SendMessage(
        pb.SendMessageRequest(to="+14155550100", body="one", idempotency_key="k")
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SendMessage(
            pb.SendMessageRequest(to="+14155550100", body="two", idempotency_key="k")
        )
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first.message_id in (info.value.details() or "")
    (resource,) = details(info.value)
    assert resource.resource_name == "k"
    assert count_rows(database, "messages") == 1


async def test_concurrent_replays_create_one_message(stub: Stub, database: TestDb) -> None:
    import asyncio

    req = pb.SendMessageRequest(to="+14155550100", body="once", idempotency_key="race")
    results = await asyncio.gather(*(stub.SendMessage(req) for _ in range(20)))
    assert len({r.message_id for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    assert count_rows(database, "messages") == 1


async def test_same_key_is_independent_of_other_keys(stub: Stub) -> None:
    a = await stub.SendMessage(
        pb.SendMessageRequest(to="+14155550100", body="x", idempotency_key="a")
    )
    b = await stub.SendMessage(
        pb.SendMessageRequest(to="+14155550100", body="x", idempotency_key="b")
    )
    c = await stub.SendMessage(pb.SendMessageRequest(to="+14155550100", body="x"))
    d = await stub.SendMessage(pb.SendMessageRequest(to="+14155550100", body="x"))
    assert len({a.message_id, b.message_id, c.message_id, d.message_id}) == 4


async def test_status_not_found(stub: Stub) -> None:
    for req in (
        pb.GetDeliveryStatusRequest(message_id="01J00000000000000000000000"),
        pb.GetDeliveryStatusRequest(twilio_sid="SM" + "0" * 32),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetDeliveryStatus(req)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetDeliveryStatus(pb.GetDeliveryStatusRequest())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ref" in field_violations(info.value)


async def test_wait_for_acceptance_is_refused_before_anything_is_stored(
    stub: Stub, database: TestDb
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SendMessage(
            pb.SendMessageRequest(to="+14155550100", body="x", wait_for_acceptance=True)
        )
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert count_rows(database, "messages") == 0


async def test_undecodable_bytes_are_invalid_argument_not_unknown(
    channel: grpc.aio.Channel, database: TestDb
) -> None:
    bad_utf8 = b"\x0a\x03\xff\xfe\xfd"  # field 1 (to), a string that is not UTF-8
    send = channel.unary_unary(
        "/notifier.v1.Notifier/SendMessage",
        request_serializer=lambda raw: raw,
        response_deserializer=pb.SendMessageResponse.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await send(bad_utf8)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request" in field_violations(info.value)
    bulk = channel.stream_stream(
        "/notifier.v1.Notifier/SendBulk",
        request_serializer=lambda raw: raw,
        response_deserializer=pb.SendBulkResponse.FromString,
    )
    good = pb.SendBulkRequest(items=[pb.BulkItem(to="+14155550100", body="ok")])
    call = bulk(iter([good.SerializeToString(), b"\x12\x03\x12\x01\xff"]))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert count_rows(database, "messages") <= 1  # the good item before it may be stored
