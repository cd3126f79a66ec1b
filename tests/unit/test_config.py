"""Configuration errors name the variable that is wrong."""

from __future__ import annotations

import pytest

from notifier.config import ConfigError, load_settings


def test_defaults_match_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")  # no .env file here
    s = load_settings()
    assert s.grpc_addr == "127.0.0.1:50051"
    assert s.http_addr == "127.0.0.1:8080"
    assert s.database_url == "sqlite+aiosqlite:///./notifier.db"
    assert (s.dispatch_concurrency, s.rate_limit_per_second) == (32, 80)
    assert (s.retry_max_attempts, s.retry_base_seconds, s.retry_cap_seconds) == (8, 1, 300)
    assert s.ambiguous_policy == "retry"
    assert s.twilio_timeout_seconds == 10
    assert str(s.twilio_api_base_url) == "https://api.twilio.com/"
    assert s.is_development
    assert s.should_migrate_on_start


def test_every_bad_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFIER_GRPC_ADDR", "nowhere")
    monkeypatch.setenv("NOTIFIER_RATE_LIMIT_PER_SECOND", "-3")
    monkeypatch.setenv("NOTIFIER_AMBIGUOUS_POLICY", "maybe")
    monkeypatch.setenv("ADMIN_WHATSAPP_NUMBERS", "+14155550100,12345")
    monkeypatch.setenv("NOTIFIER_API_TOKENS", "not-a-digest")
    monkeypatch.setenv("NOTIFIER_DATABASE_URL", "mysql://x")
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "s3cret-token-value")
    monkeypatch.setenv("NOTIFIER_TLS_CERT", "/does/not/exist.pem")
    with pytest.raises(ConfigError) as info:
        load_settings()
    text = str(info.value)
    for name in (
        "NOTIFIER_GRPC_ADDR",
        "NOTIFIER_RATE_LIMIT_PER_SECOND",
        "NOTIFIER_AMBIGUOUS_POLICY",
        "ADMIN_WHATSAPP_NUMBERS: not E.164 numbers: 12345",
        "NOTIFIER_API_TOKENS",
        "NOTIFIER_DATABASE_URL",
        "NOTIFIER_TLS_CERT: no such file",
    ):
        assert name in text
    assert "s3cret" not in text


def test_lists_and_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_WHATSAPP_NUMBERS", "whatsapp:+14155550100, +447911123456")
    monkeypatch.setenv("NOTIFIER_API_TOKENS", "A" * 64)
    s = load_settings()
    assert s.admin_whatsapp_numbers == ["+14155550100", "+447911123456"]
    assert s.api_tokens == ["a" * 64]
    monkeypatch.setenv("TWILIO_API_KEY", "SK" + "0" * 32)
    with pytest.raises(ConfigError, match="TWILIO_API_KEY and TWILIO_API_SECRET go together"):
        load_settings()


def test_metrics_and_poison_guard_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13: /metrics on by default, empty turns it off; claims at least one."""
    monkeypatch.chdir("/")
    monkeypatch.delenv("NOTIFIER_METRICS_ADDR", raising=False)  # tests/conftest.py sets it
    s = load_settings()
    assert (s.metrics_addr, s.max_claims) == ("127.0.0.1:9464", 5)
    monkeypatch.setenv("NOTIFIER_METRICS_ADDR", "")
    assert load_settings().metrics_addr == ""
    monkeypatch.setenv("NOTIFIER_METRICS_ADDR", "9464")
    monkeypatch.setenv("NOTIFIER_MAX_CLAIMS", "0")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "NOTIFIER_METRICS_ADDR: must be HOST:PORT" in str(info.value)
    assert "NOTIFIER_MAX_CLAIMS" in str(info.value)
