"""Reading gRPC answers the way a caller would: error details and health."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status


def details(err: grpc.aio.AioRpcError) -> list[Any]:
    """The google.rpc detail messages carried by ``err``, unpacked."""
    status = rpc_status.from_call(err)
    assert status is not None, "no google.rpc.Status in the trailers"
    out: list[Any] = []
    for packed in status.details:
        for kind in (
            error_details_pb2.BadRequest,
            error_details_pb2.ResourceInfo,
            error_details_pb2.RetryInfo,
            error_details_pb2.PreconditionFailure,
        ):
            if packed.Is(kind.DESCRIPTOR):
                msg = kind()
                packed.Unpack(msg)
                out.append(msg)
    return out


def field_violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    (bad,) = [d for d in details(err) if isinstance(d, error_details_pb2.BadRequest)]
    return {v.field: v.description for v in bad.field_violations}


async def health(channel: grpc.aio.Channel, service: str = "notifier.v1.Notifier") -> int:
    """What grpc.health.v1 Check says of ``service`` ("" is the whole server)."""
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service)
    )
    return int(reply.status)
