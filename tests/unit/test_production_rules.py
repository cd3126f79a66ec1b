"""Production's rules on settings alone: TLS may be terminated upstream by explicit
choice, and which hosts count as loopback."""

from __future__ import annotations

from notifier.config import load_settings
from notifier.production import is_loopback, production_problems
from tests.support.production import PRODUCTION


def test_tls_terminated_upstream_is_an_explicit_opt_out() -> None:
    settings = load_settings(**PRODUCTION, NOTIFIER_GRPC_ADDR="0.0.0.0:50051")
    assert any("NOTIFIER_TLS_CERT" in p for p in production_problems(settings, "grpc"))
    behind_proxy = settings.model_copy(update={"tls_terminated_upstream": True})
    assert production_problems(behind_proxy, "grpc") == []
    loopback = settings.model_copy(update={"grpc_addr": "127.0.0.1:50051"})
    assert production_problems(loopback, "grpc") == []


def test_loopback_hosts() -> None:
    for host in ("127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost", "api.localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.1", "notify.example.com"):  # noqa: S104
        assert not is_loopback(host), host
