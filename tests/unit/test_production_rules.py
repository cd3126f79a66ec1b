"""Production's rules on settings alone: TLS may be terminated upstream by explicit
choice, and which hosts count as loopback."""

from __future__ import annotations

from notifier.api.auth import token_digest
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


def test_production_refuses_two_tokens_with_one_name() -> None:
    """Issue 16: a history naming who canceled or retried must name one token."""
    one, two = token_digest("first"), token_digest("second")
    settings = load_settings(
        **{**PRODUCTION, "NOTIFIER_API_TOKENS": f"ops:manage:{one},ops:read:{two}"},
        NOTIFIER_GRPC_ADDR="127.0.0.1:50051",
    )
    problems = production_problems(settings, "grpc")
    assert problems == [
        "NOTIFIER_API_TOKENS: token name(s) ops given to more than one entry "
        "(a history naming who acted must name one token)"
    ]
    assert not any(one in p or two in p for p in problems)
    named = settings.model_copy(update={"api_tokens": [f"ops:manage:{one}", f"ro:read:{two}"]})
    assert production_problems(named, "grpc") == []


def test_production_checks_templates_against_twilio_itself() -> None:
    """Issue 17: the template pre-flight's Content API is Twilio's, never the emulator."""
    settings = load_settings(
        **PRODUCTION,
        NOTIFIER_GRPC_ADDR="127.0.0.1:50051",
        NOTIFIER_TEMPLATE_CHECK="twilio",
        NOTIFIER_CONTENT_API_BASE_URL="http://127.0.0.1:8090",
    )
    assert production_problems(settings, "grpc") == [
        "NOTIFIER_CONTENT_API_BASE_URL: must be Twilio's https Content API, not a "
        "loopback address (NOTIFIER_TEMPLATE_CHECK=twilio)"
    ]
    local = settings.model_copy(update={"template_check": "local"})
    assert production_problems(local, "grpc") == []
    twilio = load_settings(
        **PRODUCTION, NOTIFIER_GRPC_ADDR="127.0.0.1:50051", NOTIFIER_TEMPLATE_CHECK="twilio"
    )
    assert production_problems(twilio, "grpc") == []
