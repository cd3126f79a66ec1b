"""Typed exceptions for failed calls, carrying the server's google.rpc details.

The server puts a ``google.rpc.Status`` in the trailers of every refusal (BadRequest field
violations, ResourceInfo, PreconditionFailure, RetryInfo, ErrorInfo). Callers should not
have to unpack ``Any`` messages to learn which field was wrong or how long to wait, so
every ``grpc.aio.AioRpcError`` is turned into one of the classes below with those details
already read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request: its path (``to``, ``media_urls[1]``) and why."""

    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}"


@dataclass(frozen=True, slots=True)
class PreconditionViolation:
    """Why the state of things refuses the call (e.g. an opted-out recipient)."""

    type: str
    subject: str
    description: str


_DETAIL_TYPES: tuple[Any, ...] = (
    error_details_pb2.BadRequest,
    error_details_pb2.RetryInfo,
    error_details_pb2.ErrorInfo,
    error_details_pb2.ResourceInfo,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.DebugInfo,
    error_details_pb2.QuotaFailure,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
)


class NotifierError(Exception):
    """A call the server (or the transport) refused; ``code`` is the gRPC status code.

    ``details`` holds every unpacked google.rpc detail; the properties below read the
    common ones so callers rarely need it.
    """

    def __init__(self, code: grpc.StatusCode, message: str, details: tuple[Any, ...] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    @property
    def field_violations(self) -> tuple[FieldViolation, ...]:
        """Every bad field named by a google.rpc.BadRequest detail, in server order."""
        return tuple(
            FieldViolation(v.field, v.description)
            for d in self._of(error_details_pb2.BadRequest)
            for v in d.field_violations
        )

    @property
    def fields(self) -> dict[str, str]:
        """The field violations as ``{field: description}``."""
        return {v.field: v.description for v in self.field_violations}

    @property
    def retry_delay(self) -> timedelta | None:
        """How long the server asks the caller to wait (google.rpc.RetryInfo), if it says."""
        for d in self._of(error_details_pb2.RetryInfo):
            return timedelta(
                seconds=d.retry_delay.seconds, microseconds=d.retry_delay.nanos // 1000
            )
        return None

    @property
    def reason(self) -> str | None:
        """The machine-readable reason of a google.rpc.ErrorInfo detail, if any."""
        for d in self._of(error_details_pb2.ErrorInfo):
            return str(d.reason)
        return None

    @property
    def resource(self) -> tuple[str, str] | None:
        """(resource_type, resource_name) of a google.rpc.ResourceInfo detail, if any."""
        for d in self._of(error_details_pb2.ResourceInfo):
            return str(d.resource_type), str(d.resource_name)
        return None

    @property
    def preconditions(self) -> tuple[PreconditionViolation, ...]:
        """The violations of a google.rpc.PreconditionFailure detail."""
        return tuple(
            PreconditionViolation(v.type, v.subject, v.description)
            for d in self._of(error_details_pb2.PreconditionFailure)
            for v in d.violations
        )

    def _of(self, kind: type[Any]) -> list[Any]:
        return [d for d in self.details if isinstance(d, kind)]


class InvalidArgument(NotifierError):
    """INVALID_ARGUMENT: see ``field_violations`` for every bad field at once."""


class NotFound(NotifierError):
    """NOT_FOUND: an unknown message id or Twilio SID (see ``resource``)."""


class AlreadyExists(NotifierError):
    """ALREADY_EXISTS: an idempotency key reused with a different payload."""


class FailedPrecondition(NotifierError):
    """FAILED_PRECONDITION: e.g. opted-out recipient, message Twilio already has."""


class ResourceExhausted(NotifierError):
    """RESOURCE_EXHAUSTED: the outbox is full; wait ``retry_delay`` and try again."""


class Unavailable(NotifierError):
    """UNAVAILABLE: server or its storage unreachable (after the channel's own retries)."""


class DeadlineExceeded(NotifierError):
    """DEADLINE_EXCEEDED: the call's deadline passed; the outcome may be unknown."""


class Unauthenticated(NotifierError):
    """UNAUTHENTICATED: no or an unknown bearer token."""


class PermissionDenied(NotifierError):
    """PERMISSION_DENIED: the token may not make this call."""


class Unimplemented(NotifierError):
    """UNIMPLEMENTED: this server version does not serve the RPC."""


class Cancelled(NotifierError):
    """CANCELLED: the call was cancelled (usually by this side)."""


_BY_CODE: dict[grpc.StatusCode, type[NotifierError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.CANCELLED: Cancelled,
}


def _unpack(packed: any_pb2.Any) -> Any | None:
    for kind in _DETAIL_TYPES:
        if packed.Is(kind.DESCRIPTOR):
            msg = kind()
            packed.Unpack(msg)
            return msg
    return None


def _details(err: grpc.aio.AioRpcError) -> tuple[Any, ...]:
    try:
        status = rpc_status.from_call(err)
    except ValueError:  # trailers disagree with the call's code: trust the code
        return ()
    if status is None:
        return ()
    found = (_unpack(packed) for packed in status.details)
    return tuple(d for d in found if d is not None)


def from_rpc_error(err: grpc.aio.AioRpcError) -> NotifierError:
    """The typed exception for a failed call, with its google.rpc details unpacked."""
    code = err.code()
    cls = _BY_CODE.get(code, NotifierError)
    return cls(code, err.details() or code.name.lower().replace("_", " "), _details(err))
