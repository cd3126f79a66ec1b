"""The rate limiter at 80/s for 10 s on each backend, counted where Twilio counts:
arrivals at the emulator.

The server runs in a process of its own (on PostgreSQL, two replicas sharing the limit
through the send_slots row), as it would in production; the emulator runs in this
process, whose loop has nothing else to do, so it stamps each request as it arrives
(before reading the body) instead of after the server's own work, as it did when both
shared one loop. Nor does it collect garbage while it stamps: a full collection of its
heap (the emulator's messages of every part before) stopped its loop for 69 ms, and the
six requests that came meanwhile were stamped at once, 83 in one second, although the
servers had sent every 81st request more than a second after the one 80 before (their
own send times, logged). Twilio's counter does not pause for our emulator's collector.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from bench.backends import BACKENDS, LABEL, Backend, backend
from bench.common import Child, Figure, scale, serve_grpc
from notifier.emulator.faults import Faults
from notifier.emulator.server import EmulatorServer
from notifier.heap import paused_collection

RATE = 80
REPLICAS = {"sqlite": 1, "postgresql": 2}


def max_in_window(stamps: list[float], window: float = 1.0) -> int:
    """The most arrivals in any ``window``-second interval (sliding, any start)."""
    best, first = 0, 0
    for last, stamp in enumerate(stamps):
        while stamp - stamps[first] >= window:
            first += 1
        best = max(best, last - first + 1)
    return best


async def _arrivals(name: str, seconds: int) -> list[float]:
    """Arrival stamps at the emulator while ``name``'s servers send a full queue."""
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            backend(name, Path(tmp), "limit") as db,
            # Status callbacks dropped: nothing receives them, and posting them would
            # keep this loop busy while it stamps.
            EmulatorServer(faults=Faults(drop_callback_fraction=1.0)) as emulator,
        ):
            with paused_collection():
                return await _stamp(name, db, emulator, seconds)


async def _stamp(name: str, db: Backend, emulator: EmulatorServer, seconds: int) -> list[float]:
    """Start ``name``'s servers, fill the outbox, stop them ``seconds`` after the first
    request: the stamps. The servers are all up before the first message: a replica
    starting (imports, migrations, the clock's calibration) took the CPU from this
    process, which then stamped five requests 55 ms late at once."""
    children: list[Child] = []
    try:
        for _ in range(REPLICAS[name]):
            children.append(
                await serve_grpc(db.url, emulator.url, NOTIFIER_RATE_LIMIT_PER_SECOND=RATE)
            )
        # More than the limiter lets through in the time: the queue never runs dry.
        await db.fill(RATE * (seconds + 5))
        while not emulator.state.requests:  # noqa: ASYNC110 - polling the emulator's log
            await asyncio.sleep(0.01)
        await asyncio.sleep(seconds + 0.5)
    finally:
        await asyncio.gather(*(c.stop() for c in children))
    return [r.monotonic for r in emulator.state.requests]


def _figures(name: str, stamps: list[float], seconds: int) -> list[Figure]:
    start = stamps[0]
    measured = [s for s in stamps if start <= s < start + seconds]
    rate = len(measured) / seconds
    busiest = max_in_window(stamps)
    who = f"{LABEL[name]}, {REPLICAS[name]} process{'es' if REPLICAS[name] > 1 else ''}"
    return [
        Figure(
            name=f"Rate limiter at {RATE}/s ({who}): achieved rate over {seconds} s",
            value=rate,
            unit="/s",
            ceiling=None,
            ceiling_name="",
            target=f"{RATE} +- 1 /s",
            met=abs(rate - RATE) <= 1,
            note=f"{len(measured)} arrivals at the emulator in {seconds} s",
        ),
        Figure(
            name=f"Rate limiter at {RATE}/s ({who}): most arrivals in any 1-s window",
            value=busiest,
            unit="",
            ceiling=None,
            ceiling_name="",
            target=f"<= {RATE}",
            met=busiest <= RATE,
            note=f"sliding window over all {len(stamps)} arrival stamps at the emulator",
        ),
    ]


async def run() -> list[Figure]:
    seconds = scale(10, 1)
    figures: list[Figure] = []
    for name in BACKENDS:
        figures += _figures(name, await _arrivals(name, seconds), seconds)
    return figures
