"""Messages dispatched end to end beside direct ``twilio`` SDK calls with no storage, on
SQLite, and on PostgreSQL beside SQLite; the server's CPU per dispatched message.

End to end: a message in the outbox is claimed under a lease, sent with the official
SDK to the emulator (its own process), and Twilio's answer (SID, QUEUED) is committed
with its attempt; the clock stops when every message is recorded. The ceiling makes the
same SDK calls with the same concurrency and stores nothing.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from bench.backends import Backend, interleaved
from bench.common import (
    CpuMeter,
    Figure,
    Stopwatch,
    bench_settings,
    cpu_figure,
    emulator_env,
    emulator_process,
    joined,
    median_leg,
    rounds_note,
    scale,
)
from notifier.emulator import DEV_ACCOUNT_SID, DEV_AUTH_TOKEN, DEV_FROM
from notifier.server import create_server

CONCURRENCY = 32  # NOTIFIER_DISPATCH_CONCURRENCY's default
TEMPLATE = "HX" + "ab" * 16


def sdk_client(url: str) -> tuple[Client, AsyncTwilioHttpClient]:
    http = AsyncTwilioHttpClient()  # no max_retries: the SDK does not retry
    client = Client(DEV_ACCOUNT_SID, DEV_AUTH_TOKEN, http_client=http)
    client.api.base_url = url
    return client, http


async def sdk_send(client: Client, index: int) -> str:
    created = await client.messages.create_async(
        to=f"whatsapp:+1415555{index % 10000:04d}",
        from_=DEV_FROM,
        content_sid=TEMPLATE,
        content_variables=f'{{"1": "customer {index}"}}',
    )
    return str(created.sid)


async def direct_sdk_rate(url: str, total: int, concurrency: int = CONCURRENCY) -> float:
    client, http = sdk_client(url)
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < total:
            i = next_index
            next_index += 1
            await sdk_send(client, i)

    try:
        await asyncio.gather(*(worker() for _ in range(min(concurrency, 8))))  # warm up
        next_index = 0
        with Stopwatch() as clock:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await http.close()
    return total / clock.seconds


async def notifier_run(url: str, db: Backend, total: int) -> dict[str, Any]:
    """Dispatch ``total`` queued messages with the server in this process: its rate and
    the CPU-seconds this process spent per message."""
    await db.fill(total)
    settings = bench_settings(
        db.url,
        NOTIFIER_RATE_LIMIT_PER_SECOND=1_000_000,  # the limiter is measured on its own
        NOTIFIER_DISPATCH_CONCURRENCY=CONCURRENCY,
        **emulator_env(url),
    )
    server = await create_server(settings)
    began = time.perf_counter()
    async with db.watcher() as any_left:
        with CpuMeter() as cpu:
            await server.start()
            try:
                while await any_left("status = 'pending'"):  # noqa: ASYNC110 - the database is what we watch
                    await asyncio.sleep(0.05)
                seconds = time.perf_counter() - began
            finally:
                await server.stop(5)
    return {"rate": total / seconds, "cpu_ms_per_message": cpu.seconds * 1000 / total}


async def run() -> list[Figure]:
    total = scale(10_000, 300)

    async def sdk() -> dict[str, Any]:
        async with emulator_process() as url:
            return {"rate": await direct_sdk_rate(url, total)}

    async def leg(db: Backend) -> dict[str, Any]:
        async with emulator_process() as url:
            return await notifier_run(url, db, total)

    legs = await interleaved("dispatch", ("sdk", sdk), leg)
    runs = {name: median_leg(every) for name, every in legs.items()}
    ceiling = runs["sdk"]["rate"]
    note = joined(
        f"{total:,} messages, dispatch concurrency {CONCURRENCY}; emulator in its own "
        "process (answers 201, plays sent/delivered/read on timers)",
        rounds_note(runs),
    )
    sqlite, pg = runs["sqlite"]["rate"], runs["postgresql"]["rate"]
    return [
        Figure(
            name="Messages dispatched end to end (SQLite) (outbox -> emulator -> recorded)",
            value=sqlite,
            unit="/s",
            ceiling=ceiling,
            ceiling_name=f"direct twilio SDK calls, {CONCURRENCY} at a time, no storage",
            target=">= 0.5x ceiling",
            met=sqlite >= 0.5 * ceiling,
            note=note,
        ),
        Figure(
            name="Messages dispatched end to end (PostgreSQL)",
            value=pg,
            unit="/s",
            ceiling=sqlite,
            ceiling_name="SQLite, same run",
            target=">= 0.8x ceiling",
            met=pg >= 0.8 * sqlite,
            note=rounds_note(runs),
        ),
        cpu_figure("Dispatch: server CPU per dispatched message", runs, "dispatched message"),
    ]
