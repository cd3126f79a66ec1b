"""Caller authentication: bearer tokens in gRPC metadata, checked before any handler runs.

The server keeps only SHA-256 digests of the accepted tokens (``NOTIFIER_API_TOKENS``),
so its configuration, a dump of its environment or a leaked ``.env`` never hands out a
working token. A call carries ``authorization: Bearer <token>``; the interceptor hashes
the token and compares the digest with every configured one in constant time.

The health service stays open: load balancers and orchestrators probe it without
credentials, and it reveals nothing but SERVING / NOT_SERVING. Server reflection is
behind the same tokens as the API when authentication is on (it describes the whole
API surface; grpcurl passes ``-H`` to reflection calls as well).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from notifier.api.handlers import HandlerInterceptor, same_kind

HEALTH_PREFIX = "/grpc.health.v1.Health/"
ERROR_DOMAIN = "notifier.v1"


def token_digest(token: str) -> str:
    """What goes into NOTIFIER_API_TOKENS for ``token``."""
    return hashlib.sha256(token.encode()).hexdigest()


def _status(reason: str, message: str) -> grpc.Status:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN))
    proto = status_pb2.Status(code=code_pb2.UNAUTHENTICATED, message=message, details=[info])
    status: grpc.Status = rpc_status.to_status(proto)
    return status


MISSING = _status(
    "MISSING_TOKEN",
    "this server requires a caller token: send the metadata 'authorization: Bearer <token>'",
)
MALFORMED = _status(
    "MALFORMED_AUTHORIZATION",
    "the authorization metadata must be 'Bearer <token>' (one value, Bearer scheme)",
)
INVALID = _status("INVALID_TOKEN", "the bearer token is not one this server accepts")


class TokenChecker:
    """Whether a presented token is one of the configured digests."""

    def __init__(self, digests: Sequence[str]) -> None:
        if not digests:
            raise ValueError("TokenChecker needs at least one digest")
        self._digests = tuple(bytes.fromhex(d) for d in digests)

    def accepts(self, token: str) -> bool:
        presented = hashlib.sha256(token.encode()).digest()
        # Compare with every digest and combine without short-circuiting, so the time
        # taken says neither whether nor which configured token matched.
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(presented, digest)
        return found

    def check(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> grpc.Status | None:
        """None when the metadata carries an accepted token, else the status to answer."""
        if not any(k == "authorization" for k, _ in metadata or ()):
            return MISSING
        token = bearer_token(metadata)
        if token is None:
            return MALFORMED
        return None if self.accepts(token) else INVALID


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of the one ``authorization: Bearer <token>`` header, else None."""
    values = [v for k, v in metadata or () if k == "authorization"]
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def caller_of(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """Who is calling, for scoping idempotency keys and order ids: each token is its own
    caller, named by a prefix of its SHA-256 (never the token itself); no token, ""."""
    token = bearer_token(metadata)
    return "" if token is None else "token:" + token_digest(token)[:16]


def _denied(status: grpc.Status) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]:
    async def deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort_with_status(status)

    return deny


class AuthInterceptor(HandlerInterceptor):
    """UNAUTHENTICATED (with an ErrorInfo reason) for any call without an accepted token,
    before the request is even read; the health service is exempt.

    It must come before the error interceptor, so a refused call never reaches a handler
    or storage.
    """

    def __init__(self, digests: Sequence[str]) -> None:
        self._checker = TokenChecker(digests)

    def handler_for(self, handler: Any, call: grpc.HandlerCallDetails) -> Any:
        if call.method.startswith(HEALTH_PREFIX):
            return handler
        status = self._checker.check(call.invocation_metadata)
        if status is None:
            return handler
        # No request deserializer: an unauthenticated caller's bytes are never parsed.
        deny = _denied(status)
        return same_kind(
            handler,
            lambda _: deny,
            lambda _: deny,
            response_serializer=handler.response_serializer,
        )


def auth_interceptors(digests: Sequence[str]) -> list[grpc.aio.ServerInterceptor]:
    """The interceptor, or none when no token is configured (development only: production
    refuses to start without NOTIFIER_API_TOKENS)."""
    return [AuthInterceptor(digests)] if digests else []
