"""The rate limiter at 80/s for 10 s, counted where Twilio counts: arrivals at the emulator.

Here the emulator runs in this process on purpose: it stamps each request as it
arrives (before reading the body), and at 80 requests a second sharing the loop costs
nothing worth measuring.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from bench.common import Figure, bench_settings, create_schema, emulator_env, fill_outbox, scale
from notifier.emulator.server import EmulatorServer
from notifier.server import create_server

RATE = 80


def max_in_window(stamps: list[float], window: float = 1.0) -> int:
    """The most arrivals in any ``window``-second interval (sliding, any start)."""
    best, first = 0, 0
    for last, stamp in enumerate(stamps):
        while stamp - stamps[first] >= window:
            first += 1
        best = max(best, last - first + 1)
    return best


async def run() -> list[Figure]:
    seconds = scale(10, 1)
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "limit.db"
        await create_schema(db_path)
        # More than the limiter lets through in the time: the queue never runs dry.
        await asyncio.to_thread(fill_outbox, db_path, RATE * (seconds + 5))
        async with EmulatorServer() as emulator:
            settings = bench_settings(
                db_path, NOTIFIER_RATE_LIMIT_PER_SECOND=RATE, **emulator_env(emulator.url)
            )
            server = await create_server(settings)
            await server.start()
            try:
                while not emulator.state.requests:  # noqa: ASYNC110 - polling the emulator's log
                    await asyncio.sleep(0.01)
                start = emulator.state.requests[0].monotonic
                await asyncio.sleep(seconds + 0.5)
            finally:
                await server.stop(1)
            stamps = [r.monotonic for r in emulator.state.requests]
    measured = [s for s in stamps if start <= s < start + seconds]
    rate = len(measured) / seconds
    busiest = max_in_window(stamps)
    return [
        Figure(
            name=f"Rate limiter at {RATE}/s for {seconds} s: achieved rate",
            value=rate,
            unit="/s",
            ceiling=None,
            ceiling_name="",
            target=f"{RATE} +- 1 /s",
            met=abs(rate - RATE) <= 1,
            note=f"{len(measured)} arrivals at the emulator in {seconds} s",
        ),
        Figure(
            name=f"Rate limiter at {RATE}/s: most arrivals in any 1-s window",
            value=busiest,
            unit="",
            ceiling=None,
            ceiling_name="",
            target=f"<= {RATE}",
            met=busiest <= RATE,
            note="sliding window over every arrival stamp at the emulator",
        ),
    ]
