"""Caller authentication through a real server on an ephemeral port (TLS, with certificates
and grpcurl: tests/e2e/test_tls.py)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from notifier.api.auth import token_digest
from notifier.server import NotifierServer
from notifier_proto.v1 import notifier_pb2 as pb
from notifier_proto.v1 import notifier_pb2_grpc
from tests.support.auth import REQUEST, SEND, TOKEN, bearer, serve, server_settings
from tests.support.databases import count_rows
from tests.support.process import grpcurl

OTHER = "s3cret-caller-token-2"


def _reason(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    raise AssertionError("no ErrorInfo detail")


@pytest.fixture
async def authed(db_path: Path) -> AsyncIterator[NotifierServer]:
    tokens = f"{token_digest(TOKEN)},{token_digest(OTHER).upper()}"
    server = await serve(server_settings(db_path, NOTIFIER_API_TOKENS=tokens))
    yield server
    await server.stop(grace=1)


@pytest.fixture
async def authed_stub(
    authed: NotifierServer,
) -> AsyncIterator[notifier_pb2_grpc.NotifierAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{authed.port}") as channel:
        yield notifier_pb2_grpc.NotifierStub(channel)


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "MISSING_TOKEN"),
        (bearer("wrong-token"), "INVALID_TOKEN"),
        ((("authorization", f"Basic {TOKEN}"),), "MALFORMED_AUTHORIZATION"),
        ((("authorization", "Bearer "),), "MALFORMED_AUTHORIZATION"),
        ((("authorization", token_digest(TOKEN)),), "MALFORMED_AUTHORIZATION"),
        (bearer(token_digest(TOKEN)), "INVALID_TOKEN"),  # the digest is not the token
    ],
)
async def test_calls_without_an_accepted_token_are_unauthenticated(
    authed_stub: notifier_pb2_grpc.NotifierAsyncStub,
    db_path: Path,
    metadata: tuple[tuple[str, str], ...],
    reason: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await authed_stub.SendMessage(REQUEST, metadata=metadata)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _reason(info.value) == reason
    assert "authorization" in (info.value.details() or "") or reason == "INVALID_TOKEN"
    assert TOKEN not in (info.value.details() or "")
    assert await asyncio.to_thread(count_rows, db_path, "messages") == 0


async def test_every_configured_token_is_accepted(
    authed_stub: notifier_pb2_grpc.NotifierAsyncStub, db_path: Path
) -> None:
    for token in (TOKEN, OTHER):
        reply = await authed_stub.SendMessage(REQUEST, metadata=bearer(token))
        assert reply.message_id
    # The scheme is case-insensitive, as in HTTP.
    await authed_stub.SendMessage(REQUEST, metadata=(("authorization", f"bearer {TOKEN}"),))
    assert await asyncio.to_thread(count_rows, db_path, "messages") == 3


async def test_idempotency_keys_and_order_ids_are_per_caller(
    authed_stub: notifier_pb2_grpc.NotifierAsyncStub, db_path: Path
) -> None:
    """Two services that happen to pick the same key are two callers (SPEC §3: keys are
    per caller); the same caller's retry is the same message."""
    keyed = pb.SendMessageRequest(to="+14155550100", body="hello", idempotency_key="k-1")
    first = await authed_stub.SendMessage(keyed, metadata=bearer(TOKEN))
    again = await authed_stub.SendMessage(keyed, metadata=bearer(TOKEN))
    other = await authed_stub.SendMessage(keyed, metadata=bearer(OTHER))
    assert (again.message_id, again.replayed) == (first.message_id, True)
    assert other.message_id != first.message_id
    assert not other.replayed
    assert await asyncio.to_thread(count_rows, db_path, "messages") == 2
    callers = {
        row[0]
        for row in await asyncio.to_thread(_rows, db_path, "SELECT caller FROM idempotency_keys")
    }
    assert len(callers) == 2
    assert all(c.startswith("token:") and TOKEN not in c and OTHER not in c for c in callers)


def _rows(db_path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db_path) as conn:
        return conn.execute(sql).fetchall()


async def test_streams_are_refused_before_anything_is_read(
    authed_stub: notifier_pb2_grpc.NotifierAsyncStub, db_path: Path
) -> None:
    async def items() -> AsyncIterator[pb.SendBulkRequest]:
        yield pb.SendBulkRequest(items=[pb.BulkItem(correlation_id="a", to="+14155550100")])

    call = authed_stub.SendBulk(items())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    watch = authed_stub.WatchDeliveryStatus(pb.WatchDeliveryStatusRequest(tag="x"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in watch:
            pass
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await asyncio.to_thread(count_rows, db_path, "messages") == 0


async def test_health_stays_open(authed: NotifierServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{authed.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="notifier.v1.Notifier"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_needs_the_token_and_grpcurl_passes_it(authed: NotifierServer) -> None:
    address = f"127.0.0.1:{authed.port}"
    refused = await asyncio.to_thread(grpcurl, "-plaintext", address, "list")
    assert refused.returncode != 0
    assert "Unauthenticated" in refused.stderr
    header = f"authorization: Bearer {TOKEN}"
    listed = await asyncio.to_thread(grpcurl, "-plaintext", "-H", header, address, "list")
    assert listed.returncode == 0, listed.stderr
    assert "notifier.v1.Notifier" in listed.stdout
    body = json.dumps({"to": "+14155550100", "body": "via grpcurl"})
    sent = await asyncio.to_thread(grpcurl, "-plaintext", "-H", header, "-d", body, address, SEND)
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["status"] == "MESSAGE_STATUS_PENDING"


async def test_without_tokens_development_has_no_authentication(
    stub: notifier_pb2_grpc.NotifierAsyncStub,
) -> None:
    reply = await stub.SendMessage(REQUEST)
    assert reply.message_id
