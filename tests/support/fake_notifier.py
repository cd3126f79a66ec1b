"""A Notifier stand-in for client tests: what the real server cannot show on demand
(the metadata a call arrived with, UNAVAILABLE exactly N times, TLS with client
certificates made by ``tests.support.certs``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.certs import Certs


@dataclass
class Recorder:
    """A Notifier stand-in: records metadata and requests, fails the first N calls."""

    failures: int = 0
    token: str | None = None  # when set, calls without "Bearer <token>" are UNAUTHENTICATED
    metadata: list[dict[str, str]] = field(default_factory=list)
    requests: list[Any] = field(default_factory=list)

    async def _record(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.metadata.append({k: str(v) for k, v in context.invocation_metadata() or ()})
        self.requests.append(request)
        sent = self.metadata[-1].get("authorization")
        if self.token is not None and sent != f"Bearer {self.token}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown token")
        if self.failures:
            self.failures -= 1
            retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2))
            status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message="storage down")
            status.details.add().Pack(retry)
            await context.abort_with_status(rpc_status.to_status(status))

    async def send(
        self, request: pb.SendMessageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SendMessageResponse:
        await self._record(request, context)
        return pb.SendMessageResponse(message_id="m-1", status=pb.MESSAGE_STATUS_PENDING)

    async def metrics(
        self, request: pb.GetMetricsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetMetricsResponse:
        await self._record(request, context)
        return pb.GetMetricsResponse(total=7)

    async def watch(
        self, request: pb.WatchDeliveryStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchDeliveryStatusResponse]:
        await self._record(request, context)
        yield pb.WatchDeliveryStatusResponse(message_id="m-1", status=pb.MESSAGE_STATUS_READ)

    def handler(self) -> grpc.GenericRpcHandler:
        unary = grpc.unary_unary_rpc_method_handler
        return grpc.method_handlers_generic_handler(
            "notifier.v1.Notifier",
            {
                "SendMessage": unary(
                    self.send,
                    request_deserializer=pb.SendMessageRequest.FromString,
                    response_serializer=pb.SendMessageResponse.SerializeToString,
                ),
                "GetMetrics": unary(
                    self.metrics,
                    request_deserializer=pb.GetMetricsRequest.FromString,
                    response_serializer=pb.GetMetricsResponse.SerializeToString,
                ),
                "WatchDeliveryStatus": grpc.unary_stream_rpc_method_handler(
                    self.watch,
                    request_deserializer=pb.WatchDeliveryStatusRequest.FromString,
                    response_serializer=pb.WatchDeliveryStatusResponse.SerializeToString,
                ),
            },
        )


@asynccontextmanager
async def serve(recorder: Recorder, certs: Certs | None = None) -> AsyncIterator[str]:
    """``recorder`` on an ephemeral loopback port; with ``certs``, mutual TLS only."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((recorder.handler(),))
    if certs is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        creds = grpc.ssl_server_credentials(
            [(certs.server_key.read_bytes(), certs.server_cert.read_bytes())],
            root_certificates=certs.ca.read_bytes(),
            require_client_auth=True,
        )
        port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
