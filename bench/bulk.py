"""SendBulk recipients accepted durably: on SQLite beside a bare bidirectional echo
stream, on PostgreSQL beside SQLite in the same run; the server's CPU per accepted
recipient.

The stream's client runs in another process (``bench.load bulk``), so the server being
measured has this process's event loop and CPU meter to itself.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from bench.backends import BACKENDS, Backend, backend
from bench.common import CpuMeter, Figure, bench_settings, cpu_figure, run_load, scale
from notifier.server import create_server
from notifier_proto.v1 import notifier_pb2 as pb

ITEMS = scale(50_000, 1_000)
PER_REQUEST = 500
TARGET = 5_000


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


async def _echo_run() -> dict[str, Any]:
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
        return await _stream(port)
    finally:
        await server.stop(0)


async def _stream(port: int) -> dict[str, Any]:
    return await run_load("bulk", f"127.0.0.1:{port}", str(ITEMS), str(PER_REQUEST))


async def _notifier_run(db: Backend) -> dict[str, Any]:
    # No dispatcher: this measures acceptance (validated and committed), not sending.
    settings = bench_settings(db.url, NOTIFIER_DISPATCHER_ENABLED=False)
    server = await create_server(settings)
    await server.start()
    try:
        with CpuMeter() as cpu:
            result = await _stream(server.port)
    finally:
        await server.stop(1)
    assert result["count"] == ITEMS, result
    assert not result["errors"], result
    result["cpu_ms_per_message"] = cpu.seconds * 1000 / max(1, result["count"])
    return result


async def run() -> list[Figure]:
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        echo = await _echo_run()
        for name in BACKENDS:
            async with backend(name, Path(tmp), "bulk") as db:
                runs[name] = await _notifier_run(db)
    sqlite, pg = runs["sqlite"], runs["postgresql"]
    return [
        _rate("SQLite", sqlite, echo, "bare bidi echo stream", f">= {TARGET:,}/s", TARGET),
        _rate(
            "PostgreSQL", pg, sqlite, "SQLite, same run", ">= 0.8x ceiling", 0.8 * sqlite["rate"]
        ),
        cpu_figure("SendBulk: server CPU per accepted recipient", runs, "accepted recipient"),
    ]


def _rate(
    label: str, run: dict[str, Any], base: dict[str, Any], name: str, target: str, floor: float
) -> Figure:
    return Figure(
        name=f"SendBulk recipients accepted durably ({label})",
        value=run["rate"],
        unit="/s",
        ceiling=base["rate"],
        ceiling_name=name,
        target=target,
        met=run["rate"] >= floor,
        extra={"run": run, "ceiling": base},
    )
