"""SendMessage accepted durably, 64 concurrent callers: on SQLite beside a bare echo RPC,
on PostgreSQL beside SQLite in the same run; the server's CPU per accepted message.

The callers run in another process (``bench.load``), so the server being measured has
this process's event loop to itself, as it would in production.
"""

from __future__ import annotations

from typing import Any

import grpc

from bench.backends import LABEL, Backend, interleaved
from bench.common import (
    CpuMeter,
    Figure,
    bench_settings,
    cpu_figure,
    joined,
    median_leg,
    rounds_note,
    run_load,
    scale,
)
from notifier.server import create_server
from notifier_proto.v1 import notifier_pb2 as pb

CALLERS = 64


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


async def _notifier_run(db: Backend, total: int) -> dict[str, Any]:
    # No dispatcher: this measures acceptance (validated and committed), not sending.
    settings = bench_settings(db.url, NOTIFIER_DISPATCHER_ENABLED=False)
    server = await create_server(settings)
    await server.start()
    try:
        with CpuMeter() as cpu:
            result = await run_load("unary", f"127.0.0.1:{server.port}", str(total), str(CALLERS))
    finally:
        await server.stop(1)
    result["cpu_ms_per_message"] = cpu.seconds * 1000 / max(1, result["count"])
    return result


async def run() -> list[Figure]:
    total = scale(10_000, 300)
    legs = await interleaved(
        "send", ("echo", lambda: _echo_run(total)), lambda db: _notifier_run(db, total)
    )
    runs = {name: median_leg(every) for name, every in legs.items()}
    tails = {name: median_leg(every, "p99_ms") for name, every in legs.items()}
    notes = rounds_note(runs), rounds_note(tails, " ms")
    echo, sqlite = "bare grpc.aio echo unary", "SQLite, same run"
    return [
        *_figures("sqlite", "echo", echo, runs, tails, notes, rate=0.5, p99=3.0),
        *_figures("postgresql", "sqlite", sqlite, runs, tails, notes, rate=0.8, p99=2.0),
        cpu_figure("SendMessage: server CPU per accepted message", runs, "accepted message"),
    ]


def _figures(
    leg: str,
    base_leg: str,
    name: str,
    runs: dict[str, dict[str, Any]],
    tails: dict[str, dict[str, Any]],
    notes: tuple[str, str],
    *,
    rate: float,
    p99: float,
) -> list[Figure]:
    """The rate and p99 figures of backend ``leg`` beside ``base_leg``'s: each the median
    round of its own figure (runs: by rate; tails: by p99). A failed call in any round,
    on either side, fails both (failed calls have no latency to count in a p99)."""
    label = LABEL[leg]
    run, base = runs[leg], runs[base_leg]
    tail, base_tail = tails[leg], tails[base_leg]
    failed = {n: runs[n]["errors"] for n in (leg, base_leg) if runs[n]["errors"]}
    errors = "; ".join(f"{count} errors ({n}, all rounds)" for n, count in failed.items())
    return [
        Figure(
            name=f"SendMessage accepted durably ({label}), {CALLERS} callers: rate",
            value=run["rate"],
            unit="/s",
            ceiling=base["rate"],
            ceiling_name=name,
            target=f">= {rate:g}x ceiling",
            met=run["rate"] >= rate * base["rate"] and not failed,
            note=joined(errors, notes[0]),
            extra={"run": run, "ceiling": base},
        ),
        Figure(
            name=f"SendMessage accepted durably ({label}), {CALLERS} callers: p99 latency",
            value=tail["p99_ms"],
            unit="ms",
            ceiling=base_tail["p99_ms"],
            ceiling_name=name,
            target=f"<= {p99:g}x ceiling",
            met=tail["p99_ms"] <= p99 * base_tail["p99_ms"] and not failed,
            note=joined(
                errors,
                f"p50 {tail['p50_ms']:.1f} ms (ceiling's {base_tail['p50_ms']:.1f} ms)",
                notes[1],
            ),
        ),
    ]
