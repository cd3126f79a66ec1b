"""Configuration from environment variables (and an optional ``.env`` file).

Every setting is read once at startup and validated; a bad value stops the process
with a message naming the variable, so a typo never becomes a runtime surprise.
"""

from __future__ import annotations

import os
import re
import ssl
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AnyHttpUrl,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from notifier.dispatch.senders import SenderProfile, parse_senders, resolve
from notifier.domain.access import TokenEntry, parse_token_entries
from notifier.domain.fallback import FallbackPolicy
from notifier.domain.lifecycle import Lifecycle, parse_duration
from notifier.domain.model import DEFAULT_SENDER
from notifier.domain.retry import RetryPolicy

_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")


class ConfigError(Exception):
    """Raised with one line per bad variable."""


def _addr(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:50051")
    return value


def _split(value: object) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    raise ValueError("must be a comma-separated list")


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration_seconds(value: object) -> float:
    """``30s``, ``10m``, ``72h``, ``2d`` (a bare number is seconds) as seconds, above 0."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        found = _DURATION.match(str(value).strip())
        if not found:
            raise ValueError("must be a duration like 30s, 10m, 72h or 2d")
        seconds = float(found.group(1)) * _UNIT_SECONDS[found.group(2) or "s"]
    if seconds <= 0:
        raise ValueError("must be longer than 0")
    return seconds


def _check_certificates(path: Path, variable: str) -> None:
    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError:
        raise ValueError(f"{variable}: {path} holds no PEM certificate") from None


def _check_tls_files(cert: Path, key: Path, client_ca: Path | None) -> None:
    """Load the files the way the server will, at startup: gRPC itself only reports
    a bad or mismatched key as an obscure handshake failure on the first call."""
    _check_certificates(cert, "NOTIFIER_TLS_CERT")
    if client_ca is not None:
        _check_certificates(client_ca, "NOTIFIER_TLS_CLIENT_CA")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A password callback that gives none: an encrypted key fails here instead of
        # prompting on the terminal.
        context.load_cert_chain(str(cert), str(key), password=lambda: "")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(
                f"NOTIFIER_TLS_KEY: {key} does not match the certificate in NOTIFIER_TLS_CERT"
            ) from None
        raise ValueError(f"NOTIFIER_TLS_KEY: {key} holds no unencrypted PEM private key") from None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    env: Literal["development", "production"] = Field("development", alias="NOTIFIER_ENV")
    grpc_addr: str = Field("127.0.0.1:50051", alias="NOTIFIER_GRPC_ADDR")
    http_addr: str = Field("127.0.0.1:8080", alias="NOTIFIER_HTTP_ADDR")
    database_url: str = Field("sqlite+aiosqlite:///./notifier.db", alias="NOTIFIER_DATABASE_URL")

    twilio_account_sid: str | None = Field(
        None, alias="TWILIO_ACCOUNT_SID", pattern=r"^AC[0-9a-f]{32}$"
    )
    twilio_auth_token: SecretStr | None = Field(None, alias="TWILIO_AUTH_TOKEN")
    twilio_auth_token_secondary: SecretStr | None = Field(None, alias="TWILIO_AUTH_TOKEN_SECONDARY")
    twilio_api_key: str | None = Field(None, alias="TWILIO_API_KEY", pattern=r"^SK[0-9a-f]{32}$")
    twilio_api_secret: SecretStr | None = Field(None, alias="TWILIO_API_SECRET")
    twilio_whatsapp_from: str | None = Field(None, alias="TWILIO_WHATSAPP_FROM")
    twilio_messaging_service_sid: str | None = Field(
        None, alias="TWILIO_MESSAGING_SERVICE_SID", pattern=r"^MG[0-9a-f]{32}$"
    )
    twilio_api_base_url: AnyHttpUrl = Field(
        AnyHttpUrl("https://api.twilio.com"), alias="TWILIO_API_BASE_URL"
    )
    status_callback_url: AnyHttpUrl | None = Field(None, alias="STATUS_CALLBACK_URL")
    webhook_url: AnyHttpUrl | None = Field(None, alias="WEBHOOK_URL")
    admin_whatsapp_numbers: Annotated[list[str], NoDecode] = Field(
        default_factory=list, alias="ADMIN_WHATSAPP_NUMBERS"
    )
    api_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list, alias="NOTIFIER_API_TOKENS"
    )
    tls_cert: Path | None = Field(None, alias="NOTIFIER_TLS_CERT")
    tls_key: Path | None = Field(None, alias="NOTIFIER_TLS_KEY")
    tls_client_ca: Path | None = Field(None, alias="NOTIFIER_TLS_CLIENT_CA")
    tls_terminated_upstream: bool = Field(False, alias="NOTIFIER_TLS_TERMINATED_UPSTREAM")
    outbox_capacity: int = Field(1_000_000, alias="NOTIFIER_OUTBOX_CAPACITY", ge=1)

    dispatch_concurrency: int = Field(32, alias="NOTIFIER_DISPATCH_CONCURRENCY", ge=1, le=1024)
    rate_limit_per_second: float = Field(80, alias="NOTIFIER_RATE_LIMIT_PER_SECOND", gt=0)
    twilio_timeout_seconds: float = Field(10, alias="NOTIFIER_TWILIO_TIMEOUT_SECONDS", gt=0)
    retry_max_attempts: int = Field(8, alias="NOTIFIER_RETRY_MAX_ATTEMPTS", ge=1, le=100)
    retry_base_seconds: float = Field(1, alias="NOTIFIER_RETRY_BASE_SECONDS", gt=0)
    retry_cap_seconds: float = Field(300, alias="NOTIFIER_RETRY_CAP_SECONDS", gt=0)
    # Issue 17: the first wait after WhatsApp deferred a send (63049), doubling to an hour.
    deferral_base_seconds: float = Field(300, alias="NOTIFIER_DEFERRAL_BASE")
    ambiguous_policy: Literal["retry", "fail"] = Field("retry", alias="NOTIFIER_AMBIGUOUS_POLICY")

    dispatcher_enabled: bool = Field(True, alias="NOTIFIER_DISPATCHER_ENABLED")
    lease_seconds: float = Field(60, alias="NOTIFIER_LEASE_SECONDS", ge=1)
    emulator_addr: str = Field("127.0.0.1:8090", alias="NOTIFIER_EMULATOR_ADDR")
    status_path: str = Field("/api/v1/whatsapp/status", alias="NOTIFIER_STATUS_PATH")
    inbound_path: str = Field("/api/v1/whatsapp/webhook", alias="NOTIFIER_INBOUND_PATH")
    webhook_max_bytes: int = Field(65_536, alias="NOTIFIER_WEBHOOK_MAX_BYTES", ge=1024)
    opt_out_keywords: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"],
        alias="NOTIFIER_OPT_OUT_KEYWORDS",
    )
    opt_in_keywords: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["START", "YES", "UNSTOP"], alias="NOTIFIER_OPT_IN_KEYWORDS"
    )
    refuse_outside_window: bool = Field(False, alias="NOTIFIER_REFUSE_OUTSIDE_WINDOW")
    idempotency_ttl_hours: float = Field(24, alias="NOTIFIER_IDEMPOTENCY_TTL_HOURS", ge=24)
    shutdown_grace_seconds: float = Field(10, alias="NOTIFIER_SHUTDOWN_GRACE_SECONDS", ge=0)
    health_interval_seconds: float = Field(1, alias="NOTIFIER_HEALTH_INTERVAL_SECONDS", gt=0)
    watch_poll_seconds: float = Field(0.2, alias="NOTIFIER_WATCH_POLL_SECONDS", gt=0, le=60)
    migrate_on_start: bool | None = Field(None, alias="NOTIFIER_MIGRATE_ON_START")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", alias="NOTIFIER_LOG_LEVEL"
    )

    # Issue 13: Prometheus metrics of the gRPC process and the poison-message guard.
    # HOST:PORT of /metrics; empty turns it off.
    metrics_addr: str = Field("127.0.0.1:9464", alias="NOTIFIER_METRICS_ADDR")
    # Claims without a recorded outcome after which a message fails instead of being
    # sent again (domain/poison.py).
    max_claims: int = Field(5, alias="NOTIFIER_MAX_CLAIMS", ge=1, le=1000)
    # Issue 18: reconciliation with Twilio when status callbacks do not come.
    reconcile_after_seconds: float = Field(600, alias="NOTIFIER_RECONCILE_AFTER")
    reconcile_give_up_seconds: float = Field(72 * 3600, alias="NOTIFIER_RECONCILE_GIVE_UP")
    reconcile_rate_per_second: float = Field(
        5, alias="NOTIFIER_RECONCILE_RATE_PER_SECOND", gt=0, le=100
    )

    # Issue 17: template pre-flight. "local": Meta's parameter rules only; "twilio": also
    # the variables against the template's placeholders from Twilio's Content API.
    template_check: Literal["local", "twilio"] = Field("local", alias="NOTIFIER_TEMPLATE_CHECK")
    content_api_base_url: AnyHttpUrl = Field(
        AnyHttpUrl("https://content.twilio.com"), alias="NOTIFIER_CONTENT_API_BASE_URL"
    )
    template_cache_ttl_seconds: float = Field(600, alias="NOTIFIER_TEMPLATE_CACHE_TTL")
    # Issue 17: SMS fallback of failed WhatsApp messages, and who is not on WhatsApp.
    sms_fallback_codes: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [63003, 63024, 63032], alias="NOTIFIER_SMS_FALLBACK_CODES"
    )
    not_on_whatsapp_ttl_seconds: float = Field(30 * 86400, alias="NOTIFIER_NOT_ON_WHATSAPP_TTL")

    @field_validator(
        "reconcile_after_seconds",
        "reconcile_give_up_seconds",
        "template_cache_ttl_seconds",
        "not_on_whatsapp_ttl_seconds",
        "deferral_base_seconds",
        mode="before",
    )
    @classmethod
    def _check_duration(cls, value: object) -> float:
        return _duration_seconds(value)

    # Data lifecycle (issue 15): how long messages keep their content, and live at all.
    retention: str = Field("90d", alias="NOTIFIER_RETENTION")
    redact_after: str = Field("7d", alias="NOTIFIER_REDACT_AFTER")

    @field_validator("retention")
    @classmethod
    def _check_retention(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("redact_after")
    @classmethod
    def _check_redact_after(cls, value: str) -> str:
        parse_duration(value, allow_off=True)
        return value

    @property
    def lifecycle(self) -> Lifecycle:
        retention = parse_duration(self.retention)
        assert retention is not None
        return Lifecycle(retention, parse_duration(self.redact_after, allow_off=True))

    @field_validator("sms_fallback_codes", mode="before")
    @classmethod
    def _check_codes(cls, value: object) -> list[int]:
        parts = _split(value)
        if any(not p.isdigit() for p in parts):
            raise ValueError("must be comma-separated Twilio error codes, e.g. 63003,63024,63032")
        return [int(p) for p in parts]

    def retry_policy(self) -> RetryPolicy:
        """The backoff of failed sends, for the dispatcher and for status reports that
        defer a send (a 63049 or 63018 callback re-queues the message)."""
        return RetryPolicy(
            base_seconds=self.retry_base_seconds,
            cap_seconds=self.retry_cap_seconds,
            max_attempts=self.retry_max_attempts,
            deferred_base_seconds=self.deferral_base_seconds,
        )

    def fallback_policy(self) -> FallbackPolicy:
        return FallbackPolicy(
            frozenset(self.sms_fallback_codes), int(self.not_on_whatsapp_ttl_seconds * 1000)
        )

    @field_validator("grpc_addr", "http_addr", "emulator_addr")
    @classmethod
    def _check_addr(cls, value: str) -> str:
        return _addr(value)

    @field_validator("metrics_addr")
    @classmethod
    def _check_metrics_addr(cls, value: str) -> str:
        return _addr(value) if value.strip() else ""

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value

    @field_validator("opt_out_keywords", "opt_in_keywords", mode="before")
    @classmethod
    def _check_keywords(cls, value: object) -> list[str]:
        words = [w.upper() for w in _split(value)]
        if any(not w.isalnum() for w in words):
            raise ValueError("must be comma-separated single words, e.g. STOP,UNSUBSCRIBE")
        return words

    @field_validator("status_path", "inbound_path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must be a path starting with /")
        return value

    @field_validator("twilio_whatsapp_from")
    @classmethod
    def _check_from(cls, value: str | None) -> str | None:
        if value is not None and not _E164.match(value.removeprefix("whatsapp:")):
            raise ValueError("must be an E.164 number, e.g. whatsapp:+14155238886")
        return value

    @field_validator("admin_whatsapp_numbers", mode="before")
    @classmethod
    def _check_admins(cls, value: object) -> list[str]:
        numbers = [n.removeprefix("whatsapp:") for n in _split(value)]
        bad = [n for n in numbers if not _E164.match(n)]
        if bad:
            raise ValueError(f"not E.164 numbers: {', '.join(bad)}")
        return numbers

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _check_tokens(cls, value: object) -> list[str]:
        entries = _split(value)
        # parse_token_entries names a wrong entry by position, never by value: a raw
        # token pasted here by mistake must not end up in a log.
        parse_token_entries(entries)
        return [e if ":" in e else e.lower() for e in entries]

    # --- issue 16: scoped tokens and sender profiles -------------------------------
    # NOTIFIER_API_TOKENS entries may be name:scopes:digest[:senders] (domain/access.py);
    # NOTIFIER_SENDERS is a JSON object of named sender profiles (dispatch/senders.py).
    senders_json: str = Field("", alias="NOTIFIER_SENDERS")

    @field_validator("senders_json")
    @classmethod
    def _check_senders(cls, value: str) -> str:
        parse_senders(value)
        return value

    @property
    def token_entries(self) -> list[TokenEntry]:
        return parse_token_entries(self.api_tokens)

    @property
    def sender_profiles(self) -> dict[str, SenderProfile]:
        """Every sender profile by name, "default" first, each complete."""
        default = SenderProfile(
            name=DEFAULT_SENDER,
            whatsapp_from=self.twilio_whatsapp_from,
            messaging_service_sid=self.twilio_messaging_service_sid,
            rate_per_second=self.rate_limit_per_second,
        )
        return resolve(default, parse_senders(self.senders_json))

    def _check_token_senders(self) -> None:
        known = self.sender_profiles
        for i, entry in enumerate(self.token_entries, 1):
            unknown = sorted((entry.senders or frozenset()) - set(known))
            if unknown:
                raise ValueError(
                    f"NOTIFIER_API_TOKENS: entry {i} names unknown sender(s) "
                    f"{', '.join(unknown)} (configured: {', '.join(known)})"
                )

    # --- end of issue 16 -------------------------------------------------------------

    @field_validator("tls_cert", "tls_key", "tls_client_ca")
    @classmethod
    def _check_file(cls, value: Path | None) -> Path | None:
        if value is None:
            return value
        if not value.is_file():
            raise ValueError(f"no such file: {value}")
        if not os.access(value, os.R_OK):
            raise ValueError(f"cannot read {value}: permission denied")
        return value

    @model_validator(mode="after")
    def _check_pairs(self) -> Settings:
        if (self.twilio_api_key is None) != (self.twilio_api_secret is None):
            raise ValueError("TWILIO_API_KEY and TWILIO_API_SECRET go together")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("NOTIFIER_TLS_CERT and NOTIFIER_TLS_KEY go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("NOTIFIER_TLS_CLIENT_CA needs NOTIFIER_TLS_CERT and NOTIFIER_TLS_KEY")
        if self.tls_cert is not None and self.tls_key is not None:
            _check_tls_files(self.tls_cert, self.tls_key, self.tls_client_ca)
        if self.lease_seconds <= self.twilio_timeout_seconds:
            raise ValueError(
                "NOTIFIER_LEASE_SECONDS must exceed NOTIFIER_TWILIO_TIMEOUT_SECONDS, or a slow "
                "send would lose its lease and go out twice"
            )
        if self.reconcile_give_up_seconds <= self.reconcile_after_seconds:
            raise ValueError(
                "NOTIFIER_RECONCILE_GIVE_UP must exceed NOTIFIER_RECONCILE_AFTER, or no "
                "message would ever be fetched"
            )
        if self.retry_base_seconds > self.retry_cap_seconds:
            raise ValueError(
                "NOTIFIER_RETRY_BASE_SECONDS must not exceed NOTIFIER_RETRY_CAP_SECONDS"
            )
        self._check_token_senders()
        return self

    @property
    def is_development(self) -> bool:
        return self.env == "development"

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_tokens)

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None

    @property
    def should_migrate_on_start(self) -> bool:
        if self.migrate_on_start is None:
            return self.is_development
        return self.migrate_on_start

    @property
    def webhook_tokens(self) -> list[str]:
        """Tokens that may sign Twilio's requests: the auth token, and during a rotation
        the secondary one (webhooks are signed with the auth token even when REST calls
        use an API key)."""
        return [
            t.get_secret_value()
            for t in (self.twilio_auth_token, self.twilio_auth_token_secondary)
            if t is not None
        ]

    @property
    def has_twilio_credentials(self) -> bool:
        token = self.twilio_auth_token is not None or self.twilio_api_secret is not None
        return self.twilio_account_sid is not None and token


def load_settings(**overrides: object) -> Settings:
    """Read the environment, turning pydantic's errors into one line per variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "configuration"
            message = err["msg"].removeprefix("Value error, ")
            lines.append(f"{name}: {message}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
