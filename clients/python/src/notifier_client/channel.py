"""The channel: TLS, bearer token and the retry policy in the gRPC service config.

Retries live in the service config (``grpc.service_config``), not in a Python loop, so
gRPC core does them: with backoff and jitter, only while no response has started, with
retry throttling when the server is really down, and for raw stub calls on the same
channel too. What is retried, and why it is safe:

* reads (GetDeliveryStatus, GetMetrics, ListMessages, WatchDeliveryStatus): always.
* CancelMessage: idempotent (canceling a canceled message answers OK).
* RetryMessages: a repeat finds the messages PENDING and skips them.
* EraseRecipient: idempotent (a repeat erases nothing more; Twilio answers 404 for a
  copy it already deleted, which counts as deleted).
* NotifyOrder / NotifyAdmins: idempotent per order id or natural key; the client gives
  custom notifications, which have none, a generated key.
* SendMessage: only safe with an idempotency key, because an UNAVAILABLE seen by the
  client may come after the server committed the row. The client therefore always sends
  one (the caller's, or a generated ``auto-...`` key); with ``retry_sends=False`` it
  sends none of its own and SendMessage is left out of the policy.
* SendBulk is never retried: a stream the server already partly committed would be
  replayed, duplicating the items without keys. Rerun it with per-item keys instead.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

SERVICE = "notifier.v1.Notifier"
SAFE_METHODS = (
    "GetDeliveryStatus",
    "GetMetrics",
    "ListMessages",
    "WatchDeliveryStatus",
    "CancelMessage",
    "RetryMessages",
    "NotifyOrder",
    "NotifyAdmins",
    "EraseRecipient",
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """gRPC's retryPolicy for UNAVAILABLE; gRPC caps ``max_attempts`` at 5."""

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    backoff_multiplier: float = 2.0


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS settings; every field optional (system roots, no client certificate).

    ``server_name`` overrides the name checked in the server's certificate, for
    addresses (IPs, tunnels) that are not the certificate's name.
    """

    root_ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("a client certificate needs its key, and the other way round")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.root_ca),
            private_key=_read(self.client_key),
            certificate_chain=_read(self.client_cert),
        )


_RETRY = RetryPolicy()


def _read(path: Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


def service_config(policy: RetryPolicy, *, retry_sends: bool) -> str:
    """The service config JSON: one retryPolicy for every method safe to repeat."""
    methods = [*SAFE_METHODS, "SendMessage"] if retry_sends else list(SAFE_METHODS)
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{"service": SERVICE, "method": m} for m in methods],
                    "retryPolicy": {
                        "maxAttempts": policy.max_attempts,
                        "initialBackoff": f"{policy.initial_backoff}s",
                        "maxBackoff": f"{policy.max_backoff}s",
                        "backoffMultiplier": policy.backoff_multiplier,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
            # Stop retrying when most calls fail: a down server should not get 5x load.
            "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
        }
    )


def _host(address: str) -> str:
    target = address
    for prefix in ("dns:", "ipv4:", "ipv6:"):
        target = target.removeprefix(prefix)
    target = target.lstrip("/")
    if target.startswith("["):  # [::1]:50051
        return target[1:].split("]", 1)[0]
    return target.rsplit(":", 1)[0] if target.count(":") == 1 else target


def is_loopback(address: str) -> bool:
    """True for localhost / 127.x / ::1 targets, where plaintext never leaves the host."""
    host = _host(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _with_token(details: grpc.aio.ClientCallDetails, token: str) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    metadata.add("authorization", f"Bearer {token}")
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _BearerUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(_with_token(client_call_details, self._token), request)


class _BearerUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(_with_token(client_call_details, self._token), request)


class _BearerStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[Any] | Iterable[Any],
    ) -> Any:
        return await continuation(_with_token(client_call_details, self._token), request_iterator)


class _BearerStreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[Any] | Iterable[Any],
    ) -> Any:
        return await continuation(_with_token(client_call_details, self._token), request_iterator)


def bearer_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors adding ``authorization: Bearer <token>`` to every kind of call.

    gRPC's call credentials refuse plaintext channels, so for development servers on
    loopback the token travels as plain metadata instead. grpc.aio files an interceptor
    under its first matching kind only, hence one object per kind.
    """
    return [
        _BearerUnaryUnary(token),
        _BearerUnaryStream(token),
        _BearerStreamUnary(token),
        _BearerStreamStream(token),
    ]


def create_channel(
    address: str,
    *,
    token: str | None = None,
    tls: TlsConfig | None = None,
    retry: RetryPolicy | None = _RETRY,
    retry_sends: bool = True,
    allow_plaintext_token: bool = False,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """A grpc.aio channel to ``address`` with the retry policy, TLS and token applied.

    With TLS the token rides on gRPC's access-token call credentials; without it, on an
    interceptor, and only to a loopback address unless ``allow_plaintext_token`` (a
    bearer token sent in plaintext over a network can be read by anyone on the path).
    """
    opts: list[tuple[str, Any]] = [("grpc.enable_retries", 1)]
    if retry is not None:
        opts.append(("grpc.service_config", service_config(retry, retry_sends=retry_sends)))
    if tls is not None and tls.server_name:
        opts.append(("grpc.ssl_target_name_override", tls.server_name))
    opts.extend(options)
    if tls is not None:
        creds = tls.credentials()
        if token:
            creds = grpc.composite_channel_credentials(
                creds, grpc.access_token_call_credentials(token)
            )
        return grpc.aio.secure_channel(address, creds, options=opts)
    if token and not (allow_plaintext_token or is_loopback(address)):
        raise ValueError(
            f"refusing to send a bearer token in plaintext to {address}: "
            "use TLS, or allow plaintext tokens explicitly"
        )
    interceptors = bearer_interceptors(token) if token else None
    return grpc.aio.insecure_channel(address, options=opts, interceptors=interceptors)
