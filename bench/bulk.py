"""SendBulk recipients accepted durably (SQLite) beside a bare bidirectional echo stream."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc

from bench.common import Figure, Stopwatch, bench_settings, scale
from notifier.server import create_server
from notifier_proto.v1 import notifier_pb2 as pb
from notifier_proto.v1 import notifier_pb2_grpc

ITEMS = scale(50_000, 1_000)
PER_REQUEST = 500
TARGET = 5_000


def _requests() -> Iterator[pb.SendBulkRequest]:
    defaults = pb.BulkContent(content_sid="HX" + "ab" * 16, variables={"1": "Shop"})
    for start in range(0, ITEMS, PER_REQUEST):
        items = [
            pb.BulkItem(
                correlation_id=str(i),
                to=f"+1415555{i % 10000:04d}",
                variables={"2": f"customer {i}"},
            )
            for i in range(start, start + PER_REQUEST)
        ]
        yield pb.SendBulkRequest(defaults=defaults if start == 0 else None, items=items)


async def _echo(
    request_iterator: AsyncIterator[pb.SendBulkRequest], context: Any
) -> AsyncIterator[pb.SendBulkResponse]:
    """The same stream with nothing behind it: one result per item, no validation, no disk."""
    index = 0
    async for request in request_iterator:
        out = pb.SendBulkResponse()
        for item in request.items:
            result = out.results.add(correlation_id=item.correlation_id, index=index)
            result.accepted.message_id = item.correlation_id
            index += 1
        yield out


async def _stream(address: str) -> tuple[float, int]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = notifier_pb2_grpc.NotifierStub(channel)
        answered = 0
        with Stopwatch() as clock:
            async for reply in stub.SendBulk(_requests()):
                answered += len(reply.results)
        assert answered == ITEMS, answered
        return ITEMS / clock.seconds, answered


async def _echo_rate() -> float:
    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(
        _echo,
        request_deserializer=pb.SendBulkRequest.FromString,
        response_serializer=pb.SendBulkResponse.SerializeToString,
    )
    service = grpc.method_handlers_generic_handler("notifier.v1.Notifier", {"SendBulk": handler})
    server.add_generic_rpc_handlers((service,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        rate, _ = await _stream(f"127.0.0.1:{port}")
    finally:
        await server.stop(0)
    return rate


async def _notifier_rate(folder: Path) -> float:
    # No dispatcher: this measures acceptance (validated and committed), not sending.
    settings = bench_settings(folder / "bulk.db", NOTIFIER_DISPATCHER_ENABLED=False)
    server = await create_server(settings)
    await server.start()
    try:
        rate, _ = await _stream(f"127.0.0.1:{server.port}")
    finally:
        await server.stop(1)
    return rate


async def run() -> Figure:
    with tempfile.TemporaryDirectory() as tmp:
        ceiling = await _echo_rate()
        rate = await _notifier_rate(Path(tmp))
    return Figure(
        name="SendBulk recipients accepted durably (SQLite)",
        value=rate,
        unit="/s",
        ceiling=ceiling,
        ceiling_name="bare bidi echo stream",
        target=f">= {TARGET:,}/s",
        met=rate >= TARGET,
    )


if __name__ == "__main__":
    print(asyncio.run(run()))
