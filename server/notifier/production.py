"""Startup checks: what production refuses to run without, and what development refuses.

Production fails closed. Every problem is collected first and reported at once, by
variable name, so an operator fixes a deployment in one round instead of one variable
per restart; the messages name variables and never print their values.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from pydantic import AnyHttpUrl

from notifier.config import Settings
from notifier.domain.access import duplicate_names


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost: reachable from this machine only."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host(addr: str) -> str:
    return addr.rpartition(":")[0]


def _public_https(name: str, url: AnyHttpUrl | None, problems: list[str]) -> None:
    if url is None:
        problems.append(f"{name}: not set (the public https URL Twilio calls)")
    elif url.scheme != "https":
        problems.append(f"{name}: must be an https URL (Twilio signs the URL it calls)")
    elif url.host is None or is_loopback(url.host):
        problems.append(f"{name}: must be a public URL, not a loopback one")


def production_problems(settings: Settings, part: str) -> list[str]:
    """Everything missing or unsafe for ``notifier serve PART`` in production; empty when
    it may start. ``part`` is ``all``, ``grpc`` or ``webhooks``."""
    problems: list[str] = []
    grpc_part = part in ("all", "grpc")
    if grpc_part and settings.twilio_account_sid is None:
        problems.append("TWILIO_ACCOUNT_SID: not set (Twilio credentials)")
    # The sidecar checks every webhook's signature with the auth token, and the gRPC
    # server needs it too unless an API key authenticates its REST calls; require it
    # everywhere so one environment serves both processes.
    if settings.twilio_auth_token is None:
        problems.append(
            "TWILIO_AUTH_TOKEN: not set (it checks the signature of Twilio's webhooks, "
            "even when TWILIO_API_KEY and TWILIO_API_SECRET authenticate REST calls)"
        )
    if grpc_part:
        if settings.twilio_whatsapp_from is None and settings.twilio_messaging_service_sid is None:
            problems.append("TWILIO_WHATSAPP_FROM or TWILIO_MESSAGING_SERVICE_SID: no sender set")
        base = settings.twilio_api_base_url
        if base.scheme != "https" or base.host is None or is_loopback(base.host):
            problems.append(
                "TWILIO_API_BASE_URL: must be Twilio's https API, not a loopback address "
                "(the emulator is never used in production)"
            )
        content = settings.content_api_base_url
        if settings.template_check == "twilio" and (
            content.scheme != "https" or content.host is None or is_loopback(content.host)
        ):
            problems.append(
                "NOTIFIER_CONTENT_API_BASE_URL: must be Twilio's https Content API, not a "
                "loopback address (NOTIFIER_TEMPLATE_CHECK=twilio)"
            )
        if not settings.api_tokens:
            problems.append(
                "NOTIFIER_API_TOKENS: not set (SHA-256 digests of the caller tokens; "
                "production never serves without caller authentication)"
            )
        repeated = duplicate_names(settings.token_entries)
        if repeated:
            problems.append(
                f"NOTIFIER_API_TOKENS: token name(s) {', '.join(repeated)} given to more than "
                "one entry (a history naming who acted must name one token)"
            )
        host = _host(settings.grpc_addr)
        plaintext = not settings.tls_enabled and not settings.tls_terminated_upstream
        if plaintext and not is_loopback(host):
            problems.append(
                f"NOTIFIER_TLS_CERT and NOTIFIER_TLS_KEY: not set, and NOTIFIER_GRPC_ADDR "
                f"binds {host}, not loopback (or set NOTIFIER_TLS_TERMINATED_UPSTREAM=true "
                "when a proxy or mesh in front of the server terminates TLS)"
            )
    _public_https("STATUS_CALLBACK_URL", settings.status_callback_url, problems)
    if part in ("all", "webhooks"):
        _public_https("WEBHOOK_URL", settings.webhook_url, problems)
    return problems


def development_problems(settings: Settings, part: str) -> list[str]:
    """Development is for one machine. A gRPC server open to the network without caller
    tokens would let anyone on it send messages on the operator's account; a sidecar
    open to it without TWILIO_AUTH_TOKEN accepts webhooks signed with the emulator's
    well-known token, i.e. forged ones."""
    problems = []
    host = _host(settings.grpc_addr)
    if part in ("all", "grpc") and not settings.auth_enabled and not is_loopback(host):
        problems.append(
            f"NOTIFIER_GRPC_ADDR: binds {host}, not loopback, without NOTIFIER_API_TOKENS: "
            "bind 127.0.0.1, or set NOTIFIER_API_TOKENS to require caller tokens"
        )
    host = _host(settings.http_addr)
    if part in ("all", "webhooks") and not settings.webhook_tokens and not is_loopback(host):
        problems.append(
            f"NOTIFIER_HTTP_ADDR: binds {host}, not loopback, without TWILIO_AUTH_TOKEN: "
            "bind 127.0.0.1, or set TWILIO_AUTH_TOKEN so webhook signatures mean something"
        )
    return problems


def startup_problems(settings: Settings, part: str) -> list[str]:
    if settings.is_development:
        return development_problems(settings, part)
    return production_problems(settings, part)


def report(problems: Iterable[str], env: str) -> str:
    lines = "\n  ".join(problems)
    return f"refusing to start in {env}:\n  {lines}"
