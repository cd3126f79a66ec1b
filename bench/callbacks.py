"""Status callbacks ingested with signature checks, beside a bare Starlette handler.

The sidecar runs here; the load (signed like Twilio's, many keep-alive connections)
comes from another process. Every callback names a stored message and moves it from
QUEUED to SENT: signature checked over every parameter, the message row updated and
the event kept, committed before the 200.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bench.common import (
    Figure,
    bench_settings,
    count_rows,
    create_schema,
    fill_outbox,
    run_load,
    scale,
)
from notifier.asgi_server import InProcessServer
from notifier.emulator import DEV_AUTH_TOKEN
from notifier.server import create_sidecar

CONNECTIONS = 64
TARGET = 2_000


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


async def _sidecar_run(folder: Path, total: int) -> dict[str, Any]:
    db_path = folder / "callbacks.db"
    await create_schema(db_path)
    await asyncio.to_thread(fill_outbox, db_path, total, status="queued", with_sids=True)
    settings = bench_settings(db_path, TWILIO_AUTH_TOKEN=DEV_AUTH_TOKEN)
    sidecar, settings = await create_sidecar(settings)
    await sidecar.start()
    try:
        url = str(settings.status_callback_url)  # what Twilio signs: the public URL
        result = await run_load("callbacks", url, DEV_AUTH_TOKEN, str(total), str(CONNECTIONS))
    finally:
        await sidecar.stop()
    moved = await asyncio.to_thread(count_rows, db_path, "status = 'sent'")
    result["moved"] = moved
    return result


async def run() -> Figure:
    total = scale(10_000, 300)
    bare = await _bare_run(total)
    with tempfile.TemporaryDirectory() as tmp:
        sidecar = await _sidecar_run(Path(tmp), total)
    problems = []
    if sidecar["errors"]:
        problems.append(f"{sidecar['errors']} non-200 answers")
    if sidecar["moved"] != total:
        problems.append(f"only {sidecar['moved']:,} of {total:,} messages moved to SENT")
    return Figure(
        name="Status callbacks ingested with signature checks (sidecar, SQLite)",
        value=sidecar["rate"],
        unit="/s",
        ceiling=bare["rate"],
        ceiling_name="bare Starlette handler",
        target=f">= {TARGET:,}/s",
        met=sidecar["rate"] >= TARGET and not problems,
        note="; ".join(
            [
                *problems,
                f"{total:,} signed callbacks over {CONNECTIONS} connections from another "
                f"process; p99 {sidecar['p99_ms']:.1f} ms (bare {bare['p99_ms']:.1f} ms)",
            ]
        ),
        extra={"sidecar": sidecar, "bare": bare},
    )
