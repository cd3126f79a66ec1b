"""Telemetry's pure parts: phone numbers masked in logs and spans, and tracing configured
from the standard OpenTelemetry variables."""

from __future__ import annotations

import pytest

from notifier.domain.privacy import mask_phone, mask_phones_in
from notifier.telemetry import DISABLED, TelemetryConfigError, TracingConfig, from_env


def test_phone_numbers_are_masked_to_country_code_and_last_four() -> None:
    assert mask_phone("+14155550100") == "+1•••0100"
    assert mask_phone("whatsapp:+447700900123") == "whatsapp:+44•••0123"
    assert mask_phone("+4915112345678") == "+49•••5678"
    assert mask_phone("+1415") == "•••"  # too short to show anything of it
    assert mask_phone("not a number") == "•••"
    assert mask_phones_in("to +14155550100 and whatsapp:+447700900123, order 12345678") == (
        "to +1•••0100 and whatsapp:+44•••0123, order 12345678"
    )


@pytest.mark.parametrize(
    ("env", "exporters", "protocol"),
    [
        ({}, (), "http/protobuf"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ("otlp",), "http/protobuf"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            ("otlp",),
            "grpc",
        ),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, ("console", "otlp"), "http/protobuf"),
        ({"OTEL_TRACES_EXPORTER": "none"}, (), "http/protobuf"),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, (), "http/protobuf"),
    ],
)
def test_tracing_is_configured_from_the_standard_variables(
    env: dict[str, str], exporters: tuple[str, ...], protocol: str
) -> None:
    config = TracingConfig.from_env(env)
    assert (config.exporters, config.protocol) == (exporters, protocol)


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
    ],
)
def test_unsupported_exporters_and_protocols_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(TelemetryConfigError):
        TracingConfig.from_env(env)


def test_from_env_builds_the_exporters_and_names_the_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert from_env({}) is DISABLED
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    built = from_env({"OTEL_TRACES_EXPORTER": "console"})
    try:
        assert built.provider is not None
        assert built.provider.resource.attributes["service.name"] == "notifier"
        assert built.description == "console"
    finally:
        built.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "notifier-eu")
    built = from_env({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    try:
        assert built.provider is not None
        assert built.provider.resource.attributes["service.name"] == "notifier-eu"
        assert built.description == "otlp (grpc)"
    finally:
        built.shutdown()
