"""Domain errors to gRPC statuses with google.rpc details, for every RPC in one place.

An interceptor keeps the servicer free of try/except and guarantees that nothing a
caller sends ends as UNKNOWN, or as a traceback in the caller's face.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from notifier.api.handlers import Deserializer, Handler, WrappingInterceptor
from notifier.domain.access import MissingScope, SenderNotAllowed
from notifier.domain.capacity import OutboxFull
from notifier.domain.errors import (
    DomainError,
    IdempotencyConflict,
    NotFound,
    PreconditionFailed,
    StorageUnavailable,
    Unsupported,
    ValidationFailed,
    Violation,
)
from notifier.telemetry import record_rpc_status

log = logging.getLogger(__name__)


def _packed(detail: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


# The status travels in trailing metadata, which gRPC clients cap (8 KiB soft, 16 KiB
# hard by default): past that the caller sees RESOURCE_EXHAUSTED "Stream removed"
# instead of our code. Whatever a caller sent is echoed shortened, and violations stop
# at a budget with a note of how many more there were.
MAX_ECHO = 120
DETAILS_BUDGET = 3_000


def short(text: str, limit: int = MAX_ECHO) -> str:
    """``text`` cut to ``limit`` characters, marked as cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def to_status(exc: DomainError) -> grpc.Status:
    """The status (code, message, details) a caller gets for ``exc``."""
    code, details = _classify(exc)
    proto = status_pb2.Status(
        code=code, message=short(str(exc), 2 * MAX_ECHO), details=[_packed(d) for d in details]
    )
    status: grpc.Status = rpc_status.to_status(proto)
    return status


def _bad_request(violations: list[Violation]) -> error_details_pb2.BadRequest:
    bad = error_details_pb2.BadRequest()
    for i, v in enumerate(violations):
        if bad.ByteSize() > DETAILS_BUDGET:
            bad.field_violations.add(
                field="request", description=f"{len(violations) - i} more violation(s) not shown"
            )
            break
        bad.field_violations.add(field=short(v.field), description=short(v.description))
    return bad


def _classify(exc: DomainError) -> tuple[int, list[Any]]:
    if isinstance(exc, ValidationFailed):
        return code_pb2.INVALID_ARGUMENT, [_bad_request(exc.violations)]
    if isinstance(exc, NotFound):
        info = error_details_pb2.ResourceInfo(
            resource_type=exc.kind, resource_name=short(exc.ref), description=short(str(exc))
        )
        return code_pb2.NOT_FOUND, [info]
    if isinstance(exc, IdempotencyConflict):
        info = error_details_pb2.ResourceInfo(
            resource_type="idempotency_key",
            resource_name=short(exc.key),
            description=f"already names message {exc.message_id}",
        )
        return code_pb2.ALREADY_EXISTS, [info]
    if isinstance(exc, PreconditionFailed):
        violation = error_details_pb2.PreconditionFailure.Violation(
            type=exc.kind, subject=short(exc.subject), description=short(exc.description)
        )
        return code_pb2.FAILED_PRECONDITION, [
            error_details_pb2.PreconditionFailure(violations=[violation])
        ]
    if isinstance(exc, OutboxFull):
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(exc.retry_after_seconds * 1000))
        info = error_details_pb2.ErrorInfo(
            reason="OUTBOX_FULL",
            domain="notifier.v1",
            metadata={"capacity": str(exc.capacity)},
        )
        return code_pb2.RESOURCE_EXHAUSTED, [error_details_pb2.RetryInfo(retry_delay=delay), info]
    if isinstance(exc, MissingScope):
        info = error_details_pb2.ErrorInfo(
            reason="MISSING_SCOPE", domain="notifier.v1", metadata={"scope": exc.scope.value}
        )
        return code_pb2.PERMISSION_DENIED, [info]
    if isinstance(exc, SenderNotAllowed):
        info = error_details_pb2.ErrorInfo(
            reason="SENDER_NOT_ALLOWED", domain="notifier.v1", metadata={"sender": exc.sender}
        )
        return code_pb2.PERMISSION_DENIED, [info]
    if isinstance(exc, Unsupported):
        return code_pb2.UNIMPLEMENTED, []
    if isinstance(exc, StorageUnavailable):
        retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1))
        return code_pb2.UNAVAILABLE, [retry]
    return code_pb2.FAILED_PRECONDITION, []


_UNDECODABLE = object()


def _bad_message() -> ValidationFailed:
    return ValidationFailed(
        [Violation("request", "is not a valid protobuf message for this method (bytes or UTF-8)")]
    )


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that marks bytes it cannot decode instead of raising, so the caller
    gets INVALID_ARGUMENT rather than gRPC's own UNKNOWN or INTERNAL."""
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return _UNDECODABLE

    return decode


def _checked(request: Any) -> Any:
    """The request, or for a stream a stream that raises at the first undecodable message."""
    if request is _UNDECODABLE:
        raise _bad_message()
    if hasattr(request, "__aiter__"):
        return _checked_stream(request)
    return request


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if request is _UNDECODABLE:
            raise _bad_message()
        yield request


class ErrorInterceptor(WrappingInterceptor):
    """Aborts with the mapped status; calls ``on_storage_down`` so health follows."""

    def __init__(self, on_storage_down: Callable[[], Awaitable[None]] | None = None) -> None:
        super().__init__()
        self._on_storage_down = on_storage_down

    def deserializer(self, original: Deserializer) -> Deserializer:
        return _tolerant(original)

    def wrap_unary(self, behavior: Handler, method: str) -> Handler:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                return await behavior(_checked(request), context)
            except Exception as exc:  # every outcome becomes a proper status
                await self._abort(exc, context, method)

        return wrapper

    def wrap_stream(self, behavior: Handler, method: str) -> Handler:
        async def wrapper(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            try:
                result = behavior(_checked(request), context)
                if inspect.isawaitable(result):  # a handler that only aborts or writes
                    await result
                    return
                async for response in result:
                    yield response
            except Exception as exc:
                await self._abort(exc, context, method)

        return wrapper

    async def _abort(
        self, exc: Exception, context: grpc.aio.ServicerContext[Any, Any], method: str
    ) -> None:
        if isinstance(exc, grpc.aio.AbortError):
            raise exc
        if isinstance(exc, DomainError):
            if isinstance(exc, StorageUnavailable) and self._on_storage_down is not None:
                log.warning("storage unavailable during %s: %s", method, exc)
                await self._on_storage_down()
            status = to_status(exc)
            record_rpc_status(status.code)
            await context.abort_with_status(status)
        ref = uuid.uuid4().hex[:12]
        log.exception("unexpected error in %s (ref %s)", method, ref)
        record_rpc_status(grpc.StatusCode.INTERNAL)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error (ref {ref})")
