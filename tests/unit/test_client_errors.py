"""Refusals become typed exceptions with the google.rpc details already read.

The fake server answers with a status code and a google.rpc.Status in the
``grpc-status-details-bin`` trailer, as the real server does (server/notifier/api/errors.py);
the sync client raises the class and exposes the fields a caller reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

import grpc
import pytest
from google.protobuf import duration_pb2, message, timestamp_pb2
from google.rpc import error_details_pb2 as ed

from notifier_client import errors
from tests.support.fake_channel import Connect, connecting, exchange, status_trailers

C = grpc.StatusCode
Check = Callable[[errors.NotifierError], object]


@pytest.fixture
def connect(monkeypatch: pytest.MonkeyPatch) -> Iterator[Connect]:
    with connecting(monkeypatch) as connect:
        yield connect


def _bad_request(*fields: tuple[str, str]) -> ed.BadRequest:
    return ed.BadRequest(
        field_violations=[ed.BadRequest.FieldViolation(field=f, description=d) for f, d in fields]
    )


def _retry_info(seconds: int, nanos: int = 0) -> ed.RetryInfo:
    return ed.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds, nanos=nanos))


def _precondition(kind: str, subject: str, description: str) -> ed.PreconditionFailure:
    violation = ed.PreconditionFailure.Violation(
        type=kind, subject=subject, description=description
    )
    return ed.PreconditionFailure(violations=[violation])


# (case, code, details in the trailer, exception class, what the caller reads, expected)
CASES: list[tuple[str, grpc.StatusCode, list[message.Message], type, Check, object]] = [
    (
        "every bad field, in server order",
        C.INVALID_ARGUMENT,
        [_bad_request(("to", "is not a phone number"), ("media_urls[1]", "must be https"))],
        errors.InvalidArgument,
        lambda e: [str(v) for v in e.field_violations],
        ["to: is not a phone number", "media_urls[1]: must be https"],
    ),
    (
        "fields as a dict",
        C.INVALID_ARGUMENT,
        [_bad_request(("to", "is required"), ("body", "is too long"))],
        errors.InvalidArgument,
        lambda e: e.fields,
        {"to": "is required", "body": "is too long"},
    ),
    (
        "ErrorInfo reason",
        C.ALREADY_EXISTS,
        [ed.ErrorInfo(reason="IDEMPOTENCY_KEY_REUSED", domain="notifier.v1")],
        errors.AlreadyExists,
        lambda e: e.reason,
        "IDEMPOTENCY_KEY_REUSED",
    ),
    (
        "ResourceInfo",
        C.NOT_FOUND,
        [ed.ResourceInfo(resource_type="message", resource_name="01ARZ")],
        errors.NotFound,
        lambda e: e.resource,
        ("message", "01ARZ"),
    ),
    (
        "PreconditionFailure violations",
        C.FAILED_PRECONDITION,
        [_precondition("OPTED_OUT", "+14155550101", "the recipient replied STOP")],
        errors.FailedPrecondition,
        lambda e: e.preconditions,
        (errors.PreconditionViolation("OPTED_OUT", "+14155550101", "the recipient replied STOP"),),
    ),
    (
        "RetryInfo delay with ErrorInfo beside it",
        C.RESOURCE_EXHAUSTED,
        [_retry_info(2, 500_000_000), ed.ErrorInfo(reason="OUTBOX_FULL")],
        errors.ResourceExhausted,
        lambda e: (e.retry_delay, e.reason),
        (timedelta(seconds=2, milliseconds=500), "OUTBOX_FULL"),
    ),
    (
        "storage down: RetryInfo",
        C.UNAVAILABLE,
        [_retry_info(1)],
        errors.Unavailable,
        lambda e: e.retry_delay,
        timedelta(seconds=1),
    ),
    (
        "no details: every property empty",
        C.UNAUTHENTICATED,
        [],
        errors.Unauthenticated,
        lambda e: (e.field_violations, e.retry_delay, e.reason, e.resource, e.preconditions),
        ((), None, None, None, ()),
    ),
    (
        "an unknown detail type is skipped",
        C.PERMISSION_DENIED,
        [timestamp_pb2.Timestamp(seconds=1), ed.ErrorInfo(reason="READ_ONLY_TOKEN")],
        errors.PermissionDenied,
        lambda e: [type(d).__name__ for d in e.details],
        ["ErrorInfo"],
    ),
    ("code only", C.UNIMPLEMENTED, [], errors.Unimplemented, lambda e: e.code, C.UNIMPLEMENTED),
    ("code only", C.DEADLINE_EXCEEDED, [], errors.DeadlineExceeded, lambda e: e.details, ()),
    ("code only", C.CANCELLED, [], errors.Cancelled, lambda e: e.code, C.CANCELLED),
    (
        "unmapped code: the base class",
        C.INTERNAL,
        [ed.ErrorInfo(reason="BUG")],
        errors.NotifierError,
        lambda e: (type(e), e.reason),
        (errors.NotifierError, "BUG"),
    ),
]


@pytest.mark.parametrize(
    ("code", "details", "kind", "read", "expected"),
    [case[1:] for case in CASES],
    ids=[f"{case[1].name}-{case[0]}" for case in CASES],
)
def test_a_refusal_becomes_its_typed_exception_with_the_details_read(
    connect: Connect,
    code: grpc.StatusCode,
    details: list[message.Message],
    kind: type[errors.NotifierError],
    read: Check,
    expected: object,
) -> None:
    client, channel = connect()
    text = f"refused with {code.name}"
    refused = exchange(
        channel,
        "SendMessage",
        lambda: client.send("+14155550101", "hi"),
        code=code,
        details=text,
        trailers=status_trailers(code, text, *details),
    )
    with pytest.raises(kind) as info:
        refused.result()
    err = info.value
    assert (err.code, err.message, str(err)) == (code, text, f"{code.name}: {text}")
    assert isinstance(err.__cause__, grpc.aio.AioRpcError)  # the original stays reachable
    assert read(err) == expected


def test_without_a_message_the_code_names_the_failure(connect: Connect) -> None:
    client, channel = connect()
    refused = exchange(channel, "GetMetrics", client.metrics, code=C.RESOURCE_EXHAUSTED)
    with pytest.raises(errors.ResourceExhausted, match="RESOURCE_EXHAUSTED: resource exhausted"):
        refused.result()


def test_trailers_that_contradict_the_code_are_ignored_and_the_code_wins(
    connect: Connect,
) -> None:
    client, channel = connect()
    mismatched = status_trailers(C.INVALID_ARGUMENT, "nope", _bad_request(("to", "bad")))
    refused = exchange(
        channel,
        "GetMetrics",
        client.metrics,
        code=C.UNAVAILABLE,
        details="nope",
        trailers=mismatched,
    )
    with pytest.raises(errors.Unavailable) as info:
        refused.result()
    assert info.value.details == ()
    assert info.value.fields == {}
