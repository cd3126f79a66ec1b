"""TLS as operators set it up: certificates made with the openssl command, a server in
this process on them (with and without client certificates, with tokens), and the real
grpcurl binary as a client.

Moved out of tests/api/test_security.py to keep ``make test-fast`` under a minute:
grpcurl's refused attempts (plaintext to a TLS port, no client certificate for mutual
TLS) wait out its 10 s connect timeout."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from notifier.api.auth import token_digest
from notifier.config import ConfigError, Settings, load_settings
from notifier_proto.v1 import notifier_pb2 as pb
from notifier_proto.v1 import notifier_pb2_grpc
from tests.support.auth import REQUEST, SEND, TOKEN, bearer, serve, server_settings
from tests.support.certs import Certs, make_certs
from tests.support.databases import count_rows
from tests.support.process import grpcurl


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
    return server_settings(db_path, **extra)


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
    server = await serve(_tls_settings(db_path, certs))
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
    server = await serve(_tls_settings(db_path, certs, mutual=True))
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
    server = await serve(settings)
    address = f"127.0.0.1:{server.port}"
    try:
        async with grpc.aio.secure_channel(address, _credentials(certs, client=False)) as chan:
            stub = notifier_pb2_grpc.NotifierStub(chan)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.SendMessage(REQUEST)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert (await stub.SendMessage(REQUEST, metadata=bearer(TOKEN))).message_id
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
