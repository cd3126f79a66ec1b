"""Production refuses to start unsafe; development stays on one machine; no secret is
ever printed. Through ``notifier serve`` as a real process, as an operator runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.certs import Certs, make_certs
from tests.support.process import grpcurl, notifier_env, run_notifier, start_server
from tests.support.production import (
    API_SECRET,
    AUTH_TOKEN,
    CALLER_TOKEN,
    PRODUCTION,
    SECRETS,
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def test_production_lists_everything_missing_at_once(tmp_path: Path) -> None:
    out = run_notifier(notifier_env(tmp_path / "n.db", NOTIFIER_ENV="production"), "serve")
    assert out.returncode == 1
    assert out.stderr.startswith("notifier: refusing to start in production:\n")
    for name in (
        "TWILIO_ACCOUNT_SID: not set",
        "TWILIO_AUTH_TOKEN: not set",
        "TWILIO_WHATSAPP_FROM or TWILIO_MESSAGING_SERVICE_SID: no sender set",
        "NOTIFIER_API_TOKENS: not set",
        "STATUS_CALLBACK_URL: not set",
        "WEBHOOK_URL: not set",
    ):
        assert name in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "n.db").exists()  # refused before touching anything


def test_production_refuses_unsafe_values_without_printing_secrets(tmp_path: Path) -> None:
    env = notifier_env(
        tmp_path / "n.db",
        **PRODUCTION
        | {
            "TWILIO_API_BASE_URL": "http://127.0.0.1:8090",  # the emulator
            "STATUS_CALLBACK_URL": "http://notify.example.com/status",
            "WEBHOOK_URL": "https://localhost/webhook",
            "NOTIFIER_GRPC_ADDR": "0.0.0.0:0",
        },
    )
    out = run_notifier(env, "serve")
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert lines[0] == "notifier: refusing to start in production:"
    assert len(lines) == 5, out.stderr
    assert "TWILIO_API_BASE_URL: must be Twilio's https API" in out.stderr
    assert "STATUS_CALLBACK_URL: must be an https URL" in out.stderr
    assert "WEBHOOK_URL: must be a public URL" in out.stderr
    assert "NOTIFIER_TLS_CERT and NOTIFIER_TLS_KEY: not set" in out.stderr
    assert "NOTIFIER_TLS_TERMINATED_UPSTREAM" in out.stderr
    _no_secrets(out.stdout, out.stderr)


def test_production_webhook_sidecar_needs_the_auth_token(tmp_path: Path) -> None:
    env = notifier_env(
        tmp_path / "n.db",
        NOTIFIER_ENV="production",
        STATUS_CALLBACK_URL=PRODUCTION["STATUS_CALLBACK_URL"],
        WEBHOOK_URL=PRODUCTION["WEBHOOK_URL"],
    )
    out = run_notifier(env, "serve", "webhooks")
    assert out.returncode == 1
    assert "TWILIO_AUTH_TOKEN: not set" in out.stderr
    # Only what the sidecar needs: no sender, no caller tokens.
    assert "NOTIFIER_API_TOKENS" not in out.stderr
    assert "TWILIO_MESSAGING_SERVICE_SID" not in out.stderr


def test_production_starts_with_tls_and_tokens_and_prints_no_secret(
    tmp_path: Path, certs: Certs
) -> None:
    db = tmp_path / "n.db"
    env = notifier_env(
        db,
        **PRODUCTION
        | {
            "NOTIFIER_GRPC_ADDR": "0.0.0.0:0",
            "NOTIFIER_TLS_CERT": str(certs.server_cert),
            "NOTIFIER_TLS_KEY": str(certs.server_key),
            "NOTIFIER_DISPATCHER_ENABLED": "false",  # nothing may reach the real Twilio
        },
    )
    assert run_notifier(env, "db", "upgrade").returncode == 0
    server = start_server(env, "grpc")
    try:
        assert "(production)" in server.banner
        # Names and scopes (a bare digest is named by its position), never the digest.
        assert "bearer tokens (1 accepted: token-1 (admin+manage+read+send))" in server.banner
        assert "TLS on" in server.banner
        body = json.dumps({"to": "+14155550100", "body": "production"})
        common = ("-cacert", str(certs.ca), "-d", body, server.address)
        refused = grpcurl(*common, "notifier.v1.Notifier/SendMessage")
        assert refused.returncode != 0
        assert "Unauthenticated" in refused.stderr
        header = ("-H", f"authorization: Bearer {CALLER_TOKEN}")
        sent = grpcurl(*header, *common, "notifier.v1.Notifier/SendMessage")
        assert sent.returncode == 0, sent.stderr
    finally:
        code = server.stop()
        rest = server.output()
    assert code == 0
    _no_secrets(server.banner, rest)


def test_development_refuses_a_network_bind_without_tokens(tmp_path: Path) -> None:
    env = notifier_env(tmp_path / "n.db", NOTIFIER_GRPC_ADDR="0.0.0.0:0")
    out = run_notifier(env, "serve", "grpc")
    assert out.returncode == 1
    assert "refusing to start in development" in out.stderr
    assert "NOTIFIER_GRPC_ADDR: binds 0.0.0.0, not loopback, without NOTIFIER_API_TOKENS" in (
        out.stderr
    )
    sidecar = notifier_env(tmp_path / "n.db", NOTIFIER_HTTP_ADDR="0.0.0.0:0")
    out = run_notifier(sidecar, "serve", "webhooks")
    assert out.returncode == 1
    assert "NOTIFIER_HTTP_ADDR: binds 0.0.0.0, not loopback, without TWILIO_AUTH_TOKEN" in (
        out.stderr
    )


def test_development_banner_says_authentication_is_off(tmp_path: Path) -> None:
    server = start_server(notifier_env(tmp_path / "n.db"), "grpc")
    try:
        assert "CALLER AUTHENTICATION OFF" in server.banner
        assert "plaintext gRPC" in server.banner
    finally:
        assert server.stop() == 0


def test_a_config_error_never_echoes_a_secret(tmp_path: Path) -> None:
    env = notifier_env(
        tmp_path / "n.db",
        NOTIFIER_API_TOKENS=CALLER_TOKEN,  # the raw token instead of its digest
        TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        TWILIO_API_SECRET=API_SECRET,  # without TWILIO_API_KEY: an error
        NOTIFIER_RETRY_MAX_ATTEMPTS="many",
    )
    out = run_notifier(env, "serve")
    assert out.returncode == 2
    assert "NOTIFIER_API_TOKENS: entry 1 is not a SHA-256 hex digest" in out.stderr
    assert "NOTIFIER_RETRY_MAX_ATTEMPTS" in out.stderr
    _no_secrets(out.stdout, out.stderr)
