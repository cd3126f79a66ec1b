"""notifier-cli's words and exit code for every kind of failure a call can end in."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from notifier_client import NotifierError
from notifier_client.cli import Exit, explain


def test_every_failure_kind_has_its_exit_code_and_plain_words() -> None:
    def err(code: grpc.StatusCode, message: str, *details: Any) -> NotifierError:
        return NotifierError(code, message, details)

    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2))
    opted_out = error_details_pb2.PreconditionFailure(
        violations=[
            error_details_pb2.PreconditionFailure.Violation(
                type="OPT_OUT", subject="+14155550100", description="the recipient opted out"
            )
        ]
    )
    cases = {
        grpc.StatusCode.UNAUTHENTICATED: (Exit.AUTH, "set NOTIFIER_TOKEN or --token"),
        grpc.StatusCode.PERMISSION_DENIED: (Exit.AUTH, "permission denied"),
        grpc.StatusCode.RESOURCE_EXHAUSTED: (Exit.UNAVAILABLE, "(retry in 2 s)"),
        grpc.StatusCode.DEADLINE_EXCEEDED: (Exit.UNAVAILABLE, "deadline exceeded"),
        grpc.StatusCode.FAILED_PRECONDITION: (Exit.REFUSED, "+14155550100: the recipient"),
        grpc.StatusCode.ALREADY_EXISTS: (Exit.REFUSED, "already exists"),
        grpc.StatusCode.INTERNAL: (Exit.ERROR, "internal"),
    }
    for code, (exit_code, words) in cases.items():
        text, got = explain(err(code, "details here", retry, opted_out), "127.0.0.1:50051")
        assert got == exit_code, code
        assert words in text, text
