"""Caller authentication and TLS, through a real server on an ephemeral port."""

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
from notifier.config import ConfigError, Settings, load_settings
from notifier.server import NotifierServer, create_server
from notifier_proto.v1 import notifier_pb2 as pb
from notifier_proto.v1 import notifier_pb2_grpc
from tests.support.certs import Certs, make_certs
from tests.support.databases import count_rows
from tests.support.process import grpcurl

TOKEN = "s3cret-caller-token-1"
OTHER = "s3cret-caller-token-2"
SEND = "notifier.v1.Notifier/SendMessage"


def _settings(db_path: Path, **extra: Any) -> Settings:
    return load_settings(
        NOTIFIER_DATABASE_URL=f"sqlite+aiosqlite:///{db_path}",
        NOTIFIER_GRPC_ADDR="127.0.0.1:0",
        NOTIFIER_HEALTH_INTERVAL_SECONDS=0.2,
        **extra,
    )


async def _serve(settings: Settings) -> NotifierServer:
    server = await create_server(settings)
    await server.start()
    return server


def _reason(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    raise AssertionError("no ErrorInfo detail")


def _bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def authed(db_path: Path) -> AsyncIterator[NotifierServer]:
    tokens = f"{token_digest(TOKEN)},{token_digest(OTHER).upper()}"
    server = await _serve(_settings(db_path, NOTIFIER_API_TOKENS=tokens))
    yield server
    await server.stop(grace=1)


@pytest.fixture
async def authed_stub(
    authed: NotifierServer,
) -> AsyncIterator[notifier_pb2_grpc.NotifierAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{authed.port}") as channel:
        yield notifier_pb2_grpc.NotifierStub(channel)


REQUEST = pb.SendMessageRequest(to="+14155550100", body="hello")


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "MISSING_TOKEN"),
        (_bearer("wrong-token"), "INVALID_TOKEN"),
        ((("authorization", f"Basic {TOKEN}"),), "MALFORMED_AUTHORIZATION"),
        ((("authorization", "Bearer "),), "MALFORMED_AUTHORIZATION"),
        ((("authorization", token_digest(TOKEN)),), "MALFORMED_AUTHORIZATION"),
        (_bearer(token_digest(TOKEN)), "INVALID_TOKEN"),  # the digest is not the token
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
        reply = await authed_stub.SendMessage(REQUEST, metadata=_bearer(token))
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
    first = await authed_stub.SendMessage(keyed, metadata=_bearer(TOKEN))
    again = await authed_stub.SendMessage(keyed, metadata=_bearer(TOKEN))
    other = await authed_stub.SendMessage(keyed, metadata=_bearer(OTHER))
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


# -- TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _tls_settings(db_path: Path, certs: Certs, *, mutual: bool = False) -> Settings:
    extra: dict[str, Any] = {
        "NOTIFIER_TLS_CERT": str(certs.server_cert),
        "NOTIFIER_TLS_KEY": str(certs.server_key),
    }
    if mutual:
        extra["NOTIFIER_TLS_CLIENT_CA"] = str(certs.ca)
    return _settings(db_path, **extra)


async def _send_over(channel: grpc.aio.Channel) -> pb.SendMessageResponse:
    stub = notifier_pb2_grpc.NotifierStub(channel)
    reply: pb.SendMessageResponse = await stub.SendMessage(REQUEST, timeout=5)
    return reply


def _credentials(certs: Certs, *, client: bool) -> grpc.ChannelCredentials:
    if not client:
        return grpc.ssl_channel_credentials(root_certificates=certs.ca.read_bytes())
    return grpc.ssl_channel_credentials(
        root_certificates=certs.ca.read_bytes(),
        private_key=certs.client_key.read_bytes(),
        certificate_chain=certs.client_cert.read_bytes(),
    )


async def test_tls_call_with_the_ca_succeeds_and_plaintext_fails(
    db_path: Path, certs: Certs
) -> None:
    server = await _serve(_tls_settings(db_path, certs))
    address = f"127.0.0.1:{server.port}"
    try:
        async with grpc.aio.secure_channel(address, _credentials(certs, client=False)) as chan:
            assert (await _send_over(chan)).message_id
        async with grpc.aio.insecure_channel(address) as chan:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _send_over(chan)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        # A client that does not trust the server's CA refuses it.
        async with grpc.aio.secure_channel(address, grpc.ssl_channel_credentials()) as chan:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _send_over(chan)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        body = json.dumps({"to": "+14155550100", "body": "over TLS"})
        ok = await asyncio.to_thread(grpcurl, "-cacert", str(certs.ca), "-d", body, address, SEND)
        assert ok.returncode == 0, ok.stderr
        plain = await asyncio.to_thread(grpcurl, "-plaintext", "-d", body, address, SEND)
        assert plain.returncode != 0
    finally:
        await server.stop(grace=1)
    assert await asyncio.to_thread(count_rows, db_path, "messages") == 2


async def test_mutual_tls_requires_a_client_certificate(db_path: Path, certs: Certs) -> None:
    server = await _serve(_tls_settings(db_path, certs, mutual=True))
    address = f"127.0.0.1:{server.port}"
    try:
        async with grpc.aio.secure_channel(address, _credentials(certs, client=False)) as chan:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _send_over(chan)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        async with grpc.aio.secure_channel(address, _credentials(certs, client=True)) as chan:
            assert (await _send_over(chan)).message_id
        body = json.dumps({"to": "+14155550100", "body": "over mTLS"})
        common = ("-cacert", str(certs.ca), "-d", body)
        refused = await asyncio.to_thread(grpcurl, *common, address, SEND)
        assert refused.returncode != 0
        client = ("-cert", str(certs.client_cert), "-key", str(certs.client_key))
        ok = await asyncio.to_thread(grpcurl, *common, *client, address, SEND)
        assert ok.returncode == 0, ok.stderr
    finally:
        await server.stop(grace=1)
    assert await asyncio.to_thread(count_rows, db_path, "messages") == 2


async def test_tls_and_tokens_together(db_path: Path, certs: Certs) -> None:
    settings = _tls_settings(db_path, certs).model_copy(
        update={"api_tokens": [token_digest(TOKEN)]}
    )
    server = await _serve(settings)
    address = f"127.0.0.1:{server.port}"
    try:
        async with grpc.aio.secure_channel(address, _credentials(certs, client=False)) as chan:
            stub = notifier_pb2_grpc.NotifierStub(chan)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.SendMessage(REQUEST)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert (await stub.SendMessage(REQUEST, metadata=_bearer(TOKEN))).message_id
    finally:
        await server.stop(grace=1)


def test_tls_files_are_checked_at_startup(certs: Certs, tmp_path: Path) -> None:
    def error(**env: str) -> str:
        with pytest.raises(ConfigError) as info:
            load_settings(**env)
        return str(info.value)

    cert, key = str(certs.server_cert), str(certs.server_key)
    assert "NOTIFIER_TLS_KEY" in error(
        NOTIFIER_TLS_CERT=cert, NOTIFIER_TLS_KEY=str(certs.other_key)
    )
    assert "does not match the certificate in NOTIFIER_TLS_CERT" in error(
        NOTIFIER_TLS_CERT=cert, NOTIFIER_TLS_KEY=str(certs.other_key)
    )
    # Files swapped: the key file holds no certificate.
    assert "NOTIFIER_TLS_CERT" in error(NOTIFIER_TLS_CERT=key, NOTIFIER_TLS_KEY=cert)
    assert "NOTIFIER_TLS_KEY" in error(NOTIFIER_TLS_CERT=cert, NOTIFIER_TLS_KEY=cert)
    assert "NOTIFIER_TLS_CLIENT_CA" in error(
        NOTIFIER_TLS_CERT=cert, NOTIFIER_TLS_KEY=key, NOTIFIER_TLS_CLIENT_CA=key
    )
    missing = str(tmp_path / "missing.pem")
    assert "NOTIFIER_TLS_KEY: no such file" in error(
        NOTIFIER_TLS_CERT=cert, NOTIFIER_TLS_KEY=missing
    )
    assert "go together" in error(NOTIFIER_TLS_CERT=cert)
    # The key's contents never appear in the message.
    text = error(NOTIFIER_TLS_CERT=cert, NOTIFIER_TLS_KEY=str(certs.other_key))
    assert "PRIVATE KEY" not in text
    assert certs.other_key.read_text().splitlines()[1] not in text
    ok = load_settings(
        NOTIFIER_TLS_CERT=cert, NOTIFIER_TLS_KEY=key, NOTIFIER_TLS_CLIENT_CA=str(certs.ca)
    )
    assert ok.tls_enabled
