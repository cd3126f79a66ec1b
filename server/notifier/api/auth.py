"""Caller authentication: bearer tokens in gRPC metadata, checked before any handler runs.

The server keeps only SHA-256 digests of the accepted tokens (``NOTIFIER_API_TOKENS``),
so its configuration, a dump of its environment or a leaked ``.env`` never hands out a
working token. A call carries ``authorization: Bearer <token>``; the interceptor hashes
the token and compares the digest with every configured one in constant time.

Entries may carry a name, scopes and allowed senders (``name:scopes:digest[:senders]``,
``domain/access.py``): once the token is known, a call to a Notifier RPC outside its
scopes is PERMISSION_DENIED (ErrorInfo MISSING_SCOPE) here, before the request is read,
by the domain's scope table; the servicer then asks ``Callers`` for the call's
``Caller`` (its owner for visibility, its name for histories, its senders).

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

from notifier.api.errors import to_status
from notifier.api.handlers import HandlerInterceptor, same_kind
from notifier.domain.access import (
    OPEN,
    Caller,
    MissingScope,
    Scope,
    TokenEntry,
    caller_for,
    owner_of,
)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
NOTIFIER_PREFIX = "/notifier.v1.Notifier/"
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
    """Which configured token, if any, a presented token is."""

    def __init__(self, entries: Sequence[TokenEntry | str]) -> None:
        if not entries:
            raise ValueError("TokenChecker needs at least one token entry")
        self._entries = tuple(
            e if isinstance(e, TokenEntry) else TokenEntry(digest=e, name=f"token-{i}")
            for i, e in enumerate(entries, 1)
        )
        self._digests = tuple(bytes.fromhex(e.digest) for e in self._entries)

    def identify(self, token: str) -> TokenEntry | None:
        presented = hashlib.sha256(token.encode()).digest()
        # Compare with every digest and combine without short-circuiting, so the time
        # taken says neither whether nor which configured token matched.
        found: TokenEntry | None = None
        for entry, digest in zip(self._entries, self._digests, strict=True):
            if hmac.compare_digest(presented, digest):
                found = entry
        return found

    def accepts(self, token: str) -> bool:
        return self.identify(token) is not None

    def caller(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Caller | None:
        """The caller of an accepted token, else None."""
        token = bearer_token(metadata)
        entry = None if token is None else self.identify(token)
        return None if entry is None else caller_for(entry)

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


def open_caller(metadata: Iterable[tuple[str, str | bytes]] | None) -> Caller:
    """Without configured tokens (development): every scope; still each presented token
    is its own owner, for scoping idempotency keys and order ids."""
    token = bearer_token(metadata)
    return OPEN if token is None else Caller(owner=owner_of(token_digest(token)))


class Callers:
    """Who is calling: the servicer asks for each call's ``Caller`` (scopes, owner,
    senders). The interceptor has already refused unknown tokens and missing scopes."""

    def __init__(self, entries: Sequence[TokenEntry]) -> None:
        self._checker = TokenChecker(entries) if entries else None

    def of(self, metadata: Any) -> Caller:
        if self._checker is None:
            return open_caller(metadata)
        caller = self._checker.caller(metadata)
        if caller is None:  # the interceptor refuses such calls before any handler
            raise MissingScope(Scope.ADMIN, "a call without an accepted token")
        return caller


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

    def __init__(self, entries: Sequence[TokenEntry]) -> None:
        self._checker = TokenChecker(entries)

    def handler_for(self, handler: Any, call: grpc.HandlerCallDetails) -> Any:
        if call.method.startswith(HEALTH_PREFIX):
            return handler
        status = self._checker.check(call.invocation_metadata) or self._scope_status(call)
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

    def _scope_status(self, call: grpc.HandlerCallDetails) -> grpc.Status | None:
        """PERMISSION_DENIED (ErrorInfo MISSING_SCOPE) for a Notifier RPC outside the
        token's scopes; the domain's table decides. Reflection needs any accepted token."""
        if not call.method.startswith(NOTIFIER_PREFIX):
            return None
        caller = self._checker.caller(call.invocation_metadata)
        assert caller is not None  # check() accepted the token
        try:
            caller.require(call.method.removeprefix(NOTIFIER_PREFIX))
        except MissingScope as exc:
            return to_status(exc)
        return None


def auth_interceptors(entries: Sequence[TokenEntry]) -> list[grpc.aio.ServerInterceptor]:
    """The interceptor, or none when no token is configured (development only: production
    refuses to start without NOTIFIER_API_TOKENS)."""
    return [AuthInterceptor(entries)] if entries else []
