"""The contract as operators see it: reflection with the real grpcurl binary, and health."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from notifier_proto.v1 import notifier_pb2 as pb
from notifier_proto.v1 import notifier_pb2_grpc
from tests.support.process import grpcurl
from tests.support.rpc import details

RPCS = [
    "SendMessage",
    "SendBulk",
    "NotifyOrder",
    "NotifyAdmins",
    "GetDeliveryStatus",
    "GetMetrics",
    "ListMessages",
    "RetryMessages",
    "CancelMessage",
    "WatchDeliveryStatus",
    "EraseRecipient",
]


async def _grpcurl(*args: str) -> tuple[int, str, str]:
    """grpcurl in a thread, so the in-process server keeps answering."""
    out = await asyncio.to_thread(grpcurl, *args)
    return out.returncode, out.stdout, out.stderr


async def test_reflection_lists_every_service_and_rpc(address: str) -> None:
    code, out, err = await _grpcurl("-plaintext", address, "list")
    assert code == 0, err
    assert out.split() == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "notifier.v1.Notifier",
    ]
    code, out, err = await _grpcurl("-plaintext", address, "list", "notifier.v1.Notifier")
    assert code == 0, err
    assert sorted(out.split()) == sorted(f"notifier.v1.Notifier.{r}" for r in RPCS)


async def test_reflection_describes_messages(address: str) -> None:
    code, out, err = await _grpcurl(
        "-plaintext", address, "describe", "notifier.v1.SendMessageRequest"
    )
    assert code == 0, err
    for field in (
        "to",
        "body",
        "content_sid",
        "variables",
        "media_urls",
        "idempotency_key",
        "tags",
    ):
        assert f" {field} = " in out
    code, out, _ = await _grpcurl("-plaintext", address, "describe", "notifier.v1.Notifier")
    assert (
        "rpc SendBulk ( stream .notifier.v1.SendBulkRequest ) "
        "returns ( stream .notifier.v1.SendBulkResponse );" in out
    )
    assert (
        "rpc WatchDeliveryStatus ( .notifier.v1.WatchDeliveryStatusRequest ) "
        "returns ( stream .notifier.v1.WatchDeliveryStatusResponse );" in out
    )


async def test_send_and_status_through_grpcurl(address: str) -> None:
    payload = {"to": "whatsapp:+14155550100", "body": "hi", "tags": ["demo"]}
    code, out, err = await _grpcurl(
        "-plaintext", "-d", json.dumps(payload), address, "notifier.v1.Notifier/SendMessage"
    )
    assert code == 0, err
    sent = json.loads(out)
    assert sent["status"] == "MESSAGE_STATUS_PENDING"
    code, out, err = await _grpcurl(
        "-plaintext",
        "-d",
        json.dumps({"message_id": sent["message_id"]}),
        address,
        "notifier.v1.Notifier/GetDeliveryStatus",
    )
    assert code == 0, err
    assert json.loads(out)["message"]["tags"] == ["demo"]


async def test_grpcurl_shows_every_violation(address: str) -> None:
    code, _, err = await _grpcurl(
        "-plaintext",
        "-d",
        json.dumps({"to": "12345", "body": "", "tags": ["no spaces"]}),
        address,
        "notifier.v1.Notifier/SendMessage",
    )
    assert code != 0
    assert "InvalidArgument" in err
    for field in ('"field":"to"', '"field":"body"', '"field":"tags[0]"'):
        assert field in err.replace(" ", "")


async def test_health_is_serving(address: str, channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "notifier.v1.Notifier"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    code, out, err = await _grpcurl("-plaintext", address, "grpc.health.v1.Health/Check")
    assert code == 0, err
    assert json.loads(out) == {"status": "SERVING"}


async def _wait_for(health: health_pb2_grpc.HealthStub, status: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        reply = await health.Check(health_pb2.HealthCheckRequest(service="notifier.v1.Notifier"))
        if reply.status == status:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"health never became {status}")


@pytest.mark.slow
async def test_locked_database_is_not_serving_then_recovers(
    channel: grpc.aio.Channel, db_path: Path
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    stub = notifier_pb2_grpc.NotifierStub(channel)
    # Another process holding the write lock is what "storage unreachable" looks like on SQLite.
    # In a thread: the server shares this event loop, and a blocking BEGIN here could
    # wait on a health check the blocked loop never lets finish.
    locker = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False, timeout=30)
    await asyncio.to_thread(locker.execute, "BEGIN EXCLUSIVE")
    try:
        await _wait_for(health, health_pb2.HealthCheckResponse.NOT_SERVING)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SendMessage(pb.SendMessageRequest(to="+14155550100", body="x"))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert any(d.DESCRIPTOR.name == "RetryInfo" for d in details(info.value))
    finally:
        await asyncio.to_thread(locker.execute, "ROLLBACK")
        locker.close()
    await _wait_for(health, health_pb2.HealthCheckResponse.SERVING)
    sent = await stub.SendMessage(pb.SendMessageRequest(to="+14155550100", body="after"))
    assert sent.status == pb.MESSAGE_STATUS_PENDING
