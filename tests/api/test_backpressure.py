"""Backpressure: over NOTIFIER_OUTBOX_CAPACITY new messages are refused with
RESOURCE_EXHAUSTED and a retry delay, nothing is stored, and health stays SERVING."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from notifier.config import Settings, load_settings
from notifier.server import NotifierServer, create_server
from notifier_proto.v1 import notifier_pb2 as pb
from notifier_proto.v1 import notifier_pb2_grpc
from tests.support.databases import count_rows

CAPACITY = 3


def _settings(db_path: Path, **extra: Any) -> Settings:
    return load_settings(
        NOTIFIER_DATABASE_URL=f"sqlite+aiosqlite:///{db_path}",
        NOTIFIER_GRPC_ADDR="127.0.0.1:0",
        NOTIFIER_HEALTH_INTERVAL_SECONDS=0.2,
        NOTIFIER_OUTBOX_CAPACITY=CAPACITY,
        ADMIN_WHATSAPP_NUMBERS="+14155550101,+14155550102",
        **extra,
    )


@pytest.fixture
async def small(db_path: Path) -> AsyncIterator[NotifierServer]:
    server = await create_server(_settings(db_path))
    await server.start()
    yield server
    await server.stop(grace=1)


@pytest.fixture
async def channel(small: NotifierServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{small.port}") as chan:
        yield chan


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> notifier_pb2_grpc.NotifierAsyncStub:
    return notifier_pb2_grpc.NotifierStub(channel)


def _send(n: int) -> pb.SendMessageRequest:
    return pb.SendMessageRequest(to="+14155550100", body=f"message {n}")


def _details(err: grpc.aio.AioRpcError) -> tuple[float, str]:
    """(retry delay in seconds, ErrorInfo reason) of a RESOURCE_EXHAUSTED status."""
    status = rpc_status.from_call(err)
    assert status is not None
    delay, reason = -1.0, ""
    for detail in status.details:
        retry, info = error_details_pb2.RetryInfo(), error_details_pb2.ErrorInfo()
        if detail.Unpack(retry):
            delay = retry.retry_delay.ToMilliseconds() / 1000
        elif detail.Unpack(info):
            reason = str(info.reason)
    return delay, reason


async def _code(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def _health(channel: grpc.aio.Channel) -> int:
    health = health_pb2_grpc.HealthStub(channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="notifier.v1.Notifier"))
    return int(reply.status)


async def test_over_capacity_send_is_resource_exhausted_with_retry_info(
    stub: notifier_pb2_grpc.NotifierAsyncStub, channel: grpc.aio.Channel, db_path: Path
) -> None:
    ids = [(await stub.SendMessage(_send(n))).message_id for n in range(CAPACITY)]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SendMessage(_send(99))
    err = info.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "NOTIFIER_OUTBOX_CAPACITY" in (err.details() or "")
    assert _details(err) == (5.0, "OUTBOX_FULL")
    assert await asyncio.to_thread(count_rows, db_path, "messages") == CAPACITY
    # Not a failure of the server: health stays SERVING.
    await asyncio.sleep(0.5)
    assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
    # Reads still work; a canceled message leaves the outbox, and within a refresh
    # interval there is room again.
    await stub.CancelMessage(pb.CancelMessageRequest(message_id=ids[0]))
    deadline = time.monotonic() + 5
    while (code := await _code(stub.SendMessage(_send(100)))) != grpc.StatusCode.OK:
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    assert await asyncio.to_thread(count_rows, db_path, "messages") == CAPACITY + 1


async def test_bulk_items_over_capacity_get_their_own_result(
    stub: notifier_pb2_grpc.NotifierAsyncStub, db_path: Path
) -> None:
    await stub.SendMessage(_send(0))

    async def requests() -> AsyncIterator[pb.SendBulkRequest]:
        items = [pb.BulkItem(correlation_id=f"c{i}", to=f"+1415555020{i}") for i in range(4)]
        items.insert(1, pb.BulkItem(correlation_id="bad", to="not a number"))
        yield pb.SendBulkRequest(defaults=pb.BulkContent(body="sale"), items=items)
        # The stream goes on after a full outbox.
        yield pb.SendBulkRequest(items=[pb.BulkItem(correlation_id="late", to="+14155550299")])

    results = [r async for reply in stub.SendBulk(requests()) for r in reply.results]
    outcome = {r.correlation_id: r.error.code or "OK" for r in results}
    assert outcome == {
        "c0": "OK",
        "bad": "INVALID_ARGUMENT",
        "c1": "OK",
        "c2": "RESOURCE_EXHAUSTED",
        "c3": "RESOURCE_EXHAUSTED",
        "late": "RESOURCE_EXHAUSTED",
    }
    full = next(r for r in results if r.correlation_id == "c2")
    assert "retry in 5s" in full.error.message
    assert [r.index for r in results] == list(range(6))
    assert await asyncio.to_thread(count_rows, db_path, "messages") == CAPACITY


async def test_notifications_need_room_for_every_admin(
    stub: notifier_pb2_grpc.NotifierAsyncStub, db_path: Path
) -> None:
    await stub.SendMessage(_send(0))
    await stub.SendMessage(_send(1))  # room for one more, two admins
    order = pb.NotifyOrderRequest(
        order_id="A-1",
        customer_name="Ana",
        customer_email="ana@example.com",
        items=[pb.OrderItem(title="Mug", quantity=1, unit_price="5.00")],
        total="5.00",
        currency="USD",
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.NotifyOrder(order)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    custom = pb.NotifyAdminsRequest(
        custom=pb.CustomNotification(title="hi", body="there"), idempotency_key="k1"
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.NotifyAdmins(custom)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await asyncio.to_thread(count_rows, db_path, "messages") == 2


async def test_replicas_see_each_others_messages_within_a_refresh(db_path: Path) -> None:
    first = await create_server(_settings(db_path))
    second = await create_server(_settings(db_path))
    for server in (first, second):
        await server.start()
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as a,
            grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as b,
        ):
            one, two = notifier_pb2_grpc.NotifierStub(a), notifier_pb2_grpc.NotifierStub(b)
            await one.SendMessage(_send(0))  # the first one counts 0, then 1 admitted
            await two.SendMessage(_send(1))  # the second one counts 1, then 1 admitted
            await one.SendMessage(_send(2))
            await one.SendMessage(_send(3))  # the first one's estimate: 3, full
            with pytest.raises(grpc.aio.AioRpcError):
                await one.SendMessage(_send(9))
            # The second one learns of the first one's two last messages only at its
            # next count: until then it admits by its own estimate (2).
            await two.SendMessage(_send(4))
            with pytest.raises(grpc.aio.AioRpcError):
                await two.SendMessage(_send(9))
            await asyncio.sleep(1.2)
            for stub in (one, two, one, two):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.SendMessage(_send(9))
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        for server in (first, second):
            await server.stop(grace=1)
    # Over by what the other replica took within one refresh interval.
    assert await asyncio.to_thread(count_rows, db_path, "messages") == CAPACITY + 2
