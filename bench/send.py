"""SendMessage accepted durably (SQLite), 64 concurrent callers, beside a bare echo RPC.

The callers run in another process (``bench.load``), so the server being measured has
this process's event loop to itself, as it would in production.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import grpc

from bench.common import Figure, bench_settings, run_load, scale
from notifier.server import create_server
from notifier_proto.v1 import notifier_pb2 as pb

CALLERS = 64
TARGET_RATE = 2_000
TARGET_P99_MS = 25.0


async def _echo(request: pb.SendMessageRequest, context: Any) -> pb.SendMessageResponse:
    """The same RPC with nothing behind it: no validation, no disk."""
    return pb.SendMessageResponse(message_id=request.to)


async def _echo_run(total: int) -> dict[str, Any]:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        _echo,
        request_deserializer=pb.SendMessageRequest.FromString,
        response_serializer=pb.SendMessageResponse.SerializeToString,
    )
    service = grpc.method_handlers_generic_handler("notifier.v1.Notifier", {"SendMessage": handler})
    server.add_generic_rpc_handlers((service,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        return await run_load("unary", f"127.0.0.1:{port}", str(total), str(CALLERS))
    finally:
        await server.stop(0)


async def _notifier_run(folder: Path, total: int) -> dict[str, Any]:
    # No dispatcher: this measures acceptance (validated and committed), not sending.
    settings = bench_settings(folder / "send.db", NOTIFIER_DISPATCHER_ENABLED=False)
    server = await create_server(settings)
    await server.start()
    try:
        return await run_load("unary", f"127.0.0.1:{server.port}", str(total), str(CALLERS))
    finally:
        await server.stop(1)


async def run() -> list[Figure]:
    total = scale(10_000, 300)
    with tempfile.TemporaryDirectory() as tmp:
        echo = await _echo_run(total)
        notifier = await _notifier_run(Path(tmp), total)
    errors = f"{notifier['errors']} errors" if notifier["errors"] else ""
    return [
        Figure(
            name=f"SendMessage accepted durably (SQLite), {CALLERS} callers: rate",
            value=notifier["rate"],
            unit="/s",
            ceiling=echo["rate"],
            ceiling_name="bare grpc.aio echo unary",
            target=f">= {TARGET_RATE:,}/s",
            met=notifier["rate"] >= TARGET_RATE and not notifier["errors"],
            note=errors,
            extra={"notifier": notifier, "echo": echo},
        ),
        Figure(
            name=f"SendMessage accepted durably (SQLite), {CALLERS} callers: p99 latency",
            value=notifier["p99_ms"],
            unit="ms",
            ceiling=echo["p99_ms"],
            ceiling_name="bare grpc.aio echo unary",
            target=f"<= {TARGET_P99_MS:g} ms",
            met=notifier["p99_ms"] <= TARGET_P99_MS,
            note=f"p50 {notifier['p50_ms']:.1f} ms (echo {echo['p50_ms']:.1f} ms)",
        ),
    ]
