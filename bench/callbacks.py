"""Status callbacks ingested with signature checks: on SQLite beside a bare Starlette
handler, on PostgreSQL beside SQLite; the sidecar's CPU per callback.

The sidecar runs here; the load (signed like Twilio's, many keep-alive connections)
comes from another process. Every callback names a stored message and moves it from
QUEUED to SENT: signature checked over every parameter, the message row updated and
the event kept, committed before the 200.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bench.backends import Backend, interleaved
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
from notifier.asgi_server import InProcessServer
from notifier.emulator import DEV_AUTH_TOKEN
from notifier.server import create_sidecar

CONNECTIONS = 64


async def _bare(request: Request) -> Response:
    """Reads and decodes the form and answers 200: what any handler does first."""
    parse_qsl((await request.body()).decode())
    return PlainTextResponse("")


async def _bare_run(total: int) -> dict[str, Any]:
    app = Starlette(routes=[Route("/api/v1/whatsapp/status", _bare, methods=["POST"])])
    server = InProcessServer(app)
    await server.start()
    try:
        url = f"{server.url}/api/v1/whatsapp/status"
        return await run_load("callbacks", url, DEV_AUTH_TOKEN, str(total), str(CONNECTIONS))
    finally:
        await server.stop()


async def _sidecar_run(db: Backend, total: int) -> dict[str, Any]:
    await db.fill(total, status="queued", with_sids=True)
    settings = bench_settings(db.url, TWILIO_AUTH_TOKEN=DEV_AUTH_TOKEN)
    sidecar, settings = await create_sidecar(settings)
    await sidecar.start()
    try:
        url = str(settings.status_callback_url)  # what Twilio signs: the public URL
        with CpuMeter() as cpu:
            result = await run_load("callbacks", url, DEV_AUTH_TOKEN, str(total), str(CONNECTIONS))
    finally:
        await sidecar.stop()
    result["unmoved"] = total - await db.count("status = 'sent'")
    result["cpu_ms_per_message"] = cpu.seconds * 1000 / total
    return result


async def run() -> list[Figure]:
    total = scale(10_000, 300)
    legs = await interleaved(
        "callbacks", ("bare", lambda: _bare_run(total)), lambda db: _sidecar_run(db, total)
    )
    runs = {name: median_leg(every, counted=("errors", "unmoved")) for name, every in legs.items()}
    bare, sqlite, pg = runs["bare"], runs["sqlite"], runs["postgresql"]
    note = rounds_note(runs)
    return [
        _figure("SQLite", sqlite, bare, "bare Starlette handler", 0.5, total, note),
        _figure("PostgreSQL", pg, sqlite, "SQLite, same run", 0.8, total, note),
        cpu_figure("Callbacks: server CPU per callback", runs, "status callback"),
    ]


def _figure(
    label: str,
    run: dict[str, Any],
    base: dict[str, Any],
    name: str,
    ratio: float,
    total: int,
    rounds_seen: str,
) -> Figure:
    """A round's failures on either side (summed over the rounds) fail the figure."""
    problems = [
        f"{leg['errors']:,} non-200 answers ({side}, all rounds)"
        for side, leg in (("measured", run), ("ceiling", base))
        if leg["errors"]
    ]
    if run["unmoved"]:
        problems.append(f"{run['unmoved']:,} messages not moved to SENT (all rounds)")
    return Figure(
        name=f"Status callbacks ingested with signature checks (sidecar, {label})",
        value=run["rate"],
        unit="/s",
        ceiling=base["rate"],
        ceiling_name=name,
        target=f">= {ratio:g}x ceiling",
        met=run["rate"] >= ratio * base["rate"] and not problems,
        note=joined(
            *problems,
            f"{total:,} signed callbacks over {CONNECTIONS} connections from another "
            f"process; p99 {run['p99_ms']:.1f} ms (ceiling's {base['p99_ms']:.1f} ms)",
            rounds_seen,
        ),
        extra={"sidecar": run, "ceiling": base},
    )
